"""A tiny run configuration and its synthetic data, shared by the step tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecom2f.config import load_config
from tests.conftest import REPO_ROOT

# The demo configuration, made smaller still so that a test step takes well under a second.
TINY_OVERRIDES = [
    "model.pixel_decoder.conv_dim=32",
    "model.pixel_decoder.mask_dim=32",
    "model.pixel_decoder.ffn_dim=64",
    "model.decoder.hidden_dim=32",
    "model.decoder.ffn_dim=64",
    "model.decoder.num_queries=8",
    "model.criterion.num_points=256",
    "data.image_size=64",
    "data.test_min_size=64",
    "data.test_max_size=64",
    "data.synthetic.num_train=8",
    "data.synthetic.num_val=4",
    "data.synthetic.image_size=64",
    "data.loader_workers=0",
    "solver.warmup_iters=0",
]


def tiny_config(data_root: Path, storage_root, *overrides: str):
    return load_config(
        REPO_ROOT / "configs" / "demo_cpu.yaml",
        [*TINY_OVERRIDES, f"data.root={data_root}", f"storage.root={storage_root}", *overrides],
    )


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory) -> Path:
    from ecom2f.steps.datasets import ensure_synthetic_data

    root = tmp_path_factory.mktemp("datasets")
    ensure_synthetic_data(tiny_config(root, root / "runs"))
    return root
