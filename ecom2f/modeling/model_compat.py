"""Whether two model sections describe networks that take the same weights and inputs.

A checkpoint's own description (a detectron2 YAML, a transformers ``config.json``) is
compared with the run's ``model`` section before any weight is read: training settings
(loss weights, freezing, the gate) may differ, the network and its input normalisation may not.
"""

from __future__ import annotations

import math

from ecom2f.config.model import ModelConfig

__all__ = ["ARCHITECTURE_FIELDS", "architecture_differences", "as_overrides"]

ARCHITECTURE_FIELDS = (
    "backbone.name",
    "pixel_decoder.conv_dim",
    "pixel_decoder.mask_dim",
    "pixel_decoder.encoder_layers",
    "pixel_decoder.heads",
    "pixel_decoder.ffn_dim",
    "decoder.hidden_dim",
    "decoder.num_queries",
    "decoder.layers",
    "decoder.ffn_dim",
    "num_classes",
    "num_things",
    "backbone.swin_window_size",
    "backbone.stride_in_1x1",
    "pixel_decoder.points",
    "pixel_decoder.num_groups",
    "pixel_decoder.in_features",
    "pixel_decoder.common_stride",
    "decoder.heads",
    "decoder.pre_norm",
    "decoder.enforce_input_proj",
    "pixel_mean",
    "pixel_std",
)
# Normalisation constants pass through a division by 255 in transformers' files.
_TOLERANCE = 1e-4


def _field(config: ModelConfig, dotted: str):
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _same(a, b) -> bool:
    if isinstance(a, list) and a and isinstance(a[0], float):
        return len(a) == len(b) and all(math.isclose(x, y, rel_tol=_TOLERANCE) for x, y in zip(a, b))
    return a == b


def architecture_differences(source: ModelConfig, model: ModelConfig,
                             labels: tuple[str, str] = ("checkpoint", "model")) -> list[str]:
    """``"<field>: <labels[0]> <value> vs <labels[1]> <value>"`` for every field that differs."""
    return [
        f"{name}: {labels[0]} {_field(source, name)!r} vs {labels[1]} {_field(model, name)!r}"
        for name in ARCHITECTURE_FIELDS
        if not _same(_field(source, name), _field(model, name))
    ]


def as_overrides(source: ModelConfig, model: ModelConfig) -> list[str]:
    """The ``model.<field>=<value>`` overrides that give ``model`` the architecture of ``source``."""
    return [
        f"model.{name}={_field(source, name)}"
        for name in ARCHITECTURE_FIELDS
        if not _same(_field(source, name), _field(model, name))
    ]
