"""Step 1's starting weights: a released Mask2Former checkpoint or ImageNet backbone weights."""

from __future__ import annotations

import pytest
import torch
import torchvision

from ecom2f.config import ConfigError, config_from_dict
from ecom2f.modeling import build_model
from ecom2f.steps.parent.init import check_parent_init, initialize_parent
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
    from ecom2f.modeling.d2_config import model_config_from_d2
    from ecom2f.modeling.mask2former_checkpoint import import_mask2former

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


# ----------------------------------------------------------------------------- detectron2 / Mask2Former backbone files
@pytest.fixture(scope="module")
def r50_source():
    from tests.modeling.d2_files import torchvision_resnet

    return torchvision_resnet("resnet50", seed=7)


def _backbone_config(tmp_path, name: str, weights):
    return tiny_config(tmp_path, tmp_path / "runs", "parent.init.mode=backbone", f"model.backbone.name={name}",
                       f"model.backbone.weights={weights}")


def test_detectron2_r50_pkl_passes_preflight_and_loads_into_the_model(tmp_path, r50_source):
    from tests.modeling.d2_files import write_d2_resnet_pkl

    path = tmp_path / "R-50.pkl"
    write_d2_resnet_pkl(path, r50_source)
    config = _backbone_config(tmp_path, "resnet50", path)
    check_parent_init(config)
    model = build_model(config.model)  # what every worker does
    assert torch.equal(model.backbone.layer3[5].conv2.weight, r50_source.layer3[5].conv2.weight)
    assert torch.equal(model.backbone.layer2[0].downsample[1].running_var, r50_source.layer2[0].downsample[1].running_var)


def test_mask2former_swin_pkl_passes_preflight(tmp_path):
    from tests.modeling.d2_files import timm_swin_t, write_m2f_swin_pkl

    path = tmp_path / "swin_tiny_patch4_window7_224.pkl"
    write_m2f_swin_pkl(path, timm_swin_t(seed=2))
    check_parent_init(_backbone_config(tmp_path, "swin_t", path))
    other_window = tiny_config(tmp_path, tmp_path / "runs", "parent.init.mode=backbone", "model.backbone.name=swin_t",
                               "model.backbone.swin_window_size=12", f"model.backbone.weights={path}")
    with pytest.raises(ValueError, match=r"(?s)window7_224\.pkl' do not fit swin_t.*relative_position_bias_table: "
                                         r"file \(169, 3\) torch\.float32 vs model \(529, 3\).*window index \(12\)"):
        check_parent_init(other_window)


def _missing(state):
    del state["res4.3.conv2.weight"]
    return r"missing \(1\): \['res4\.3\.conv2\.weight'\]"


def _renamed(state):
    state["res3.0.shortcut.nrom.bias"] = state.pop("res3.0.shortcut.norm.bias")
    return r"missing \(1\): \['res3\.0\.shortcut\.norm\.bias'\]\n  unexpected \(1\): \['res3\.0\.shortcut\.nrom\.bias'\]"


def _wrong_shape(state):
    state["res5.2.conv3.weight"] = state["res5.2.conv3.weight"][:1024]
    return r"shape/dtype \(1\): \['res5\.2\.conv3\.weight: file \(1024, 512, 1, 1\) torch\.float32 vs model \(2048, 512, 1, 1\)"


@pytest.mark.parametrize("corrupt", [_missing, _renamed, _wrong_shape], ids=["missing", "renamed", "wrong_shape"])
def test_preflight_names_the_file_and_the_bad_keys(tmp_path, r50_source, corrupt):
    from tests.modeling.d2_files import d2_resnet_state, write_d2_pickle

    state = d2_resnet_state(r50_source)
    expected = corrupt(state)
    path = tmp_path / "R-50.pkl"
    write_d2_pickle(path, state, "torchvision")
    with pytest.raises(ValueError, match=rf"model\.backbone\.weights \(resnet50\): backbone weights '{path}' do not fit "
                                         rf"resnet50 \(closest reading: detectron2 names[^)]*\):\n  {expected}"):
        check_parent_init(_backbone_config(tmp_path, "resnet50", path))


def test_preflight_refuses_files_that_are_not_weights(tmp_path):
    import os
    import pickle

    text = tmp_path / "R-50.pkl"
    text.write_text("<html>404 Not Found</html>\n")
    with pytest.raises(ValueError, match=r"model\.backbone\.weights \(resnet50\): '.*R-50\.pkl' is not a readable pickle"):
        check_parent_init(_backbone_config(tmp_path, "resnet50", text))
    evil = tmp_path / "evil.pkl"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    evil.write_bytes(pickle.dumps({"model": {"w": Payload()}}))
    with pytest.raises(pickle.UnpicklingError, match=r"evil\.pkl' refers to (posix|os)\.system"):
        check_parent_init(_backbone_config(tmp_path, "resnet50", evil))
    assert not (tmp_path / "pwned").exists()


def test_preflight_wants_a_local_file_not_an_s3_uri(tmp_path):
    with pytest.raises(ValueError, match=r"'s3://bucket/R-50\.pkl' is an s3:// URI, but the model is built from a local file"):
        check_parent_init(_backbone_config(tmp_path, "resnet50", "s3://bucket/R-50.pkl"))
