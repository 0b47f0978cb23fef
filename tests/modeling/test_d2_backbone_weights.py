"""detectron2's ``R-50.pkl`` and Mask2Former's Swin ``.pkl`` (written by tests/modeling/d2_files.py
as their converters write them) load into our backbones bit for bit."""

from __future__ import annotations

import json
import pickle
import re

import pytest
import torch

from ecom2f.config.model import BackboneConfig
from ecom2f.modeling.backbone import build_backbone, load_backbone_weights
from tests.modeling.d2_files import (
    d2_resnet_state,
    official_swin_state,
    official_window_index,
    timm_swin_t,
    torchvision_resnet,
    write_d2_pickle,
    write_d2_resnet_pkl,
    write_m2f_swin_pkl,
)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def r50_source():
    return torchvision_resnet("resnet50")


@pytest.fixture(scope="module")
def r50_pkl(tmp_path_factory, r50_source):
    path = tmp_path_factory.mktemp("weights") / "R-50.pkl"
    write_d2_resnet_pkl(path, r50_source)
    return path


@pytest.fixture(scope="module")
def swin_source():
    return timm_swin_t()


@pytest.fixture(scope="module")
def swin_pkl(tmp_path_factory, swin_source):
    path = tmp_path_factory.mktemp("weights") / "swin_tiny_patch4_window7_224.pkl"
    write_m2f_swin_pkl(path, swin_source)
    return path


def _mask2former_backbone(shared_dir, name: str) -> dict[str, tuple]:
    path = shared_dir / "reference" / "mask2former" / f"mask2former_{name}_coco_panoptic.params.json"
    if not path.exists():
        pytest.skip(f"no Mask2Former parameter listing at {path}")
    entries = json.loads(path.read_text())["state_dict"]
    return {key[len("backbone."):]: tuple(shape) for key, shape, *_ in entries if key.startswith("backbone.")}


# ----------------------------------------------------------------------------- the files are the real formats
def test_r50_pkl_has_the_backbone_keys_of_mask2formers_r50(shared_dir, r50_pkl):
    theirs = _mask2former_backbone(shared_dir, "r50")
    with open(r50_pkl, "rb") as handle:
        payload = pickle.load(handle)  # our own test file: a plain load is fine here
    assert payload["__author__"] == "torchvision" and payload["matching_heuristics"] is True
    ours = {key: value.shape for key, value in payload["model"].items()}
    assert {"stem.conv1.weight", "stem.conv1.norm.running_var", "stem.fc.weight", "res2.0.shortcut.norm.bias"} <= set(ours)
    assert payload["model"]["res2.0.conv1.norm.num_batches_tracked"].shape == ()
    # ImageNet extras that Mask2Former's FrozenBN model has no entry for.
    backbone = {key: shape for key, shape in ours.items() if not key.startswith("stem.fc.") and "num_batches_tracked" not in key}
    assert backbone == theirs


def test_swin_pkl_has_the_backbone_keys_of_mask2formers_swin_t(shared_dir, swin_pkl):
    theirs = _mask2former_backbone(shared_dir, "swint")
    with open(swin_pkl, "rb") as handle:
        payload = pickle.load(handle)
    state = payload["model"]
    assert all(torch.is_tensor(value) for value in state.values())
    assert tuple(state["layers.0.blocks.1.attn_mask"].shape) == (64, 49, 49)
    assert {"head.weight", "norm.weight", "layers.2.downsample.reduction.weight"} <= set(state)
    assert "layers.3.downsample.reduction.weight" not in state
    extras = ("head.", "norm.")
    backbone = {
        key: tuple(value.shape) for key, value in state.items() if not key.startswith(extras) and "attn_mask" not in key
    }
    # D2SwinTransformer's per-output norms are not in ImageNet weights.
    assert backbone == {key: shape for key, shape in theirs.items() if not re.match(r"norm\d\.", key)}


