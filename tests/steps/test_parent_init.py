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


# ----------------------------------------------------------------------------- transformers (Hugging Face) checkpoints
# transformers' pixel decoder reads res3-res5 with 32 GroupNorm groups (the demo reads res2 too).
_HF = ["parent.init.mode=huggingface", "model.pixel_decoder.num_groups=32", "model.pixel_decoder.in_features=[res3,res4,res5]"]


def _synthetic_names() -> tuple[str, ...]:
    from ecom2f.data.synthetic import categories

    return tuple(category["name"] for category in sorted(categories(), key=lambda c: c["id"]))


def _hf_folder(path, model_config, names):
    """A transformers checkpoint folder of a random model of ``model_config`` (export_huggingface
    writes what save_pretrained writes; tests/modeling/test_huggingface.py checks transformers loads it)."""
    from ecom2f.modeling.class_info import ClassInfo
    from ecom2f.modeling.huggingface_checkpoint import GATE_FILE, SIDECAR_FILE, export_huggingface

    torch.manual_seed(21)
    model = build_model(model_config)
    export_huggingface(model, path, ClassInfo(tuple(names), tuple(range(model_config.num_things))))
    for ecom2f_file in (SIDECAR_FILE, GATE_FILE):  # as the Hub serves it: transformers' files only
        (path / ecom2f_file).unlink()
    return model


def _hf_config(tmp_path, data_root, folder, *overrides):
    # data.synthetic off: the names are compared with the dataset, which must exist before the check.
    return tiny_config(data_root, tmp_path / "runs", *_HF, f"parent.init.huggingface_checkpoint={folder}",
                       "data.synthetic=null", *overrides)


def test_huggingface_checkpoint_passes_preflight_and_initialises_every_weight(tmp_path, tiny_data_root):
    base = _hf_config(tmp_path, tiny_data_root, tmp_path / "hf")
    released = _hf_folder(tmp_path / "hf", base.model, _synthetic_names())
    check_parent_init(base)
    torch.manual_seed(3)
    model = build_model(base.model)
    initialize_parent(model, base)
    ours, theirs = model.state_dict(), released.state_dict()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours if not key.startswith("gate."))
    assert not torch.equal(ours["gate.head.weight"], theirs["gate.head.weight"])  # no gate in transformers' files


def test_huggingface_checkpoint_of_another_architecture_lists_the_overrides(tmp_path, tiny_data_root):
    base = _hf_config(tmp_path, tiny_data_root, tmp_path / "hf")
    other = base.model.model_copy(update={"num_classes": 12, "decoder": base.model.decoder.model_copy(
        update={"num_queries": 20})})
    _hf_folder(tmp_path / "hf", other, [f"c{i}" for i in range(12)])
    # Classes ecom2f does not recognise: their thing/stuff split is the model section's (num_things 7).
    with pytest.raises(ValueError, match=r"(?s)another architecture.*decoder.num_queries: checkpoint 20 vs model 8\n"
                                         r"  num_classes: checkpoint 12 vs model 10\n"
                                         r"  \(as overrides: model.decoder.num_queries=20 model.num_classes=12\)$"):
        check_parent_init(base)


def test_huggingface_classes_must_be_the_datasets_in_order(tmp_path, tiny_data_root):
    from ecom2f.errors import BadInputError

    names = list(_synthetic_names())
    names[7], names[8] = names[8], names[7]  # two stuff classes swapped
    base = _hf_config(tmp_path, tiny_data_root, tmp_path / "hf")
    _hf_folder(tmp_path / "hf", base.model, names)
    with pytest.raises(BadInputError, match=rf"differ from data.train's \(2 of 10: class 7: checkpoint {names[7]!r} "
                                            rf"vs data.train {names[8]!r}; .*check_class_names=false"):
        check_parent_init(base)
    check_parent_init(_hf_config(tmp_path, tiny_data_root, tmp_path / "hf", "parent.init.check_class_names=false"))


def test_huggingface_folder_problems_are_named_before_training(tmp_path, tiny_data_root):
    from ecom2f.errors import MissingFileError

    with pytest.raises(MissingFileError, match="has no config.json: give the folder of a transformers Mask2Former"):
        check_parent_init(_hf_config(tmp_path, tiny_data_root, tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(MissingFileError, match="has config.json but no weights"):
        check_parent_init(_hf_config(tmp_path, tiny_data_root, tmp_path / "empty"))
    with pytest.raises(ConfigError, match="parent.init.mode 'huggingface' needs parent.init.huggingface_checkpoint"):
        tiny_config(tmp_path, tmp_path / "runs", "parent.init.mode=huggingface")


def test_huggingface_checkpoint_on_s3(tmp_path, tiny_data_root, s3_bucket):
    from ecom2f import storage

    local = tmp_path / "hf"
    base = _hf_config(tmp_path, tiny_data_root, f"{s3_bucket}/weights/hf")
    released = _hf_folder(local, base.model, _synthetic_names())
    storage.upload_dir(local, f"{s3_bucket}/weights/hf")
    check_parent_init(base)
    model = build_model(base.model)
    initialize_parent(model, base)
    assert torch.equal(model.decoder.class_embed.weight, released.decoder.class_embed.weight)
