"""Step 1's starting weights: a released Mask2Former checkpoint or ImageNet backbone weights."""

from __future__ import annotations

import pytest
import torch
import torchvision

from ecom2f.config import ConfigError, config_from_dict
from ecom2f.modeling import build_model
from ecom2f.steps.parent_init import check_parent_init, initialize_parent
from tests.steps.conftest import tiny_config


def _with_mask2former_init(config, reference) -> dict:
    tree = config.model_dump(mode="json")
    tree["parent"]["init"] = {
        "mode": "mask2former",
        "mask2former_checkpoint": str(reference / "tiny_ref.state_dict.pt"),
        "mask2former_config": str(reference / "tiny_ref.config.yaml"),
    }
    return tree


def test_mask2former_checkpoint_initialises_every_weight(shared_dir, tmp_path):
    reference = shared_dir / "reference" / "mask2former"
    if not (reference / "tiny_ref.state_dict.pt").exists():
        pytest.skip(f"no Mask2Former reference checkpoint under {reference}")
    from ecom2f.checkpoint import import_mask2former
    from ecom2f.modeling.d2_config import model_config_from_d2

    released = model_config_from_d2(reference / "tiny_ref.config.yaml")
    tree = _with_mask2former_init(tiny_config(tmp_path, tmp_path / "runs"), reference)
    tree["model"] = released.model_dump(mode="json")
    tree["depth"]["exits"] = tree["evaluation"]["depths"] = None
    config = config_from_dict(tree)
    check_parent_init(config)

    torch.manual_seed(123)
    model = build_model(config.model)
    initialize_parent(model, config)
    expected = import_mask2former(reference / "tiny_ref.state_dict.pt", reference / "tiny_ref.config.yaml")
    ours, theirs = model.state_dict(), expected.state_dict()
    for key, value in theirs.items():
        if not key.startswith("gate."):
            assert torch.equal(ours[key], value), key


def test_mask2former_of_another_architecture_is_refused_before_training(shared_dir, tmp_path):
    reference = shared_dir / "reference" / "mask2former"
    if not (reference / "tiny_ref.config.yaml").exists():
        pytest.skip(f"no Mask2Former reference config under {reference}")
    config = config_from_dict(_with_mask2former_init(tiny_config(tmp_path, tmp_path / "runs"), reference))
    with pytest.raises(ValueError, match=r"another architecture.*\n  pixel_decoder.conv_dim: checkpoint 64 vs model 32"):
        check_parent_init(config)


def test_backbone_weights_are_loaded(tmp_path):
    torch.manual_seed(5)
    weights = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(weights, path)
    config = tiny_config(tmp_path, tmp_path / "runs", "parent.init.mode=backbone", f"model.backbone.weights={path}")
    check_parent_init(config)
    model = build_model(config.model)
    loaded = dict(model.backbone.named_parameters())
    conv1 = next(value for name, value in loaded.items() if name.endswith("conv1.weight") and value.shape[1] == 3)
    assert torch.equal(conv1, weights["conv1.weight"])

    missing = tiny_config(tmp_path, tmp_path / "runs", "parent.init.mode=backbone",
                          f"model.backbone.weights={tmp_path / 'absent.pth'}")
    with pytest.raises(FileNotFoundError, match="absent.pth' does not exist"):
        check_parent_init(missing)
    with pytest.raises(ConfigError, match="parent.init.mode is 'scratch' but model.backbone.weights is"):
        tiny_config(tmp_path, tmp_path / "runs", f"model.backbone.weights={path}")