# ----------------------------------------------------------------------------- loading
def test_r50_pkl_loads_bit_exact_and_gives_torchvision_features(r50_pkl, r50_source):
    backbone = build_backbone(BackboneConfig(name="resnet50", weights=str(r50_pkl))).eval()
    ours = backbone.state_dict()
    source = {k: v for k, v in r50_source.state_dict().items() if not k.startswith("fc.") and "num_batches" not in k}
    assert set(ours) == set(source)
    for key, value in source.items():
        assert ours[key].dtype == torch.float32 and torch.equal(ours[key], value), key

    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = backbone(x)
        y = r50_source.maxpool(r50_source.relu(r50_source.bn1(r50_source.conv1(x))))
        for name, stage in zip(("res2", "res3", "res4", "res5"), (r50_source.layer1, r50_source.layer2,
                                                                   r50_source.layer3, r50_source.layer4)):
            y = stage(y)
            scale = y.abs().max().item()
            assert scale > 1e-2  # non-degenerate features
            torch.testing.assert_close(out[name], y, rtol=1e-4, atol=1e-5 * scale)


def test_swin_pkl_loads_bit_exact(swin_pkl, swin_source):
    backbone = build_backbone(BackboneConfig(name="swin_t", weights=str(swin_pkl)))
    ours = backbone.state_dict()
    source = {k: v for k, v in swin_source.state_dict().items() if not k.startswith(("head.", "norm."))}
    assert set(ours) - set(source) == {f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias")}
    for key, value in source.items():
        assert torch.equal(ours[key], value), key
    # The downsample of the file's stage 0 (96*4 -> 192) is timm's stage 1 merging.
    assert tuple(ours["layers.1.downsample.reduction.weight"].shape) == (192, 384)


def test_a_timm_state_dict_still_loads(tmp_path, swin_source):
    path = tmp_path / "swin_t_timm.pth"
    torch.save(swin_source.state_dict(), path)
    backbone = build_backbone(BackboneConfig(name="swin_t", weights=str(path)))
    assert torch.equal(backbone.layers[3].downsample.reduction.weight, swin_source.layers[3].downsample.reduction.weight)


def test_other_dtypes_are_cast_to_the_models(tmp_path):
    source = torchvision_resnet("resnet18", seed=3)
    state = {key: value.astype("float16") if value.dtype.kind == "f" else value
             for key, value in d2_resnet_state(source).items()}
    path = tmp_path / "r18_half.pkl"
    write_d2_pickle(path, state, "torchvision")
    backbone = build_backbone(BackboneConfig(name="resnet18", weights=str(path)))
    expected = torch.from_numpy(state["res3.0.conv1.weight"]).float()
    assert backbone.layer2[0].conv1.weight.dtype == torch.float32
    assert torch.equal(backbone.layer2[0].conv1.weight, expected)


def test_a_wrong_window_index_is_refused(tmp_path, swin_source):
    state = official_swin_state(swin_source)
    state["layers.1.blocks.0.attn.relative_position_index"] = official_window_index().flip(0)
    path = tmp_path / "swin_bad_index.pkl"
    write_d2_pickle(path, state, "third_party")
    backbone = build_backbone(BackboneConfig(name="swin_t"))
    with pytest.raises(ValueError, match=r"window index \(1\): \['layers\.1\.blocks\.0\.attn\.relative_position_index"):
        load_backbone_weights(backbone, path)


def test_errors_name_the_file_and_the_keys_in_the_files_names(tmp_path):
    state = d2_resnet_state(torchvision_resnet("resnet18", seed=4))
    del state["res4.1.conv2.weight"]
    state["res5.0.conv9.weight"] = state.pop("res5.0.conv1.weight")
    state["stem.conv1.weight"] = state["stem.conv1.weight"][:, :, :5, :5]
    path = tmp_path / "r18_broken.pkl"
    write_d2_pickle(path, state, "torchvision")
    backbone = build_backbone(BackboneConfig(name="resnet18"))
    with pytest.raises(ValueError) as raised:
        load_backbone_weights(backbone, path)
    message = str(raised.value)
    assert str(path) in message and "detectron2 names" in message
    assert "missing (2): ['res4.1.conv2.weight', 'res5.0.conv1.weight']" in message
    assert "unexpected (1): ['res5.0.conv9.weight']" in message
    assert "shape/dtype (1): ['stem.conv1.weight: file (64, 3, 5, 5) torch.float32 vs model (64, 3, 7, 7)" in message
