"""Backbone factory: a config section -> a module returning ``{"res2".."res5": [N, C, H/s, W/s]}``.

Pretrained weights come from torchvision/timm state dicts or from detectron2/Mask2Former
pickles (``R-50.pkl``, ``swin_tiny_patch4_window7_224.pkl``); the names of the latter are
translated by the one mapping that Mask2Former checkpoints also use
(:func:`backbone_key_from_d2`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from ecom2f.config.model import BackboneConfig
from ecom2f.modeling.resnet import RESNET_DEPTHS, ResNetBackbone, resnet_key_from_d2, resnet_key_to_d2
from ecom2f.modeling.safe_pickle import load_state_dict_file
from ecom2f.modeling.swin import SWIN_SPECS, SwinBackbone, swin_key_from_d2, swin_key_to_d2

__all__ = [
    "build_backbone",
    "load_backbone_weights",
    "backbone_key_from_d2",
    "backbone_key_to_d2",
    "window_index_problem",
]

# Entries of ImageNet files with no weight of ours: classifier heads, Swin's final norm,
# BN step counters, Swin's shift masks (recomputed per input size).
_DROPPED_PREFIXES = ("fc.", "head.", "norm.")
_DROPPED_SUFFIXES = ("num_batches_tracked", "attn_mask")
# Derived from the window size, never loaded, but a file's copy must agree with ours.
_INDEX_SUFFIX = "relative_position_index"
_SHOWN = 20  # keys listed per kind of problem in an error message


def build_backbone(config: BackboneConfig) -> nn.Module:
    """Build the backbone (random init), then load ``config.weights`` when given (never downloads)."""
    if config.name in RESNET_DEPTHS:
        backbone = ResNetBackbone(config.name, freeze_at=config.freeze_at, stride_in_1x1=config.stride_in_1x1)
    elif config.name in SWIN_SPECS:
        backbone = SwinBackbone(
            config.name,
            window_size=config.swin_window_size,
            drop_path_rate=config.drop_path_rate,
            freeze_at=config.freeze_at,
        )
    else:  # the config's Literal makes this unreachable unless validation was bypassed
        raise ValueError(f"unknown backbone {config.name!r}")
    if config.weights:
        load_backbone_weights(backbone, config.weights)
    return backbone


def backbone_key_from_d2(name: str, key: str) -> str:
    """detectron2/Mask2Former backbone name (without ``backbone.``) -> ours, for backbone ``name``."""
    return resnet_key_from_d2(key) if name in RESNET_DEPTHS else swin_key_from_d2(key)


def backbone_key_to_d2(name: str, key: str) -> str:
    """Inverse of :func:`backbone_key_from_d2`."""
    return resnet_key_to_d2(key) if name in RESNET_DEPTHS else swin_key_to_d2(key)


def window_index_problem(backbone: nn.Module, key: str, value: torch.Tensor) -> str | None:
    """Why a file's Swin ``relative_position_index`` (under our name ``key``) disagrees with ours, or None."""
    own = dict(backbone.named_buffers()).get(key)
    if own is None:
        return f"the model has no window index {key}"
    if tuple(own.shape) != tuple(value.shape) or not torch.equal(own.cpu(), value.to(torch.long)):
        return "differs from the window index of the model (another window size?)"
    return None


@dataclasses.dataclass
class _Match:
    """A file's entries read under one naming convention, and what does not fit."""

    layout: str
    mapped: dict[str, torch.Tensor]
    problems: dict[str, list[str]]

    @property
    def count(self) -> int:
        return sum(len(items) for items in self.problems.values())


def _match(backbone: nn.Module, source: dict[str, torch.Tensor], layout: str) -> _Match:
    name = backbone.name
    detectron2 = layout == "detectron2"
    own = backbone.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    claimed: dict[str, str] = {}  # our key -> the file key naming it
    kinds = ("missing", "unexpected", "ambiguous", "shape/dtype", "window index")
    problems: dict[str, list[str]] = {kind: [] for kind in kinds}
    for key, value in source.items():
        ours = backbone_key_from_d2(name, key) if detectron2 else key
        if ours.startswith(_DROPPED_PREFIXES) or ours.endswith(_DROPPED_SUFFIXES):
            continue
        if ours.endswith(_INDEX_SUFFIX):
            problem = window_index_problem(backbone, ours, value)
            problems["window index"] += [f"{key}: {problem}"] if problem else []
        elif ours not in own:
            problems["unexpected"].append(key)
        elif ours in claimed:
            problems["ambiguous"].append(f"{claimed[ours]} and {key} both name {ours}")
        else:
            claimed[ours] = key
            target = own[ours]
            if tuple(value.shape) != tuple(target.shape) or value.is_floating_point() != target.is_floating_point():
                problems["shape/dtype"].append(
                    f"{key}: file {tuple(value.shape)} {value.dtype} vs model {tuple(target.shape)} {target.dtype}"
                )
            else:
                mapped[ours] = value
    # Swin's per-output norms (norm0..norm3) belong to the detection backbone, not to ImageNet files.
    optional = ("norm0.", "norm1.", "norm2.", "norm3.")
    problems["missing"] = [
        backbone_key_to_d2(name, key) if detectron2 else key
        for key in own
        if key not in claimed and not key.startswith(optional)
    ]
    return _Match(layout, mapped, problems)


def _format(match: _Match) -> str:
    lines = []
    for kind, items in match.problems.items():
        if items:
            more = f" ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
            lines.append(f"  {kind} ({len(items)}): {items[:_SHOWN]}{more}")
    return "\n".join(lines)


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load ImageNet weights into ``backbone`` from a local file, strictly.

    Accepted: torchvision/timm state dicts (``torch.save``) and detectron2/Mask2Former
    pickles (read without running code from them, see :mod:`ecom2f.modeling.safe_pickle`),
    with or without a ``{"model": ...}`` wrapper. The names are read both as ours and as
    detectron2's (:func:`backbone_key_from_d2`); the reading that fits is used. Classifier
    heads (``fc``, ``head``), Swin's final ``norm``, ``num_batches_tracked`` and ``attn_mask``
    are skipped; ``relative_position_index`` must agree with ours; every other weight of the
    backbone (except Swin's ``norm0..3``) must be in the file with its shape. Values are cast
    to the model's dtypes.

    Raises:
        FileNotFoundError: no such local file.
        ValueError: the file is unreadable or does not fit; the message lists the keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights {str(path)!r} do not exist; give a local file (nothing is downloaded)"
        )
    source = load_state_dict_file(path)
    matches = [_match(backbone, source, layout) for layout in ("detectron2", "ours")]
    best = min(matches, key=lambda match: match.count)
    if best.count:
        raise ValueError(
            f"backbone weights {str(path)!r} do not fit {backbone.name} "
            f"(closest reading: {best.layout} names; {len(source)} entries in the file):\n{_format(best)}"
        )
    own = backbone.state_dict()
    with torch.no_grad():
        for key, value in best.mapped.items():
            own[key].copy_(value.to(own[key].dtype))
