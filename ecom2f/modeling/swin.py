"""Swin-T/S/B backbones (timm) shaped like Mask2Former's D2SwinTransformer: ``res2..res5``.

timm's stages put the patch merging at the start of a stage while detectron2's put it at
the end; the outputs taken here (after each stage's blocks, before the next merging) are
the same tensors. Like D2SwinTransformer, each output gets its own LayerNorm
(``norm0..norm3``), windows always have the full size, and a feature map is padded to a
multiple of the window *before* the cyclic shift, with the shift mask computed on the
padded map (timm shifts first, then pads: the same only when sizes divide by the window,
so the window attention is replaced by detectron2's order here).
"""

from __future__ import annotations

import re
import types

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SwinBackbone", "SWIN_SPECS", "swin_key_from_d2", "swin_key_to_d2"]

# embed_dim, depths, heads (Mask2Former's Swin configs).
SWIN_SPECS = {
    "swin_t": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin_s": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin_b": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "swin_l": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}


class SwinBackbone(nn.Module):
    """``forward([N, 3, H, W]) -> {"res2": [N, C, H/4, W/4], ..., "res5": [N, 8C, H/32, W/32]}``."""

    def __init__(self, name: str = "swin_t", window_size: int = 7, drop_path_rate: float = 0.0, freeze_at: int = 0):
        super().__init__()
        if name not in SWIN_SPECS:
            raise ValueError(f"unknown Swin {name!r}; expected one of {sorted(SWIN_SPECS)}")
        from timm.models.swin_transformer import SwinTransformer

        embed_dim, depths, heads = SWIN_SPECS[name]
        net = SwinTransformer(
            img_size=224,
            patch_size=4,
            embed_dim=embed_dim,
            depths=depths,
            num_heads=heads,
            window_size=window_size,
            drop_path_rate=drop_path_rate,
            num_classes=0,
            strict_img_size=False,
            always_partition=True,
        )
        self.name = name
        for stage in net.layers:
            for block in stage.blocks:
                block._attn = types.MethodType(_d2_window_attention, block)
        self.patch_embed = net.patch_embed
        self.layers = net.layers
        dims = [embed_dim * 2**i for i in range(4)]
        for i, dim in enumerate(dims):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))
        self.out_channels = {f"res{i + 2}": dim for i, dim in enumerate(dims)}
        self.strides = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
        # detectron2's frozen_stages: 1 freezes the patch embedding, k>=2 also stages 0..k-2.
        frozen = [self.patch_embed] + list(self.layers)
        for module in frozen[:freeze_at]:
            for parameter in module.parameters():
                parameter.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.patch_embed(x)  # [N, H/4, W/4, C], channels last
        out = {}
        for i, stage in enumerate(self.layers):
            x = stage(x)
            normed = getattr(self, f"norm{i}")(x)
            out[f"res{i + 2}"] = normed.permute(0, 3, 1, 2).contiguous()
        return out


def _d2_window_attention(block, x: torch.Tensor) -> torch.Tensor:
    """Shifted-window attention in detectron2's order: pad, shift, attend, unshift, crop.

    ``x``: ``[N, H, W, C]`` (after ``norm1``); ``block``: a timm ``SwinTransformerBlock``.
    """
    from timm.models.swin_transformer import window_partition, window_reverse

    n, h, w, c = x.shape
    wh, ww = block.window_size
    x = F.pad(x, (0, 0, 0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh))
    hp, wp = x.shape[1], x.shape[2]
    shift = tuple(block.shift_size)
    if any(shift):
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        mask = block.get_attn_mask(x)
    else:
        mask = None
    windows = window_partition(x, block.window_size).view(-1, wh * ww, c)
    attended = block.attn(windows, mask=mask).view(-1, wh, ww, c)
    x = window_reverse(attended, block.window_size, hp, wp)
    if any(shift):
        x = torch.roll(x, shifts=shift, dims=(1, 2))
    return x[:, :h, :w, :].contiguous()


def swin_key_from_d2(key: str) -> str:
    """The official Swin / Mask2Former name -> ours (timm's).

    Patch merging ends stage i there and starts stage i+1 in timm, so ``layers.{i}.downsample``
    becomes ``layers.{i+1}.downsample``; every other name is shared.
    """
    return re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", key)


def swin_key_to_d2(key: str) -> str:
    """Inverse of :func:`swin_key_from_d2`."""
    return re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", key)
