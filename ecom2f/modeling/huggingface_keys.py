"""ecom2f parameter names <-> transformers' Mask2Former names, one rule table per part.

Every ecom2f key maps to one transformers key, or to several whose concatenation along
dim 0 it is: transformers keeps separate query/key/value projections where ecom2f (as
Mask2Former and timm) keeps one ``qkv`` / ``in_proj`` matrix. Names are transformers'
files as written by ``save_pretrained`` and as the Hub holds them (``attention.self.query``,
``intermediate.dense``); the in-memory names of transformers 5 (``attention.q_proj``,
``mlp.fc1``, ``swin.encoder``) are read too (:func:`canonical_hf_key`).
"""

from __future__ import annotations

import re

from ecom2f.modeling.resnet import RESNET_DEPTHS

__all__ = ["BACKBONE_PREFIX", "SWIN_FINAL_NORM", "canonical_hf_key", "hf_keys_for", "is_ignored_hf_key"]

BACKBONE_PREFIX = "model.pixel_level_module.encoder."
_PIXEL = "model.pixel_level_module.decoder."
_TRANSFORMER = "model.transformer_module."
# transformers 5's SwinBackbone holds SwinModel's final LayerNorm; the backbone never applies it.
SWIN_FINAL_NORM = BACKBONE_PREFIX + "swin.layernorm."

_QKV = ("query", "key", "value")
_SWIN_BLOCK = (
    (r"norm1\.(.+)", r"layernorm_before.\1"),
    (r"norm2\.(.+)", r"layernorm_after.\1"),
    (r"attn\.relative_position_(bias_table|index)", r"attention.self.relative_position_\1"),
    (r"attn\.proj\.(.+)", r"attention.output.dense.\1"),
    (r"mlp\.fc1\.(.+)", r"intermediate.dense.\1"),
    (r"mlp\.fc2\.(.+)", r"output.dense.\1"),
)
_PIXEL_RULES = (
    (r"input_proj\.(.+)", r"input_projections.\1"),
    (r"transformer\.level_embed", r"level_embed"),
    (r"transformer\.encoder\.layers\.(\d+)\.self_attn\.(.+)", r"encoder.layers.\1.self_attn.\2"),
    (r"transformer\.encoder\.layers\.(\d+)\.norm1\.(.+)", r"encoder.layers.\1.self_attn_layer_norm.\2"),
    (r"transformer\.encoder\.layers\.(\d+)\.linear1\.(.+)", r"encoder.layers.\1.fc1.\2"),
    (r"transformer\.encoder\.layers\.(\d+)\.linear2\.(.+)", r"encoder.layers.\1.fc2.\2"),
    (r"transformer\.encoder\.layers\.(\d+)\.norm2\.(.+)", r"encoder.layers.\1.final_layer_norm.\2"),
    (r"mask_features\.(.+)", r"mask_projection.\1"),
    (r"(adapter|layer)_(\d+)\.weight", r"\1_\2.0.weight"),
    (r"(adapter|layer)_(\d+)\.norm\.(.+)", r"\1_\2.1.\3"),
)
_DECODER_RULES = (
    (r"query_feat\.weight", r"queries_features.weight"),
    (r"query_embed\.weight", r"queries_embedder.weight"),
    (r"level_embed\.weight", r"level_embed.weight"),
    (r"input_proj\.(\d+)\.(.+)", r"input_projections.\1.\2"),
    (r"decoder_norm\.(.+)", r"decoder.layernorm.\1"),
    (r"transformer_self_attention_layers\.(\d+)\.self_attn\.out_proj\.(.+)", r"decoder.layers.\1.self_attn.out_proj.\2"),
    (r"transformer_self_attention_layers\.(\d+)\.norm\.(.+)", r"decoder.layers.\1.self_attn_layer_norm.\2"),
    (r"transformer_cross_attention_layers\.(\d+)\.multihead_attn\.(.+)", r"decoder.layers.\1.cross_attn.\2"),
    (r"transformer_cross_attention_layers\.(\d+)\.norm\.(.+)", r"decoder.layers.\1.cross_attn_layer_norm.\2"),
    (r"transformer_ffn_layers\.(\d+)\.linear1\.(.+)", r"decoder.layers.\1.fc1.\2"),
    (r"transformer_ffn_layers\.(\d+)\.linear2\.(.+)", r"decoder.layers.\1.fc2.\2"),
    (r"transformer_ffn_layers\.(\d+)\.norm\.(.+)", r"decoder.layers.\1.final_layer_norm.\2"),
    (r"mask_embed\.layers\.(\d+)\.(.+)", r"decoder.mask_predictor.mask_embedder.\1.0.\2"),
)
# transformers 5 in memory -> the names in files (inside the backbone only: the decoder has its own fc1/fc2).
_CANONICAL_BACKBONE = (
    (r"^swin\.(encoder|embeddings)\.", r"\1."),
    (r"attention\.(q|k|v)_proj\.", lambda m: f"attention.self.{_QKV['qkv'.index(m.group(1))]}."),
    (r"attention\.o_proj\.", "attention.output.dense."),
    (r"attention\.relative_position_bias\.relative_position_", "attention.self.relative_position_"),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
)


