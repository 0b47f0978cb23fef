"""detectron2/Mask2Former YAML config -> :class:`ModelConfig`, by plain YAML parsing.

Reads a ``cfg.dump()`` or a config file with ``_BASE_`` chains (resolved relative to the
file). Only Mask2Former's MSDeformAttn pixel decoder + masked-attention decoder, with
FrozenBN ResNets or Swin backbones, can be represented; anything else is an error that
names the offending key.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml

from ecom2f.config.model import CriterionConfig, ModelConfig
from ecom2f.modeling.swin import SWIN_SPECS

__all__ = ["load_d2_yaml", "model_config_from_d2", "model_config_to_d2", "save_d2_yaml"]

_SWIN_NAMES = {(embed_dim, depths): name for name, (embed_dim, depths, _) in SWIN_SPECS.items()}
# Thing-class counts of the panoptic datasets Mask2Former ships configs for, keyed by class count.
# The released label sets by size: COCO panoptic (things first), Cityscapes (things 11..18).
_THINGS_BY_CLASSES = {133: list(range(80)), 19: list(range(11, 19))}


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_d2_yaml(path: str | Path) -> dict:
    """The config tree of ``path`` with its ``_BASE_`` files merged underneath."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detectron2 config {str(path)!r} does not exist")
    with path.open() as handle:
        tree = yaml.safe_load(handle) or {}
    base = tree.pop("_BASE_", None)
    if base:
        tree = _merge(load_d2_yaml(path.parent / base), tree)
    return tree


def _get(tree: dict, dotted: str, default=None):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _require(tree: dict, dotted: str, allowed, default=None):
    value = _get(tree, dotted, default)
    if value not in allowed:
        raise ValueError(f"{dotted} = {value!r} is not supported; ecom2f implements {allowed}")
    return value


def model_config_from_d2(tree: dict | str | Path, num_things: int | None = None) -> ModelConfig:
    """Translate a detectron2 config (tree or YAML path) into a :class:`ModelConfig`.

    ``num_things``: classes ``0..num_things-1`` are things; default: COCO's 133 classes have their
    80 things first, Cityscapes' 19 classes have things at 11..18.
    """
    if not isinstance(tree, dict):
        tree = load_d2_yaml(tree)
    model = tree.get("MODEL", {})
    m = {"MODEL": model, "INPUT": tree.get("INPUT", {}), "TEST": tree.get("TEST", {})}
    _check_architecture(m)
    head, former = model.get("SEM_SEG_HEAD", {}), model.get("MASK_FORMER", {})
    num_classes = int(head.get("NUM_CLASSES", 133))
    thing_classes = None
    if num_things is None:
        if num_classes not in _THINGS_BY_CLASSES:
            raise ValueError(f"{num_classes} classes: pass num_things (how many leading classes are things)")
        thing_classes = _THINGS_BY_CLASSES[num_classes]
        num_things = len(thing_classes)
        if thing_classes == list(range(num_things)):
            thing_classes = None
    config = {
        "backbone": _backbone_section(m),
        **_network_sections(head, former),
        "num_classes": num_classes,
        "num_things": num_things,
        "thing_classes": thing_classes,
        "pixel_mean": [float(v) for v in model.get("PIXEL_MEAN", [123.675, 116.28, 103.53])],
        "pixel_std": [float(v) for v in model.get("PIXEL_STD", [58.395, 57.12, 57.375])],
        "size_divisibility": int(former.get("SIZE_DIVISIBILITY", 32)),
        "test": _test_section(m, former.get("TEST", {})),
        "criterion": _criterion_section(former),
    }
    layers = config["pixel_decoder"]["encoder_layers"]
    config["gate"] = {"exits": [k for k in [2, 3, 4, 5, 6] if k <= layers] or [layers]}
    return ModelConfig.model_validate(config)


