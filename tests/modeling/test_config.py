from __future__ import annotations

import pytest
from pydantic import ValidationError

from ecom2f.config.model import ModelConfig


def test_defaults_are_mask2former_coco_panoptic_r50():
    config = ModelConfig()
    assert config.backbone.name == "resnet50" and config.num_classes == 133
    assert (config.pixel_decoder.conv_dim, config.pixel_decoder.encoder_layers, config.pixel_decoder.ffn_dim) == (256, 6, 1024)
    assert (config.decoder.layers, config.decoder.num_queries, config.decoder.ffn_dim) == (9, 100, 2048)
    assert config.gate.exits == [2, 3, 4, 5, 6]
    assert (config.test.object_mask_threshold, config.test.overlap_threshold) == (0.8, 0.8)
    assert config.size_divisibility == 32


@pytest.mark.parametrize(
    "data, message",
    [
        ({"backbone": {"name": "vgg16"}}, "resnet18"),
        ({"decoder": {"hidden": 3}}, "Extra inputs are not permitted"),
        ({"gate": {"exits": [3, 2]}}, "strictly increasing"),
        ({"gate": {"exits": [2, 7]}}, r"gate exits \[7\] exceed"),
        ({"pixel_decoder": {"conv_dim": 100}}, "divisible by heads"),
        ({"pixel_std": [1.0, 0.0, 1.0]}, "std > 0"),
    ],
)
def test_invalid_configs_say_what_is_wrong(data, message):
    with pytest.raises(ValidationError, match=message):
        ModelConfig.model_validate(data)
