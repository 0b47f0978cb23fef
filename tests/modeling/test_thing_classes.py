"""Which classes are things: a prefix (COCO) or any set (Cityscapes' 11..18), checked where set."""

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from ecom2f.config import load_config
from ecom2f.config.model import ModelConfig
from ecom2f.errors import BadInputError
from ecom2f.modeling.d2_config import model_config_from_d2
from ecom2f.steps.parent.init import check_model_fits_classes
from tests.conftest import REPO_ROOT


def test_things_default_to_the_leading_classes():
    assert ModelConfig(num_classes=5, num_things=2).thing_ids == (0, 1)
    assert ModelConfig(num_classes=19, num_things=8, thing_classes=list(range(11, 19))).thing_ids == tuple(range(11, 19))


@pytest.mark.parametrize(("things", "num_things", "message"), [
    ([12, 11], 2, "must be sorted and without repeats"),
    ([11, 11], 2, "must be sorted and without repeats"),
    ([18, 19], 2, r"thing_classes \[19\] are outside 0..18"),
    ([11, 12], 8, "lists 2 classes but num_things is 8; set num_things: 2"),
])
def test_bad_thing_classes_are_refused_with_the_fix(things, num_things, message):
    with pytest.raises(ValidationError, match=message):
        ModelConfig(num_classes=19, num_things=num_things, thing_classes=things)


def test_shipped_cityscapes_config_has_its_things_at_11_to_18():
    config = load_config(REPO_ROOT / "configs" / "cityscapes_panoptic_r50.yaml", ["model.backbone.weights=null", "parent.init.mode=scratch"])
    assert config.model.thing_ids == tuple(range(11, 19))
    coco = load_config(REPO_ROOT / "configs" / "coco_panoptic_r50.yaml", ["model.backbone.weights=null", "parent.init.mode=scratch"])
    assert coco.model.thing_ids == tuple(range(80))


def test_detectron2_configs_of_released_label_sets_know_their_things():
    def tree(classes):
        return {"MODEL": {"META_ARCHITECTURE": "MaskFormer", "SEM_SEG_HEAD": {"NUM_CLASSES": classes}}}

    assert model_config_from_d2(tree(19)).thing_ids == tuple(range(11, 19))
    assert model_config_from_d2(tree(133)).thing_ids == tuple(range(80))
    assert model_config_from_d2(tree(19), num_things=0).thing_ids == ()


def _metadata(names, things):
    return SimpleNamespace(class_names=names, thing_classes=things)


def test_training_data_must_put_its_things_where_the_model_does():
    config = load_config(REPO_ROOT / "configs" / "cityscapes_panoptic_r50.yaml", ["model.backbone.weights=null", "parent.init.mode=scratch"])
    names = [f"c{i}" for i in range(19)]
    check_model_fits_classes(config, _metadata(names, list(range(11, 19))))
    with pytest.raises(BadInputError, match=r"things at class ids \[0, 1, 2, 3, 4, 5, 6, 7\].*set model.num_things=8"):
        check_model_fits_classes(config, _metadata(names, list(range(8))))
    with pytest.raises(BadInputError, match="has 20 classes but model.num_classes is 19: set model.num_classes=20"):
        check_model_fits_classes(config, _metadata(names + ["extra"], list(range(11, 19))))
    coco = load_config(REPO_ROOT / "configs" / "coco_panoptic_r50.yaml", ["model.backbone.weights=null", "parent.init.mode=scratch"])
    with pytest.raises(BadInputError, match=r"set model.thing_classes=\[2, 3\] and model.num_things=2"):
        check_model_fits_classes(coco, _metadata([f"c{i}" for i in range(133)], [2, 3]))
