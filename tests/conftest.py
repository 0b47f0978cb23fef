"""Shared test fixtures and markers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (the developers' machines and CI); absent elsewhere.
SHARED_DIR = Path(os.environ.get("ECOM2F_SHARED_DIR", REPO_ROOT.parent / "shared"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is available on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED_DIR
