"""Typed model configuration; every default is Mask2Former's COCO panoptic R50 setting.

:class:`ecom2f.config.Config` nests :class:`ModelConfig` as the ``model`` section of a run;
``ecom2f.modeling`` builds the network from it, and the checkpoint importer builds one from a
detectron2/Mask2Former YAML.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ecom2f.config.section import Section

__all__ = [
    "BackboneConfig",
    "PixelDecoderConfig",
    "DecoderConfig",
    "GateConfig",
    "InferenceConfig",
    "CriterionConfig",
    "ModelConfig",
    "BACKBONE_NAMES",
]

BACKBONE_NAMES = ("resnet18", "resnet50", "resnet101", "swin_t", "swin_s", "swin_b", "swin_l")


class BackboneConfig(Section):
    name: Literal["resnet18", "resnet50", "resnet101", "swin_t", "swin_s", "swin_b", "swin_l"] = "resnet50"
    # A local file of pretrained weights (torchvision/timm or detectron2 layout); never downloaded.
    weights: str | None = None
    # detectron2's FREEZE_AT: 0 trains everything, 1 freezes the stem, k freezes stem + res2..res{k}.
    freeze_at: int = Field(0, ge=0, le=5)
    # detectron2 ResNets put the stride in the first 1x1 conv of a bottleneck when True
    # (MSRA weights); Mask2Former's torchvision-derived weights use False.
    stride_in_1x1: bool = False
    # Swin only: window size (7 for Swin-T/S at 224, 12 for Swin-B/L at 384) and stochastic depth.
    swin_window_size: int = Field(7, gt=0)
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0)


class PixelDecoderConfig(Section):
    conv_dim: int = Field(256, gt=0)
    mask_dim: int = Field(256, gt=0)
    encoder_layers: int = Field(6, ge=1)
    heads: int = Field(8, gt=0)
    points: int = Field(4, gt=0)
    ffn_dim: int = Field(1024, gt=0)
    num_groups: int = Field(32, gt=0)
    # Features fed to the deformable encoder (coarsest first is handled internally).
    in_features: list[str] = Field(default_factory=lambda: ["res3", "res4", "res5"])
    common_stride: int = Field(4, gt=0)

    @field_validator("in_features")
    @classmethod
    def _known_features(cls, value: list[str]) -> list[str]:
        allowed = {"res2", "res3", "res4", "res5"}
        bad = [name for name in value if name not in allowed]
        if bad or not value:
            raise ValueError(f"in_features {value!r}: each must be one of {sorted(allowed)} and at least one given")
        return value

    @model_validator(mode="after")
    def _divisible(self) -> PixelDecoderConfig:
        if self.conv_dim % self.heads:
            raise ValueError(f"conv_dim {self.conv_dim} must be divisible by heads {self.heads}")
        if self.conv_dim % self.num_groups:
            raise ValueError(f"conv_dim {self.conv_dim} must be divisible by num_groups {self.num_groups}")
        return self


class DecoderConfig(Section):
    hidden_dim: int = Field(256, gt=0)
    num_queries: int = Field(100, gt=0)
    # Number of decoder layers actually built (Mask2Former's DEC_LAYERS - 1).
    layers: int = Field(9, ge=1)
    heads: int = Field(8, gt=0)
    ffn_dim: int = Field(2048, gt=0)
    pre_norm: bool = False
    enforce_input_proj: bool = False

    @model_validator(mode="after")
    def _divisible(self) -> DecoderConfig:
        if self.hidden_dim % self.heads:
            raise ValueError(f"decoder hidden_dim {self.hidden_dim} must be divisible by heads {self.heads}")
        return self


class GateConfig(Section):
    # Allowed encoder depths; the gate predicts one of them per image.
    exits: list[int] = Field(default_factory=lambda: [2, 3, 4, 5, 6])
    pooling: Literal["mean", "mean_max", "grid"] = "mean"
    grid_size: int = Field(2, ge=1)
    hidden_layers: int = Field(0, ge=0)
    hidden_dim: int = Field(256, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("exits")
    @classmethod
    def _sorted_unique(cls, value: list[int]) -> list[int]:
        if not value or any(k < 1 for k in value) or sorted(set(value)) != list(value):
            raise ValueError(f"gate exits {value!r} must be a non-empty, strictly increasing list of depths >= 1")
        return value


class InferenceConfig(Section):
    """Mask2Former's MODEL.MASK_FORMER.TEST settings (overridable at predict time)."""

    object_mask_threshold: float = Field(0.8, ge=0.0, le=1.0)
    overlap_threshold: float = Field(0.8, ge=0.0, le=1.0)
    detections_per_image: int = Field(100, gt=0)
    semantic_on: bool = True
    instance_on: bool = True
    panoptic_on: bool = True