def _apply(rules, key: str) -> str | None:
    for pattern, replacement in rules:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def _swin(rest: str) -> tuple[str, ...] | None:
    if rest.startswith("patch_embed.proj."):
        return ("embeddings.patch_embeddings.projection." + rest[len("patch_embed.proj."):],)
    if rest.startswith("patch_embed.norm."):
        return ("embeddings.norm." + rest[len("patch_embed.norm."):],)
    block = re.fullmatch(r"layers\.(\d+)\.blocks\.(\d+)\.(.+)", rest)
    if block:
        prefix, inner = f"encoder.layers.{block.group(1)}.blocks.{block.group(2)}.", block.group(3)
        qkv = re.fullmatch(r"attn\.qkv\.(weight|bias)", inner)
        if qkv:
            return tuple(f"{prefix}attention.self.{part}.{qkv.group(1)}" for part in _QKV)
        mapped = _apply(_SWIN_BLOCK, inner)
        return None if mapped is None else (prefix + mapped,)
    # timm merges patches at the start of stage i, transformers (like detectron2) at the end of stage i-1.
    merge = re.fullmatch(r"layers\.(\d+)\.downsample\.(.+)", rest)
    if merge and int(merge.group(1)) > 0:
        return (f"encoder.layers.{int(merge.group(1)) - 1}.downsample.{merge.group(2)}",)
    norm = re.fullmatch(r"norm(\d)\.(.+)", rest)
    if norm:
        return (f"hidden_states_norms.stage{int(norm.group(1)) + 1}.{norm.group(2)}",)
    return None


def _resnet(rest: str) -> tuple[str, ...] | None:
    stem = {"conv1.weight": "embedder.embedder.convolution.weight"}.get(rest)
    if stem:
        return (stem,)
    if rest.startswith("bn1."):
        return ("embedder.embedder.normalization." + rest[len("bn1."):],)
    match = re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", rest)
    if not match:
        return None
    prefix, inner = f"encoder.stages.{int(match.group(1)) - 1}.layers.{match.group(2)}.", match.group(3)
    rules = ((r"conv(\d)\.weight", lambda m: f"layer.{int(m.group(1)) - 1}.convolution.weight"),
             (r"bn(\d)\.(.+)", lambda m: f"layer.{int(m.group(1)) - 1}.normalization.{m.group(2)}"),
             (r"downsample\.0\.(.+)", r"shortcut.convolution.\1"),
             (r"downsample\.1\.(.+)", r"shortcut.normalization.\1"))
    mapped = _apply(rules, inner)
    return None if mapped is None else (prefix + mapped,)


def hf_keys_for(key: str, backbone: str) -> tuple[str, ...] | None:
    """The transformers key(s) holding ecom2f's ``key`` (concatenated along dim 0 when several);
    None for keys transformers has no place for (the gate)."""
    if key.startswith("backbone."):
        rest = key[len("backbone."):]
        found = _resnet(rest) if backbone in RESNET_DEPTHS else _swin(rest)
        return None if found is None else tuple(BACKBONE_PREFIX + name for name in found)
    if key.startswith("pixel_decoder."):
        mapped = _apply(_PIXEL_RULES, key[len("pixel_decoder."):])
        return None if mapped is None else (_PIXEL + mapped,)
    if key.startswith("decoder."):
        rest = key[len("decoder."):]
        if rest.startswith("class_embed."):
            return ("class_predictor." + rest[len("class_embed."):],)
        in_proj = re.fullmatch(r"transformer_self_attention_layers\.(\d+)\.self_attn\.in_proj_(weight|bias)", rest)
        if in_proj:
            layer, kind = in_proj.groups()
            return tuple(f"{_TRANSFORMER}decoder.layers.{layer}.self_attn.{p}_proj.{kind}" for p in "qkv")
        mapped = _apply(_DECODER_RULES, rest)
        return None if mapped is None else (_TRANSFORMER + mapped,)
    return None


def canonical_hf_key(key: str) -> str:
    """A transformers key as files name it (transformers 5 renames some in memory)."""
    if not key.startswith(BACKBONE_PREFIX):
        return key
    rest = key[len(BACKBONE_PREFIX):]
    for pattern, replacement in _CANONICAL_BACKBONE:
        rest = re.sub(pattern, replacement, rest)
    return BACKBONE_PREFIX + rest


def is_ignored_hf_key(key: str) -> str | None:
    """Why a transformers key has no ecom2f weight, or None when it should have one."""
    if key == "criterion.empty_weight":
        return "the loss' class weights (rebuilt from criterion.no_object_weight)"
    if key.endswith("num_batches_tracked"):
        return "batch-norm step counters (ecom2f's batch norm is frozen)"
    if key.startswith((SWIN_FINAL_NORM, BACKBONE_PREFIX + "layernorm.")):
        return "Swin's final LayerNorm, which transformers' SwinBackbone never applies"
    return None