def _check_architecture(m: dict) -> None:
    """The parts of Mask2Former this model reproduces; anything else is refused by name."""
    _require(m, "MODEL.META_ARCHITECTURE", ["MaskFormer"], "MaskFormer")
    _require(m, "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", ["MSDeformAttnPixelDecoder"], "MSDeformAttnPixelDecoder")
    _require(m, "MODEL.SEM_SEG_HEAD.NORM", ["GN"], "GN")
    _require(
        m,
        "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME",
        ["MultiScaleMaskedTransformerDecoder"],
        "MultiScaleMaskedTransformerDecoder",
    )
    _require(m, "INPUT.FORMAT", ["RGB"], "RGB")


def _backbone_section(m: dict) -> dict:
    backbone_name = _get(m, "MODEL.BACKBONE.NAME", "build_resnet_backbone")
    backbone: dict = {"freeze_at": int(_get(m, "MODEL.BACKBONE.FREEZE_AT", 0))}
    if backbone_name == "build_resnet_backbone":
        depth = _require(m, "MODEL.RESNETS.DEPTH", [18, 50, 101], 50)
        _require(m, "MODEL.RESNETS.NORM", ["FrozenBN"], "FrozenBN")
        _require(m, "MODEL.RESNETS.NUM_GROUPS", [1], 1)
        _require(m, "MODEL.RESNETS.WIDTH_PER_GROUP", [64], 64)
        _require(m, "MODEL.RESNETS.STEM_OUT_CHANNELS", [64], 64)
        _require(m, "MODEL.RESNETS.RES2_OUT_CHANNELS", [64 if depth == 18 else 256], 64 if depth == 18 else 256)
        _require(m, "MODEL.RESNETS.RES5_DILATION", [1], 1)
        _require(m, "MODEL.RESNETS.STEM_TYPE", ["basic"], "basic")
        deform = _get(m, "MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False] * 4)
        if any(deform):
            raise ValueError(f"MODEL.RESNETS.DEFORM_ON_PER_STAGE = {deform}: deformable convs are not supported")
        return {**backbone, "name": f"resnet{depth}", "stride_in_1x1": bool(_get(m, "MODEL.RESNETS.STRIDE_IN_1X1", True))}
    if backbone_name == "D2SwinTransformer":
        key = (int(_get(m, "MODEL.SWIN.EMBED_DIM", 96)), tuple(_get(m, "MODEL.SWIN.DEPTHS", [2, 2, 6, 2])))
        if key not in _SWIN_NAMES:
            raise ValueError(f"MODEL.SWIN EMBED_DIM/DEPTHS {key} match none of Swin-T/S/B/L")
        _require(m, "MODEL.SWIN.PATCH_SIZE", [4], 4)
        _require(m, "MODEL.SWIN.APE", [False], False)
        return {
            **backbone,
            "name": _SWIN_NAMES[key],
            "swin_window_size": int(_get(m, "MODEL.SWIN.WINDOW_SIZE", 7)),
            "drop_path_rate": float(_get(m, "MODEL.SWIN.DROP_PATH_RATE", 0.0)),
        }
    raise ValueError(f"MODEL.BACKBONE.NAME = {backbone_name!r}; expected build_resnet_backbone or D2SwinTransformer")


def _network_sections(head: dict, former: dict) -> dict:
    """The pixel decoder and the transformer decoder."""
    heads = int(former.get("NHEADS", 8))
    return {
        "pixel_decoder": {
            "conv_dim": int(head.get("CONVS_DIM", 256)),
            "mask_dim": int(head.get("MASK_DIM", 256)),
            "encoder_layers": int(head.get("TRANSFORMER_ENC_LAYERS", 6)),
            # Mask2Former passes MASK_FORMER.NHEADS to the encoder; its own N_HEADS/N_POINTS keys are unused.
            "heads": heads,
            "points": 4,
            "ffn_dim": 1024,
            "num_groups": 32,
            "in_features": list(head.get("DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES", ["res3", "res4", "res5"])),
            "common_stride": int(head.get("COMMON_STRIDE", 4)),
        },
        "decoder": {
            "hidden_dim": int(former.get("HIDDEN_DIM", 256)),
            "num_queries": int(former.get("NUM_OBJECT_QUERIES", 100)),
            "layers": int(former.get("DEC_LAYERS", 10)) - 1,
            "heads": heads,
            "ffn_dim": int(former.get("DIM_FEEDFORWARD", 2048)),
            "pre_norm": bool(former.get("PRE_NORM", False)),
            "enforce_input_proj": bool(former.get("ENFORCE_INPUT_PROJ", False)),
        },
    }


def _test_section(m: dict, test: dict) -> dict:
    return {
        "object_mask_threshold": float(test.get("OBJECT_MASK_THRESHOLD", 0.8)),
        "overlap_threshold": float(test.get("OVERLAP_THRESHOLD", 0.8)),
        "detections_per_image": int(_get(m, "TEST.DETECTIONS_PER_IMAGE", 100)),
        "semantic_on": bool(test.get("SEMANTIC_ON", True)),
        "instance_on": bool(test.get("INSTANCE_ON", False)),
        "panoptic_on": bool(test.get("PANOPTIC_ON", False)),
    }


# ModelConfig's criterion fields -> MODEL.MASK_FORMER keys.
_CRITERION_KEYS = {
    "class_weight": "CLASS_WEIGHT", "mask_weight": "MASK_WEIGHT", "dice_weight": "DICE_WEIGHT",
    "no_object_weight": "NO_OBJECT_WEIGHT", "num_points": "TRAIN_NUM_POINTS", "oversample_ratio": "OVERSAMPLE_RATIO",
    "importance_sample_ratio": "IMPORTANCE_SAMPLE_RATIO", "deep_supervision": "DEEP_SUPERVISION",
}


def criterion_section(source: Mapping, keys: Mapping[str, str]) -> dict:
    """The criterion section from a checkpoint's config: ``keys`` maps each field to the source's
    key; an absent key takes :class:`CriterionConfig`'s default (Mask2Former's), in its type."""
    defaults = CriterionConfig()
    return {field: type(getattr(defaults, field))(source.get(key, getattr(defaults, field)))
            for field, key in keys.items()}


def _criterion_section(former: dict) -> dict:
    return criterion_section(former, _CRITERION_KEYS)


# ----------------------------------------------------------------------------- ModelConfig -> detectron2 YAML
_D2_FIXED = {"pixel_decoder.points": 4, "pixel_decoder.ffn_dim": 1024, "pixel_decoder.num_groups": 32}


def _d2_backbone(config: ModelConfig) -> dict:
    backbone = config.backbone
    if backbone.name.startswith("resnet"):
        depth = int(backbone.name[len("resnet"):])
        resnets = {"DEPTH": depth, "NORM": "FrozenBN", "STRIDE_IN_1X1": backbone.stride_in_1x1, "NUM_GROUPS": 1,
                   "WIDTH_PER_GROUP": 64, "STEM_OUT_CHANNELS": 64, "RES2_OUT_CHANNELS": 64 if depth == 18 else 256,
                   "RES5_DILATION": 1, "STEM_TYPE": "basic", "OUT_FEATURES": ["res2", "res3", "res4", "res5"]}
        return {"BACKBONE": {"NAME": "build_resnet_backbone", "FREEZE_AT": backbone.freeze_at}, "RESNETS": resnets}
    embed, depths = next(key for key, name in _SWIN_NAMES.items() if name == backbone.name)
    heads = [3, 6, 12, 24] if embed == 96 else [embed // 32 * 2**i for i in range(4)]
    swin = {"EMBED_DIM": embed, "DEPTHS": list(depths), "NUM_HEADS": heads, "WINDOW_SIZE": backbone.swin_window_size,
            "PATCH_SIZE": 4, "APE": False, "DROP_PATH_RATE": backbone.drop_path_rate, "MLP_RATIO": 4.0,
            "QKV_BIAS": True, "PATCH_NORM": True, "OUT_FEATURES": ["res2", "res3", "res4", "res5"]}
    return {"BACKBONE": {"NAME": "D2SwinTransformer", "FREEZE_AT": backbone.freeze_at}, "SWIN": swin}


def model_config_to_d2(config: ModelConfig) -> dict:
    """The detectron2/Mask2Former config tree (``MODEL``, ``INPUT``, ``TEST``) of ``config``;
    :func:`model_config_from_d2` reads it back to the same network. Mask2Former fixes the
    encoder's sampling points (4), FFN width (1024), GroupNorm groups (32) and uses one head
    count for encoder and decoder: a model outside that cannot be written (ValueError)."""
    pd, dec, crit, test = config.pixel_decoder, config.decoder, config.criterion, config.test
    values = {"pixel_decoder.points": pd.points, "pixel_decoder.ffn_dim": pd.ffn_dim,
              "pixel_decoder.num_groups": pd.num_groups}
    different = [f"{key} = {values[key]} (Mask2Former: {allowed})" for key, allowed in _D2_FIXED.items()
                 if values[key] != allowed]
    if pd.heads != dec.heads:
        different.append(f"pixel_decoder.heads {pd.heads} != decoder.heads {dec.heads} (Mask2Former: one NHEADS)")
    if different:
        raise ValueError("a Mask2Former config cannot describe this model: " + "; ".join(different))
    head = {"NAME": "MaskFormerHead", "NUM_CLASSES": config.num_classes, "CONVS_DIM": pd.conv_dim,
            "MASK_DIM": pd.mask_dim, "NORM": "GN", "PIXEL_DECODER_NAME": "MSDeformAttnPixelDecoder",
            "IN_FEATURES": ["res2", "res3", "res4", "res5"],
            "DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES": list(pd.in_features), "COMMON_STRIDE": pd.common_stride,
            "TRANSFORMER_ENC_LAYERS": pd.encoder_layers, "IGNORE_VALUE": 255}
    former = {"TRANSFORMER_DECODER_NAME": "MultiScaleMaskedTransformerDecoder",
              "TRANSFORMER_IN_FEATURE": "multi_scale_pixel_decoder", "DEEP_SUPERVISION": crit.deep_supervision,
              "NO_OBJECT_WEIGHT": crit.no_object_weight, "CLASS_WEIGHT": crit.class_weight,
              "MASK_WEIGHT": crit.mask_weight, "DICE_WEIGHT": crit.dice_weight, "HIDDEN_DIM": dec.hidden_dim,
              "NUM_OBJECT_QUERIES": dec.num_queries, "NHEADS": dec.heads, "DROPOUT": 0.0,
              "DIM_FEEDFORWARD": dec.ffn_dim, "ENC_LAYERS": 0, "PRE_NORM": dec.pre_norm,
              "ENFORCE_INPUT_PROJ": dec.enforce_input_proj, "SIZE_DIVISIBILITY": config.size_divisibility,
              "DEC_LAYERS": dec.layers + 1, "TRAIN_NUM_POINTS": crit.num_points,
              "OVERSAMPLE_RATIO": crit.oversample_ratio, "IMPORTANCE_SAMPLE_RATIO": crit.importance_sample_ratio,
              "TEST": {"SEMANTIC_ON": test.semantic_on, "INSTANCE_ON": test.instance_on,
                       "PANOPTIC_ON": test.panoptic_on, "OVERLAP_THRESHOLD": test.overlap_threshold,
                       "OBJECT_MASK_THRESHOLD": test.object_mask_threshold}}
    model = {"META_ARCHITECTURE": "MaskFormer", **_d2_backbone(config), "PIXEL_MEAN": list(config.pixel_mean),
             "PIXEL_STD": list(config.pixel_std), "SEM_SEG_HEAD": head, "MASK_FORMER": former}
    return {"MODEL": model, "INPUT": {"FORMAT": "RGB"}, "TEST": {"DETECTIONS_PER_IMAGE": test.detections_per_image}}


def save_d2_yaml(config: ModelConfig, path: str | Path) -> None:
    """Writes :func:`model_config_to_d2` as YAML."""
    Path(path).write_text(yaml.safe_dump(model_config_to_d2(config), sort_keys=False))
