"""The three sub-layers of Mask2Former's masked-attention decoder (names match its checkpoints).

Tensors are sequence-first, ``[L, N, C]``, as ``nn.MultiheadAttention`` expects by default.
Dropout is 0 in Mask2Former, so there is none here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SelfAttentionLayer", "CrossAttentionLayer", "FFNLayer", "MLP"]


def _xavier(module: nn.Module) -> None:
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, pre_norm: bool = False) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        _xavier(self)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        """``tgt``, ``query_pos``: ``[Q, N, C]``."""
        if self.pre_norm:
            normed = self.norm(tgt)
            q = k = normed + query_pos
            return tgt + self.self_attn(q, k, value=normed)[0]
        q = k = tgt + query_pos
        return self.norm(tgt + self.self_attn(q, k, value=tgt)[0])


class CrossAttentionLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, pre_norm: bool = False) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, heads, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        _xavier(self)

    def forward(self, tgt, memory, memory_mask: torch.Tensor | None, pos, query_pos) -> torch.Tensor:
        """``tgt``: ``[Q, N, C]``; ``memory``/``pos``: ``[S, N, C]``; ``memory_mask``: ``[N*heads, Q, S]`` bool
        (True = not attended)."""
        query = (self.norm(tgt) if self.pre_norm else tgt) + query_pos
        attended = self.multihead_attn(query=query, key=memory + pos, value=memory, attn_mask=memory_mask)[0]
        return tgt + attended if self.pre_norm else self.norm(tgt + attended)


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, ffn_dim: int, pre_norm: bool = False) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        _xavier(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            return tgt + self.linear2(F.relu(self.linear1(self.norm(tgt))))
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (keys ``layers.i``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x) if index == len(self.layers) - 1 else F.relu(layer(x))
        return x
