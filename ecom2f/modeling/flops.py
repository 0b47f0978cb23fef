"""Analytic FLOP counts, with the conventions of ``torch.utils.flop_counter.FlopCounterMode``.

A multiply-add is 2 FLOPs; bias additions, normalisations, activations, softmax and
interpolation are not counted; the deformable-attention op counts
``ecom2f.ops.FLOPS_PER_SAMPLE_CHANNEL`` per (query, head, level, point, channel), as its
registered formula does. All counts are for one image unless ``batch`` is given.
"""

from __future__ import annotations

import math

from torch import nn
from torchvision.models import resnet

from ecom2f.config.model import ModelConfig
from ecom2f.ops import FLOPS_PER_SAMPLE_CHANNEL

__all__ = [
    "feature_sizes",
    "encoder_layer_flops",
    "encoder_gflops",
    "backbone_flops",
    "pixel_decoder_flops",
    "decoder_flops",
    "model_gflops",
    "all_exits_gflops",
    "input_projection_flops",
    "fpn_flops",
    "lateral_flops",
]

_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def _ceil_halvings(size: int, times: int) -> int:
    for _ in range(times):
        size = (size + 1) // 2
    return size


def feature_sizes(config: ModelConfig, height: int, width: int) -> dict[str, tuple[int, int]]:
    """Backbone output sizes ``{"res2": (h, w), ...}`` for a (padded) input ``height x width``."""
    sizes = {}
    for name, stride in _STRIDES.items():
        halvings = int(math.log2(stride))
        if config.backbone.name.startswith("swin"):
            # Patch embedding floors to /4; each patch merging pads odd sizes up.
            sizes[name] = (_ceil_halvings(height // 4, halvings - 2), _ceil_halvings(width // 4, halvings - 2))
        else:
            sizes[name] = (_ceil_halvings(height, halvings), _ceil_halvings(width, halvings))
    return sizes


def _encoder_tokens(config: ModelConfig, height: int, width: int) -> int:
    sizes = feature_sizes(config, height, width)
    return sum(h * w for h, w in (sizes[name] for name in config.pixel_decoder.in_features))


def encoder_layer_flops(config: ModelConfig, height: int, width: int) -> int:
    """FLOPs of one deformable encoder layer on one ``height x width`` image."""
    pd = config.pixel_decoder
    s, c, f = _encoder_tokens(config, height, width), pd.conv_dim, pd.ffn_dim
    levels = len(pd.in_features)
    samples = pd.heads * levels * pd.points
    linear = 2 * s * c * (c + c + 3 * samples + 2 * f)  # value, output, offsets (2x) + weights, FFN
    sampling = FLOPS_PER_SAMPLE_CHANNEL * s * levels * pd.points * c  # heads x (C / heads) channels
    return linear + sampling


def encoder_gflops(config: ModelConfig, height: int, width: int, depth: int | None = None, batch: int = 1) -> float:
    """GFLOPs of the first ``depth`` encoder layers (default: all) on ``batch`` images."""
    layers = config.pixel_decoder.encoder_layers if depth is None else depth
    if not 0 <= layers <= config.pixel_decoder.encoder_layers:
        raise ValueError(f"depth {depth} must lie in 0..{config.pixel_decoder.encoder_layers}")
    return batch * layers * encoder_layer_flops(config, height, width) / 1e9


def _conv(conv: nn.Conv2d, h: int, w: int) -> tuple[int, int, int]:
    oh = (h + 2 * conv.padding[0] - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1
    ow = (w + 2 * conv.padding[1] - conv.dilation[1] * (conv.kernel_size[1] - 1) - 1) // conv.stride[1] + 1
    macs = oh * ow * conv.out_channels * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
    return 2 * macs, oh, ow


def _resnet_flops(backbone, height: int, width: int) -> int:
    total, h, w = 0, height, width
    flops, h, w = _conv(backbone.conv1, h, w)
    total += flops
    h, w = (h + 2 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1  # max pool 3x3, stride 2, padding 1
    for stage in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
        for block in stage:
            convs = [block.conv1, block.conv2] + ([block.conv3] if isinstance(block, resnet.Bottleneck) else [])
            bh, bw = h, w
            for conv in convs:
                flops, bh, bw = _conv(conv, bh, bw)
                total += flops
            if block.downsample is not None:
                total += _conv(block.downsample[0], h, w)[0]
            h, w = bh, bw
    return total


def _swin_flops(backbone, height: int, width: int) -> int:
    embed = backbone.patch_embed.proj
    total, h, w = _conv(embed, height, width)
    for stage in backbone.layers:
        if not isinstance(stage.downsample, nn.Identity):
            h, w = (h + 1) // 2, (w + 1) // 2
            total += 2 * h * w * stage.downsample.reduction.in_features * stage.downsample.reduction.out_features
        for block in stage.blocks:
            c = block.norm1.normalized_shape[0]
            wh, ww = block.window_size
            padded = math.ceil(h / wh) * wh * math.ceil(w / ww) * ww  # attention runs on padded windows
            hidden = block.mlp.fc1.out_features
            total += 2 * padded * c * 3 * c + 2 * 2 * padded * wh * ww * c + 2 * padded * c * c
            total += 2 * 2 * h * w * c * hidden
    return total


def backbone_flops(model, height: int, width: int) -> int:
    """Convolution/linear FLOPs of ``model.backbone`` (ResNet or Swin) on one image."""
    if model.config.backbone.name.startswith("swin"):
        return _swin_flops(model.backbone, height, width)
    return _resnet_flops(model.backbone, height, width)


def input_projection_flops(config: ModelConfig, channels: dict[str, int], height: int, width: int) -> int:
    """The 1x1 input projections of the encoder levels on one image."""
    sizes = feature_sizes(config, height, width)
    pd = config.pixel_decoder
    return sum(2 * sizes[n][0] * sizes[n][1] * channels[n] * pd.conv_dim for n in pd.in_features)


def _fpn_levels(config: ModelConfig) -> list[str]:
    pd = config.pixel_decoder
    finest = min(pd.in_features, key=_STRIDES.get)
    return [n for n in _STRIDES if _STRIDES[n] < _STRIDES[finest] and _STRIDES[n] >= pd.common_stride]


def lateral_flops(config: ModelConfig, channels: dict[str, int], height: int, width: int) -> int:
    """The FPN's lateral 1x1 convs (independent of the encoder depth) on one image."""
    sizes = feature_sizes(config, height, width)
    return sum(2 * sizes[n][0] * sizes[n][1] * channels[n] * config.pixel_decoder.conv_dim for n in _fpn_levels(config))


def fpn_flops(config: ModelConfig, channels: dict[str, int], height: int, width: int) -> int:
    """The FPN levels below the encoder (lateral and output convs) and the mask-feature conv on one image."""
    pd = config.pixel_decoder
    sizes = feature_sizes(config, height, width)
    total = lateral_flops(config, channels, height, width)
    for name in _fpn_levels(config):
        h, w = sizes[name]
        total += 2 * h * w * pd.conv_dim * pd.conv_dim * 9
    h, w = sizes[min(_STRIDES, key=lambda n: abs(_STRIDES[n] - pd.common_stride))]
    return total + 2 * h * w * pd.conv_dim * pd.mask_dim


def pixel_decoder_flops(config: ModelConfig, channels: dict[str, int], height: int, width: int, depth=None) -> int:
    """Input projections, encoder (``depth`` layers), FPN and mask-feature conv on one image."""
    encoder = round(encoder_gflops(config, height, width, depth) * 1e9)
    return input_projection_flops(config, channels, height, width) + encoder + fpn_flops(config, channels, height, width)


def decoder_flops(config: ModelConfig, height: int, width: int) -> int:
    """Masked-attention decoder FLOPs (all layers and all prediction heads) on one image."""
    dec, pd = config.decoder, config.pixel_decoder
    sizes = feature_sizes(config, height, width)
    levels = sorted(pd.in_features, key=_STRIDES.get, reverse=True)[:3]  # coarsest first
    tokens = [sizes[n][0] * sizes[n][1] for n in levels]
    q, c, k = dec.num_queries, dec.hidden_dim, config.num_classes + 1
    mask_h, mask_w = sizes[min(_STRIDES, key=lambda n: abs(_STRIDES[n] - pd.common_stride))]
    head = 2 * q * c * k + 2 * q * (2 * c * c + c * pd.mask_dim) + 2 * q * pd.mask_dim * mask_h * mask_w
    total = head * (dec.layers + 1)
    if pd.conv_dim != c or dec.enforce_input_proj:
        total += sum(2 * t * pd.conv_dim * c for t in tokens)
    for i in range(dec.layers):
        s = tokens[i % 3]
        total += 2 * q * c * c + 2 * 2 * s * c * c + 2 * 2 * q * s * c + 2 * q * c * c  # cross-attention
        total += 2 * 3 * q * c * c + 2 * 2 * q * q * c + 2 * q * c * c  # self-attention
        total += 2 * 2 * q * c * dec.ffn_dim  # FFN
    return total


def _gate_flops(model) -> int:
    return sum(2 * layer.in_features * layer.out_features for layer in model.gate.modules() if isinstance(layer, nn.Linear))


def model_gflops(model, height: int, width: int, depth: int | None = None, batch: int = 1) -> float:
    """Whole-network GFLOPs (backbone, pixel decoder at ``depth``, decoder, gate) on ``batch`` images."""
    config = model.config
    channels = model.backbone.out_channels
    total = backbone_flops(model, height, width) + pixel_decoder_flops(config, channels, height, width, depth)
    total += decoder_flops(config, height, width) + _gate_flops(model)
    return batch * total / 1e9


def all_exits_gflops(model, height: int, width: int, exits, batch: int = 1) -> float:
    """GFLOPs of :meth:`forward_all_exits` (and of the forward of :meth:`forward_exits`, which
    computes the same): backbone, encoder (deepest exit) and FPN laterals once; the rest of
    the FPN and the decoder per exit."""
    config = model.config
    channels = model.backbone.out_channels
    laterals = lateral_flops(config, channels, height, width)
    total = backbone_flops(model, height, width) + input_projection_flops(config, channels, height, width)
    total += round(encoder_gflops(config, height, width, max(exits)) * 1e9) + _gate_flops(model) + laterals
    per_exit = fpn_flops(config, channels, height, width) - laterals + decoder_flops(config, height, width)
    total += len(exits) * per_exit
    return batch * total / 1e9