class CriterionConfig(Section):
    """Mask2Former's matching costs and loss weights (MODEL.MASK_FORMER.*)."""

    class_weight: float = Field(2.0, ge=0.0)
    mask_weight: float = Field(5.0, ge=0.0)
    dice_weight: float = Field(5.0, ge=0.0)
    no_object_weight: float = Field(0.1, ge=0.0)
    num_points: int = Field(12544, gt=0)
    oversample_ratio: float = Field(3.0, ge=1.0)
    importance_sample_ratio: float = Field(0.75, ge=0.0, le=1.0)
    deep_supervision: bool = True


class ModelConfig(Section):
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    pixel_decoder: PixelDecoderConfig = Field(default_factory=PixelDecoderConfig)
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    num_classes: int = Field(133, gt=0)
    # Classes 0..num_things-1 are "things" (COCO panoptic: 80); the rest are "stuff".
    num_things: int = Field(80, ge=0)
    # For label sets whose things are not the leading classes (Cityscapes: 11..18), the
    # contiguous ids of the things; num_things must then equal its length.
    thing_classes: list[int] | None = None
    pixel_mean: list[float] = Field(default_factory=lambda: [123.675, 116.28, 103.53])
    pixel_std: list[float] = Field(default_factory=lambda: [58.395, 57.12, 57.375])
    size_divisibility: int = Field(32, ge=0)
    test: InferenceConfig = Field(default_factory=InferenceConfig)
    criterion: CriterionConfig = Field(default_factory=CriterionConfig)

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3 or min(self.pixel_std) <= 0:
            raise ValueError(
                f"pixel_mean {self.pixel_mean} / pixel_std {self.pixel_std} must have 3 values, std > 0"
            )
        if self.num_things > self.num_classes:
            raise ValueError(f"num_things {self.num_things} exceeds num_classes {self.num_classes}")
        if self.thing_classes is not None:
            _check_thing_classes(self.thing_classes, self.num_things, self.num_classes)
        too_deep = [k for k in self.gate.exits if k > self.pixel_decoder.encoder_layers]
        if too_deep:
            raise ValueError(
                f"gate exits {too_deep} exceed pixel_decoder.encoder_layers {self.pixel_decoder.encoder_layers}"
            )
        return self

    @property
    def thing_ids(self) -> tuple[int, ...]:
        """Contiguous ids of the thing classes, the rest being stuff."""
        if self.thing_classes is not None:
            return tuple(self.thing_classes)
        return tuple(range(self.num_things))


def _check_thing_classes(thing_classes: list[int], num_things: int, num_classes: int) -> None:
    if sorted(set(thing_classes)) != thing_classes:
        raise ValueError(f"thing_classes {thing_classes} must be sorted and without repeats")
    outside = [c for c in thing_classes if not 0 <= c < num_classes]
    if outside:
        raise ValueError(f"thing_classes {outside} are outside 0..{num_classes - 1} (num_classes {num_classes})")
    if len(thing_classes) != num_things:
        raise ValueError(f"thing_classes lists {len(thing_classes)} classes but num_things is {num_things}; "
                         f"set num_things: {len(thing_classes)}")
