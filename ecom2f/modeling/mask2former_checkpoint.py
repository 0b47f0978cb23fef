"""Mask2Former (detectron2) checkpoints <-> ecom2f models.

``import_mask2former`` reads a Mask2Former config YAML (plain YAML, no detectron2), builds
the model and loads a ``.pth``/``.pkl`` state dict into it with every key accounted for;
``export_mask2former`` writes our weights under Mask2Former's names. Released ECO-M2F
checkpoints carry the gate as ``...transformer.encoder.gt.head.{weight,bias}``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ecom2f.modeling.backbone import backbone_key_from_d2, backbone_key_to_d2, window_index_problem
from ecom2f.modeling.d2_config import model_config_from_d2
from ecom2f.modeling.early_exit_mask2former import EarlyExitMask2Former, build_model
from ecom2f.modeling.safe_pickle import load_state_dict_file

__all__ = [
    "import_mask2former",
    "export_mask2former",
    "load_mask2former_state_dict",
    "mask2former_to_ecom2f",
    "ecom2f_to_mask2former",
    "CheckpointMismatchError",
]

_GATE_PREFIX = "sem_seg_head.pixel_decoder.transformer.encoder.gt."
# In Mask2Former checkpoints but not model weights: the loss' class weights.
_IGNORED = ("criterion.empty_weight",)


class CheckpointMismatchError(ValueError):
    """A checkpoint and a model disagree on keys or shapes; the message lists them."""


# ---------------------------------------------------------------- key renaming
def _is_ignored(key: str) -> bool:
    return key in _IGNORED or key.endswith("relative_position_index")


def _rename(key: str, backbone: str) -> str:
    if key.startswith(_GATE_PREFIX):
        return "gate." + key[len(_GATE_PREFIX):]
    if key.startswith("sem_seg_head.pixel_decoder."):
        return "pixel_decoder." + key[len("sem_seg_head.pixel_decoder."):]
    if key.startswith("sem_seg_head.predictor."):
        rest = key[len("sem_seg_head.predictor."):]
        # Checkpoints written before Mask2Former's _version 2 call the queries static_query.
        return "decoder." + re.sub(r"^static_query\.", "query_feat.", rest)
    if key.startswith("backbone."):
        rest = key[len("backbone."):]
        return "backbone." + backbone_key_from_d2(backbone, rest)
    return key  # unknown: left for the strict check to report


def mask2former_to_ecom2f(key: str, backbone: str) -> str | None:
    """Our name for a Mask2Former key; ``None`` for keys with no weight of ours (ignored buffers)."""
    return None if _is_ignored(key) else _rename(key, backbone)


def ecom2f_to_mask2former(key: str, backbone: str) -> str:
    if key.startswith("gate."):
        return _GATE_PREFIX + key[len("gate."):]
    if key.startswith("pixel_decoder."):
        return "sem_seg_head." + key
    if key.startswith("decoder."):
        return "sem_seg_head.predictor." + key[len("decoder."):]
    if key.startswith("backbone."):
        rest = key[len("backbone."):]
        return "backbone." + backbone_key_to_d2(backbone, rest)
    return key


# ---------------------------------------------------------------- files
def load_mask2former_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A Mask2Former/detectron2 state dict from a torch file or a ``.pkl`` (numpy arrays or torch
    tensors), with or without a ``{"model": ...}`` wrapper. Pickles are read without running code
    from them (:mod:`ecom2f.modeling.safe_pickle`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return load_state_dict_file(path)


def _check_ignored(model: EarlyExitMask2Former, source: dict[str, torch.Tensor]) -> list[str]:
    """Swin's index buffers are not loaded but must agree with ours (they encode the window layout)."""
    problems = []
    for key, value in source.items():
        if key.endswith("relative_position_index"):
            if not key.startswith("backbone."):
                problems.append(f"{key} (no such buffer)")
                continue
            ours = backbone_key_from_d2(model.config.backbone.name, key[len("backbone."):])
            problem = window_index_problem(model.backbone, ours, value)
            if problem:
                problems.append(f"{key} ({problem})")
    return problems


def load_into(model: EarlyExitMask2Former, source: dict[str, torch.Tensor], require_gate: bool = False) -> list[str]:
    """Copy a Mask2Former state dict into ``model``, strictly. Returns the model keys left at their
    initial values (only the gate's, when the checkpoint is plain Mask2Former)."""
    backbone = model.config.backbone.name
    target = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unmapped_source = []
    for key, value in source.items():
        ours = mask2former_to_ecom2f(key, backbone)
        if ours is None:
            continue
        if ours in target:
            mapped[ours] = value
        else:
            unmapped_source.append(key)
    left = sorted(set(target) - set(mapped))
    gate_left = [key for key in left if key.startswith("gate.")]
    missing = [key for key in left if require_gate or not key.startswith("gate.")]
    shape_errors = [
        f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(target[key].shape)}"
        for key, value in mapped.items()
        if tuple(value.shape) != tuple(target[key].shape)
    ]
    problems = _check_ignored(model, source)
    if unmapped_source or missing or shape_errors or problems:
        raise CheckpointMismatchError(
            "checkpoint does not fit the model:\n"
            f"  checkpoint keys with no model key ({len(unmapped_source)}): {unmapped_source}\n"
            f"  model keys absent from the checkpoint ({len(missing)}): {missing}\n"
            f"  shape mismatches ({len(shape_errors)}): {shape_errors}\n"
            f"  other: {problems}"
        )
    with torch.no_grad():
        for key, value in mapped.items():
            target[key].copy_(value.to(target[key].dtype))
    return gate_left


def import_mask2former(
    weights: str | Path | dict | None,
    d2_config_yaml: str | Path,
    num_things: int | None = None,
    require_gate: bool = False,
) -> EarlyExitMask2Former:
    """Build our model from a Mask2Former config and load its checkpoint (strict).

    Args:
        weights: checkpoint path (``.pth``/``.pkl``) or an already loaded state dict; None builds
            the model only.
        d2_config_yaml: the detectron2/Mask2Former config YAML.
        num_things: see :func:`~ecom2f.modeling.d2_config.model_config_from_d2`.
        require_gate: also demand the ECO-M2F gate keys (else a plain Mask2Former checkpoint
            leaves the gate at its initialisation).
    Returns:
        the model in eval mode.
    """
    config = model_config_from_d2(d2_config_yaml, num_things=num_things)
    model = build_model(config)
    if weights is not None:
        source = weights if isinstance(weights, dict) else load_mask2former_state_dict(weights)
        load_into(model, source, require_gate=require_gate)
    return model.eval()


def export_mask2former(
    model: EarlyExitMask2Former, path: str | Path | None = None, include_gate: bool = True
) -> dict[str, torch.Tensor]:
    """Our weights under Mask2Former's names (plus ``criterion.empty_weight`` and Swin's index
    buffers, which Mask2Former's state dict holds). Written to ``path`` (``{"model": ...}``, via a
    temporary file and a rename) when given."""
    backbone = model.config.backbone.name
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("gate.") and not include_gate:
            continue
        out[ecom2f_to_mask2former(key, backbone)] = value.detach().clone()
    for name, buffer in model.backbone.named_buffers():
        if name.endswith("relative_position_index"):
            out[ecom2f_to_mask2former("backbone." + name, backbone)] = buffer.detach().clone()
    empty_weight = torch.ones(model.config.num_classes + 1)
    empty_weight[-1] = model.config.criterion.no_object_weight
    out["criterion.empty_weight"] = empty_weight
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        torch.save({"model": out}, temporary)
        os.replace(temporary, path)
    return out
