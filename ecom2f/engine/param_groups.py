"""AdamW parameter groups of the Mask2Former recipe."""

from __future__ import annotations

import torch
from torch import nn

_NORM_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)
# Swin's position tables (Mask2Former sets their weight decay to 0).
_POSITION_TABLE_NAMES = ("relative_position_bias_table", "absolute_pos_embed")


def build_param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    backbone_multiplier: float = 0.1,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
    backbone_prefix: str = "backbone",
) -> list[dict]:
    """Groups of trainable parameters with their ``lr`` and ``weight_decay``.

    Backbone parameters (module path starting with ``backbone_prefix``) get
    ``base_lr * backbone_multiplier``; parameters of normalisation layers get
    ``weight_decay_norm``, of ``nn.Embedding`` ``weight_decay_embed``, and Swin's position
    tables no weight decay. Parameters with equal settings share a group; each group also
    records ``lr_scale`` (relative to ``base_lr``) for schedulers. Shared parameters are
    counted once; frozen ones are left out.
    """
    groups: dict[tuple[float, float], list[torch.Tensor]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr_scale = backbone_multiplier if module_name.split(".")[0] == backbone_prefix else 1.0
            decay = weight_decay
            if isinstance(module, _NORM_TYPES):
                decay = weight_decay_norm
            elif isinstance(module, nn.Embedding):
                decay = weight_decay_embed
            if param_name in _POSITION_TABLE_NAMES:
                decay = 0.0
            groups.setdefault((lr_scale, decay), []).append(param)
    return [
        {"params": params, "lr": base_lr * lr_scale, "lr_scale": lr_scale, "weight_decay": decay}
        for (lr_scale, decay), params in groups.items()
    ]
