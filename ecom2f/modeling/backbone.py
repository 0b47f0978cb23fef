"""Backbone factory: a config section -> a module returning ``{"res2".."res5": [N, C, H/s, W/s]}``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ecom2f.modeling.config import BackboneConfig
from ecom2f.modeling.resnet import RESNET_DEPTHS, ResNetBackbone
from ecom2f.modeling.swin import SWIN_SPECS, SwinBackbone

__all__ = ["build_backbone", "load_backbone_weights"]


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


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load ImageNet weights saved by torchvision or timm (``torch.save(state_dict)``) from ``path``.

    Classifier heads (``fc.*``, ``head.*``) and the final ``norm.*`` are dropped; every other
    key must match. Mask2Former/detectron2 checkpoints go through
    :func:`ecom2f.checkpoint.import_mask2former` instead.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights {str(path)!r} do not exist; give a local file (nothing is downloaded)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    state = {
        key: value
        for key, value in state.items()
        if not key.startswith(("fc.", "head.", "norm."))
        and not key.endswith(("relative_position_index", "attn_mask", "num_batches_tracked"))
    }
    own = backbone.state_dict()
    # Swin's per-output norms (norm0..norm3) are not part of ImageNet checkpoints.
    optional = {key for key in own if key.startswith(("norm0.", "norm1.", "norm2.", "norm3."))}
    missing = sorted(set(own) - set(state) - optional)
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"backbone weights {str(path)!r} do not fit {type(backbone).__name__}: "
            f"missing {missing[:10]}{'...' if len(missing) > 10 else ''}, "
            f"unexpected {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}"
        )
    backbone.load_state_dict(state, strict=False)
