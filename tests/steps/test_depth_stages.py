"""Step 2's three stages apart (no Ray): what the model stage ships, and rows that fail on the way.

With 64 queries, one exit's mask logits ``[Q, h/4, w/4]`` float32 are 16 bytes per image pixel;
the model stage must ship small integer maps instead (about 2 bytes per pixel and exit).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from ecom2f import storage
from ecom2f.modeling import build_model
from ecom2f.steps.depth.stages import AllExitsEvaluator
from ecom2f.steps.packing import unpack
from tests.steps.conftest import tiny_config

QUERIES = 64
BYTES_PER_PIXEL_AND_EXIT = 4  # panoptic ids + semantic argmax (1 byte each here) and room to spare


@pytest.fixture(scope="module")
def evaluator(tiny_data_root, tmp_path_factory):
    config = tiny_config(tiny_data_root, tmp_path_factory.mktemp("runs"), f"model.decoder.num_queries={QUERIES}",
                         "model.test.object_mask_threshold=0.0", "model.test.overlap_threshold=0.0",
                         "depth.gate_feature_grid=2", "gate.grid_sizes=[2]")
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(build_model(config.model).state_dict(), buffer)
    weights_uri = storage.join(config.storage.layout().parent, "model_final.pth")
    storage.write_bytes(weights_uri, buffer.getvalue())
    return AllExitsEvaluator(config.model_dump(mode="json"), weights_uri, device="cpu")


def _float_arrays(value):
    if isinstance(value, np.ndarray):
        return [value] if value.dtype.kind == "f" else []
    if isinstance(value, dict):
        return [a for v in value.values() for a in _float_arrays(v)]
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in _float_arrays(v)]
    return []


def test_the_model_stage_ships_no_mask_logits(evaluator):
    loaded = evaluator.loader({"index": np.array([0, 5])})
    shipped = evaluator.network(loaded)
    exits, config = evaluator.exits, evaluator.network.config
    channels, grid = config.model.pixel_decoder.conv_dim, config.depth.gate_feature_grid
    for i, index in enumerate([0, 5]):
        height, width = evaluator.dataset[index]["orig_size"]
        logits_bytes = QUERIES * (height // 4) * (width // 4) * 4
        bound = len(exits) * BYTES_PER_PIXEL_AND_EXIT * height * width + 4096
        assert bound < len(exits) * logits_bytes, "the bound would not tell logits from label maps"
        assert len(shipped["result"][i]) <= bound
        result = unpack(shipped["result"][i])
        for exit_ in result["exits"]:
            assert exit_["ids"].shape == exit_["semantic"].shape == (height, width)
            assert exit_["ids"].dtype == exit_["semantic"].dtype == np.uint8
        # Floats: only the pooled gate features, nothing per pixel.
        assert max(a.size for a in _float_arrays(result)) == channels * grid**2


def test_a_row_that_fails_to_load_reaches_the_job_as_an_error_row(evaluator):
    out = evaluator({"index": np.array([2, 1000])})  # the tiny set has 8 images
    assert out["error"][0] == ""
    assert out["error"][1].startswith("IndexError")
    assert np.isfinite(out["loss"][0]).all() and np.isnan(out["loss"][1]).all()
    assert out["index"].tolist() == [2, 1000] and out["image_id"][1] == -1
