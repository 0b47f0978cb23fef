"""A small model for tests: ResNet-18, 64 channels, 16 queries, 3 decoder layers."""

from __future__ import annotations

import torch

from ecom2f.modeling import ModelConfig, build_model


def tiny_config(**overrides) -> ModelConfig:
    base = {
        "backbone": {"name": "resnet18"},
        "pixel_decoder": {"conv_dim": 64, "mask_dim": 64, "heads": 4, "ffn_dim": 128},
        "decoder": {"hidden_dim": 64, "num_queries": 16, "layers": 3, "heads": 4, "ffn_dim": 128},
    }
    base.update(overrides)
    return ModelConfig.model_validate(base)


def tiny_model(seed: int = 0, **overrides):
    """A tiny model whose deformable-attention offsets/weights are non-zero (the default init
    leaves them at zero, which would hide layout bugs)."""
    torch.manual_seed(seed)
    model = build_model(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for layer in model.pixel_decoder.encoder.layers:
            layer.self_attn.sampling_offsets.weight.normal_(0, 0.1)
            layer.self_attn.attention_weights.weight.normal_(0, 0.1)
    return model
