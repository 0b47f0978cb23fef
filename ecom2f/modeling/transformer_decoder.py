"""Mask2Former's MultiScaleMaskedTransformerDecoder (masked attention, round robin over scales)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ecom2f.config.model import DecoderConfig
from ecom2f.modeling.decoder_layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer
from ecom2f.modeling.position_encoding import PositionEmbeddingSine

__all__ = ["MultiScaleMaskedTransformerDecoder", "unmask_empty_queries"]


def unmask_empty_queries(attn_mask: torch.Tensor) -> torch.Tensor:
    """``[B, Q, S]`` bool (True = not attended) with every fully masked row cleared.

    A query whose mask is empty everywhere would attend to nothing: it sees everything
    instead. Mask2Former writes ``attn_mask[torch.where(attn_mask.sum(-1) == S)] = False``;
    this gives the same mask without the device sync of ``torch.where``'s index list.
    """
    return attn_mask & ~attn_mask.all(-1, keepdim=True)


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Learnable queries refined layer by layer; a class and mask prediction before the first
    layer and after every layer (deep supervision). Layer ``i`` cross-attends to scale
    ``i % 3`` (coarsest first), restricted to the foreground of the previous prediction.

    Args:
        config: the decoder section.
        in_channels: channels of the multi-scale features (the pixel decoder's conv_dim).
        mask_dim: channels of the mask features.
        num_classes: classes without the "no object" class.
    """

    def __init__(self, config: DecoderConfig, in_channels: int, mask_dim: int, num_classes: int) -> None:
        super().__init__()
        hidden = config.hidden_dim
        self.num_heads = config.heads
        self.num_layers = config.layers
        self.num_feature_levels = 3
        self.pe_layer = PositionEmbeddingSine(hidden // 2)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden, config.heads, config.pre_norm) for _ in range(config.layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden, config.heads, config.pre_norm) for _ in range(config.layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden, config.ffn_dim, config.pre_norm) for _ in range(config.layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden)
        self.query_feat = nn.Embedding(config.num_queries, hidden)
        self.query_embed = nn.Embedding(config.num_queries, hidden)
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden)
        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden or config.enforce_input_proj:
                conv = nn.Conv2d(in_channels, hidden, 1)
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.constant_(conv.bias, 0)
                self.input_proj.append(conv)
            else:
                self.input_proj.append(nn.Sequential())
        self.class_embed = nn.Linear(hidden, num_classes + 1)
        self.mask_embed = MLP(hidden, hidden, mask_dim, 3)

    def forward(self, multi_scale_features: list[torch.Tensor], mask_features: torch.Tensor, aux: bool = True) -> dict:
        """
        Args:
            multi_scale_features: 3 maps ``[N, C, h_l, w_l]``, coarsest first.
            mask_features: ``[N, mask_dim, H/4, W/4]``.
            aux: also return the earlier predictions (deep supervision). Every layer's
                prediction is computed either way (it masks the next layer's attention).
        Returns:
            ``pred_logits [N, Q, K+1]``, ``pred_masks [N, Q, H/4, W/4]`` (after the last layer) and,
            with ``aux``, ``aux_outputs``: the earlier predictions, first the one before any layer.
        """
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature maps, got {len(multi_scale_features)}")
        src, pos, sizes = [], [], []
        for level, x in enumerate(multi_scale_features):
            sizes.append(x.shape[-2:])
            pos.append(self.pe_layer(x).flatten(2).permute(2, 0, 1))
            projected = self.input_proj[level](x).flatten(2) + self.level_embed.weight[level][None, :, None]
            src.append(projected.permute(2, 0, 1))
        batch = src[0].shape[1]
        query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, batch, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, batch, 1)

        # Without aux, only the last prediction is kept (the earlier masks are the largest tensors).
        earlier = []
        outputs_class, outputs_mask, attn_mask = self.prediction_heads(output, mask_features, sizes[0])
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            attn_mask = unmask_empty_queries(attn_mask)
            output = self.transformer_cross_attention_layers[i](output, src[level], attn_mask, pos[level], query_embed)
            output = self.transformer_self_attention_layers[i](output, query_embed)
            output = self.transformer_ffn_layers[i](output)
            if aux:
                earlier.append({"pred_logits": outputs_class, "pred_masks": outputs_mask})
            outputs_class, outputs_mask, attn_mask = self.prediction_heads(
                output, mask_features, sizes[(i + 1) % self.num_feature_levels]
            )
        out = {"pred_logits": outputs_class, "pred_masks": outputs_mask}
        if aux:
            out["aux_outputs"] = earlier
        return out

    def prediction_heads(self, output: torch.Tensor, mask_features: torch.Tensor, attn_mask_size):
        """``output [Q, N, C]`` -> ``(logits [N, Q, K+1], masks [N, Q, H/4, W/4], attn_mask [N*heads, Q, h*w])``."""
        decoded = self.decoder_norm(output).transpose(0, 1)
        outputs_class = self.class_embed(decoded)
        mask_embed = self.mask_embed(decoded)
        outputs_mask = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        attn_mask = F.interpolate(outputs_mask, size=attn_mask_size, mode="bilinear", align_corners=False)
        attn_mask = attn_mask.sigmoid().flatten(2).unsqueeze(1).repeat(1, self.num_heads, 1, 1).flatten(0, 1) < 0.5
        return outputs_class, outputs_mask, attn_mask.detach()
