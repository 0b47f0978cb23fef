"""Synthetic data generated for a run: once, and again when ``data.synthetic`` changes."""

from __future__ import annotations

import json
import os

from ecom2f.data.synthetic import GENERATOR_VERSION
from ecom2f.steps.datasets import ensure_synthetic_data
from tests.steps.conftest import tiny_config


def _split(root, split: str) -> dict:
    with open(root / "synthetic" / split / "panoptic.json") as f:
        return json.load(f)


def test_synthetic_splits_are_reused_and_regenerated_when_their_settings_change(tmp_path):
    sizes = ("data.synthetic.image_size=32", "data.synthetic.num_val=2")
    ensure_synthetic_data(tiny_config(tmp_path, tmp_path / "runs", "data.synthetic.num_train=3", *sizes))
    assert len(_split(tmp_path, "train")["images"]) == 3 and len(_split(tmp_path, "val")["images"]) == 2
    val_json = tmp_path / "synthetic" / "val" / "panoptic.json"
    val_written = os.stat(val_json).st_mtime_ns

    # Same settings: nothing is written again.
    train_json = tmp_path / "synthetic" / "train" / "panoptic.json"
    train_written = os.stat(train_json).st_mtime_ns
    ensure_synthetic_data(tiny_config(tmp_path, tmp_path / "runs", "data.synthetic.num_train=3", *sizes))
    assert os.stat(train_json).st_mtime_ns == train_written

    # More training images asked for: the train split is rebuilt (no staging folder left), val is kept.
    ensure_synthetic_data(tiny_config(tmp_path, tmp_path / "runs", "data.synthetic.num_train=5", *sizes))
    train = _split(tmp_path, "train")
    assert len(train["images"]) == 5 and train["info"]["num_images"] == 5
    assert len(list((tmp_path / "synthetic" / "train" / "images").iterdir())) == 5
    assert os.stat(val_json).st_mtime_ns == val_written
    assert sorted(os.listdir(tmp_path / "synthetic")) == ["train", "val"]

    # A split cut off before its panoptic.json was written is generated again.
    os.remove(val_json)
    ensure_synthetic_data(tiny_config(tmp_path, tmp_path / "runs", "data.synthetic.num_train=5", *sizes))
    assert len(_split(tmp_path, "val")["images"]) == 2

    # Another scene mix, or a split drawn by the first generator (graded scenes, no version
    # recorded) with the same count, size and seed: drawn again.
    ensure_synthetic_data(tiny_config(tmp_path, tmp_path / "runs", "data.synthetic.num_train=5",
                                      "data.synthetic.cluttered_fraction=1.0", *sizes))
    assert _split(tmp_path, "train")["info"]["cluttered_fraction"] == 1.0
    document = _split(tmp_path, "val")
    for key in ("generator_version", "scenes", "cluttered_fraction"):
        document["info"].pop(key)
    val_json.write_text(json.dumps(document))
    ensure_synthetic_data(tiny_config(tmp_path, tmp_path / "runs", "data.synthetic.num_train=5", *sizes))
    assert _split(tmp_path, "val")["info"]["generator_version"] == GENERATOR_VERSION


def test_a_dataset_given_as_a_spec_in_the_config_loads(tiny_data_root):
    """data.val / depth.dataset may be an explicit spec instead of a registered name."""
    from ecom2f.steps.depth.stages import depth_dataset
    from ecom2f.steps.evaluate.stages import validation_dataset

    split = tiny_data_root / "synthetic" / "val"
    spec = (f"{{format: coco_panoptic, image_root: {split / 'images'}, json: {split / 'panoptic.json'}, "
            f"png_root: {split / 'panoptic'}}}")
    config = tiny_config(tiny_data_root, tiny_data_root / "runs", f"data.val={spec}", f"depth.dataset={spec}")
    by_name = validation_dataset(tiny_config(tiny_data_root, tiny_data_root / "runs"))
    for dataset in (validation_dataset(config), depth_dataset(config)):
        assert len(dataset) == len(by_name) == 4
        assert dataset[0]["image_id"] == by_name[0]["image_id"]
        assert (dataset[0]["id_map"] == by_name[0]["id_map"]).all()
