"""transformers' Mask2Former built from a tiny config in the test (no network), with weights
moved off their initialisation so that a mapping mistake changes the outputs."""

from __future__ import annotations

import pytest
import torch

STAGES = ["stage1", "stage2", "stage3", "stage4"]


def transformers_mask2former():
    """The transformers module, or a skip when the dev dependency is missing."""
    return pytest.importorskip("transformers", reason="transformers (a dev dependency) builds the reference model")


def backbone_config(kind: str, window_size: int = 7):
    transformers = transformers_mask2former()
    if kind == "swin_t":
        return transformers.SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                                       window_size=window_size, drop_path_rate=0.0, out_features=STAGES)
    if kind == "resnet18":
        return transformers.ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                                         layer_type="basic", out_features=STAGES)
    raise ValueError(kind)


def tiny_hf_model(kind: str = "resnet18", names=None, seed: int = 0, pre_norm: bool = False,
                  encoder_ffn: int = 64, num_queries: int = 6):
    """A random ``Mask2FormerForUniversalSegmentation``: 32 channels, 2 encoder layers, 3 decoder layers."""
    transformers = transformers_mask2former()
    names = names or [f"class_{i}" for i in range(7)]
    config = transformers.Mask2FormerConfig(
        backbone_config=backbone_config(kind), feature_size=32, mask_feature_size=32, hidden_dim=32,
        encoder_feedforward_dim=encoder_ffn, dim_feedforward=64, encoder_layers=2, decoder_layers=4,
        num_attention_heads=4, num_queries=num_queries, pre_norm=pre_norm,
        id2label=dict(enumerate(names)), label2id={name: i for i, name in enumerate(names)},
    )
    torch.manual_seed(seed)
    model = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                buffer.normal_(0.0, 0.1)
    return model


def relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Largest difference relative to the largest magnitude of ``reference``."""
    return float((reference - other).abs().max() / reference.abs().max())
