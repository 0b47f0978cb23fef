"""Which names and thing flags predictions carry when no COCO file names the classes."""

import json

from ecom2f import storage
from ecom2f.config import load_config
from ecom2f.steps.predict.categories import resolve_categories
from tests.conftest import REPO_ROOT


def _config(tmp_path, *overrides):
    return load_config(REPO_ROOT / "configs" / "demo_cpu.yaml",
                       [f"data.root={tmp_path / 'no-data'}", f"storage.root={tmp_path / 'runs'}", *overrides])


def test_a_converted_runs_class_names_are_used_with_its_things(tmp_path):
    config = _config(tmp_path, "model.num_things=2", "model.thing_classes=[3,4]")
    assert [c["isthing"] for c in resolve_categories(config)] == [0, 0, 0, 1, 1, 0, 0, 0, 0, 0]
    names = [f"name{i}" for i in range(10)]
    storage.write_text(config.storage.layout().parent_classes, json.dumps({"names": names, "thing_ids": [3, 4]}))
    categories = resolve_categories(config)
    assert [c["name"] for c in categories] == names and [c["id"] for c in categories] == list(range(10))
    assert [c["id"] for c in categories if c["isthing"]] == [3, 4]
