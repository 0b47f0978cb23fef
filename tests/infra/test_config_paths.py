"""Relative local paths of a config become absolute before a job ships it to Ray workers."""

from __future__ import annotations

import os

from ecom2f.config import load_config, with_absolute_local_paths
from tests.conftest import REPO_ROOT


def test_relative_local_paths_become_absolute_and_uris_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(
        REPO_ROOT / "configs" / "coco_panoptic_r50.yaml",
        ["storage.root=s3://bucket/runs", "data.root=./datasets", "model.backbone.weights=weights/R-50.pkl"],
    )
    resolved = with_absolute_local_paths(config)
    assert resolved.data.root == os.path.join(str(tmp_path), "datasets")
    assert resolved.model.backbone.weights == os.path.join(str(tmp_path), "weights", "R-50.pkl")
    assert resolved.storage.root == "s3://bucket/runs"
    assert resolved.solver == config.solver and config.data.root == "./datasets"  # the original is unchanged
