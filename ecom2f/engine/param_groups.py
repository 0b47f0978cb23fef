"""AdamW parameter groups of the Mask2Former recipe, split by the exit that reaches them."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

_NORM_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)
# Swin's position tables (Mask2Former sets their weight decay to 0).
_POSITION_TABLE_NAMES = ("relative_position_bias_table", "absolute_pos_embed")


def encoder_layer_reach(model: nn.Module) -> dict[int, int]:
    """``id(parameter) -> the shallowest exit whose forward uses it`` for the encoder layers.

    Encoder layer ``i`` (0-based) runs only at exits ``k >= i + 1``; every other parameter
    of the model is used at every exit (and is absent from the mapping).
    """
    layers = model.pixel_decoder.encoder.layers
    return {id(p): index + 1 for index, layer in enumerate(layers) for p in layer.parameters()}


def build_param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    backbone_multiplier: float = 0.1,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
    backbone_prefix: str = "backbone",
    reach: Mapping[int, int] | None = None,
) -> list[dict]:
    """Groups of trainable parameters with their ``lr``, ``weight_decay`` and ``min_exit``.

    Backbone parameters (module path starting with ``backbone_prefix``) get
    ``base_lr * backbone_multiplier``; parameters of normalisation layers get
    ``weight_decay_norm``, of ``nn.Embedding`` ``weight_decay_embed``, and Swin's position
    tables no weight decay. ``reach`` (see :func:`encoder_layer_reach`) gives the shallowest
    exit that uses a parameter (default 0: every exit); parameters that differ in it are kept
    in separate groups, so :class:`~ecom2f.engine.optimizer.ExitAwareAdamW` can leave a whole
    group untouched in a step whose exit does not reach it. DeepSpeed's ZeRO flattens each
    group into one tensor, so this is the granularity at which skipping works for every stage.
    Each group also records ``lr_scale`` (relative to ``base_lr``) for schedulers. Shared
    parameters are counted once; frozen ones are left out.
    """
    reach = reach or {}
    groups: dict[tuple[float, float, int], list[torch.Tensor]] = {}
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
            groups.setdefault((lr_scale, decay, reach.get(id(param), 0)), []).append(param)
    return [
        {"params": params, "lr": base_lr * lr_scale, "lr_scale": lr_scale, "weight_decay": decay, "min_exit": min_exit}
        for (lr_scale, decay, min_exit), params in groups.items()
    ]
