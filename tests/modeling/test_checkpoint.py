"""Importer/exporter behaviour that does not need the reference data."""

from __future__ import annotations

import pickle

import pytest
import torch

from ecom2f.modeling.d2_config import model_config_from_d2
from ecom2f.modeling.mask2former_checkpoint import (
    CheckpointMismatchError,
    ecom2f_to_mask2former,
    export_mask2former,
    import_mask2former,
    load_into,
    load_mask2former_state_dict,
    mask2former_to_ecom2f,
)

TINY_YAML = """
MODEL:
  META_ARCHITECTURE: MaskFormer
  BACKBONE: {NAME: build_resnet_backbone, FREEZE_AT: 0}
  RESNETS: {DEPTH: 18, RES2_OUT_CHANNELS: 64, NORM: FrozenBN, STRIDE_IN_1X1: false}
  SEM_SEG_HEAD: {NAME: MaskFormerHead, NUM_CLASSES: 133, CONVS_DIM: 64, MASK_DIM: 64, NORM: GN,
                 PIXEL_DECODER_NAME: MSDeformAttnPixelDecoder, TRANSFORMER_ENC_LAYERS: 6}
  MASK_FORMER: {HIDDEN_DIM: 64, DIM_FEEDFORWARD: 128, NUM_OBJECT_QUERIES: 16, DEC_LAYERS: 4, NHEADS: 4,
                TEST: {PANOPTIC_ON: true, INSTANCE_ON: true, SEMANTIC_ON: true, OBJECT_MASK_THRESHOLD: 0.7}}
"""


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML)
    return path


def test_key_renames_for_resnet_and_gate():
    cases = {
        "backbone.stem.conv1.weight": "backbone.conv1.weight",
        "backbone.stem.conv1.norm.running_var": "backbone.bn1.running_var",
        "backbone.res2.0.conv3.norm.bias": "backbone.layer1.0.bn3.bias",
        "backbone.res5.0.shortcut.weight": "backbone.layer4.0.downsample.0.weight",
        "backbone.res3.0.shortcut.norm.weight": "backbone.layer2.0.downsample.1.weight",
        "sem_seg_head.pixel_decoder.transformer.encoder.gt.head.weight": "gate.head.weight",
        "sem_seg_head.pixel_decoder.adapter_1.norm.bias": "pixel_decoder.adapter_1.norm.bias",
        "sem_seg_head.predictor.static_query.weight": "decoder.query_feat.weight",
    }
    for theirs, ours in cases.items():
        assert mask2former_to_ecom2f(theirs, "resnet50") == ours
        if "static_query" not in theirs:
            assert ecom2f_to_mask2former(ours, "resnet50") == theirs
    assert mask2former_to_ecom2f("backbone.layers.0.downsample.norm.weight", "swin_t") == "backbone.layers.1.downsample.norm.weight"
    assert ecom2f_to_mask2former("backbone.layers.1.downsample.norm.weight", "swin_t") == "backbone.layers.0.downsample.norm.weight"
    assert mask2former_to_ecom2f("criterion.empty_weight", "resnet50") is None


def test_d2_config_translation(tiny_yaml, tmp_path):
    config = model_config_from_d2(tiny_yaml)
    assert config.backbone.name == "resnet18"
    assert config.decoder.layers == 3 and config.decoder.heads == 4 and config.pixel_decoder.heads == 4
    assert config.test.object_mask_threshold == 0.7 and config.num_things == 80
    assert config.criterion.class_weight == 2.0 and config.criterion.num_points == 12544
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: tiny.yaml\nMODEL:\n  MASK_FORMER:\n    NUM_OBJECT_QUERIES: 8\n")
    merged = model_config_from_d2(child)
    assert merged.decoder.num_queries == 8 and merged.decoder.hidden_dim == 64
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_YAML.replace("NORM: FrozenBN", "NORM: SyncBN"))
    with pytest.raises(ValueError, match="MODEL.RESNETS.NORM = 'SyncBN'"):
        model_config_from_d2(bad)


def test_export_import_round_trip_reproduces_outputs(tiny_yaml, tmp_path):
    model = import_mask2former(None, tiny_yaml)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    path = tmp_path / "out" / "model_final.pth"
    exported = export_mask2former(model, path)
    assert exported["criterion.empty_weight"][-1].item() == pytest.approx(0.1) and path.is_file()
    assert not list(path.parent.glob("*.tmp"))
    loaded = import_mask2former(path, tiny_yaml, require_gate=True)
    pixels = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = model.forward_raw(pixels, depth="gate"), loaded.forward_raw(pixels, depth="gate")
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["depths"], b["depths"])


def test_pkl_with_numpy_arrays_and_wrapper(tiny_yaml, tmp_path):
    model = import_mask2former(None, tiny_yaml)
    state = {key: value.numpy() for key, value in export_mask2former(model).items()}
    path = tmp_path / "model.pkl"
    with path.open("wb") as handle:
        pickle.dump({"model": state, "__author__": "test"}, handle)
    loaded = load_mask2former_state_dict(path)
    assert set(loaded) == set(state) and all(torch.is_tensor(v) for v in loaded.values())
    import_mask2former(path, tiny_yaml)


def test_strict_errors_list_the_keys(tiny_yaml):
    model = import_mask2former(None, tiny_yaml)
    good = export_mask2former(model)
    extra = dict(good, **{"sem_seg_head.predictor.surprise.weight": torch.zeros(1)})
    with pytest.raises(CheckpointMismatchError, match="surprise"):
        load_into(model, extra)
    missing = {k: v for k, v in good.items() if k != "sem_seg_head.pixel_decoder.mask_features.bias"}
    with pytest.raises(CheckpointMismatchError, match=r"pixel_decoder\.mask_features\.bias"):
        load_into(model, missing)
    wrong = dict(good, **{"sem_seg_head.predictor.class_embed.bias": torch.zeros(7)})
    with pytest.raises(CheckpointMismatchError, match=r"class_embed\.bias: checkpoint \(7,\)"):
        load_into(model, wrong)
    no_gate = {k: v for k, v in good.items() if ".gt." not in k}
    assert load_into(model, no_gate) == ["gate.head.bias", "gate.head.weight"]
    with pytest.raises(CheckpointMismatchError, match="gate.head.weight"):
        load_into(model, no_gate, require_gate=True)


def test_gate_keys_load_into_the_gate(tiny_yaml):
    model = import_mask2former(None, tiny_yaml)
    state = export_mask2former(model)
    weight = torch.randn(5, 64)
    state["sem_seg_head.pixel_decoder.transformer.encoder.gt.head.weight"] = weight
    load_into(model, state, require_gate=True)
    assert torch.equal(model.gate.head.weight, weight)


def test_missing_files_are_clear(tmp_path, tiny_yaml):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mask2former_state_dict(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        import_mask2former(None, tmp_path / "nope.yaml")


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "resnet101", "swin_t", "swin_s", "swin_b"])
def test_model_config_written_as_detectron2_yaml_reads_back_the_same(backbone, tmp_path):
    from ecom2f.modeling import ModelConfig
    from ecom2f.modeling.d2_config import save_d2_yaml

    config = ModelConfig(
        backbone={"name": backbone, "swin_window_size": 12 if backbone == "swin_b" else 7, "freeze_at": 2,
                  "stride_in_1x1": backbone == "resnet50", "drop_path_rate": 0.3 if "swin" in backbone else 0.0},
        num_classes=19, num_things=8, pixel_mean=[1.0, 2.0, 3.0], size_divisibility=64,
        decoder={"pre_norm": True, "num_queries": 50, "layers": 4},
        pixel_decoder={"encoder_layers": 4, "common_stride": 8},
        test={"panoptic_on": False, "object_mask_threshold": 0.25, "detections_per_image": 7},
        criterion={"class_weight": 1.5, "num_points": 99, "deep_supervision": False},
        gate={"exits": [2, 3, 4]},
    )
    save_d2_yaml(config, tmp_path / "model.yaml")
    assert model_config_from_d2(tmp_path / "model.yaml", num_things=8) == config


def test_a_model_mask2former_cannot_describe_is_refused_by_field():
    from ecom2f.modeling import ModelConfig
    from ecom2f.modeling.d2_config import model_config_to_d2

    config = ModelConfig(pixel_decoder={"ffn_dim": 128, "points": 2, "num_groups": 8, "conv_dim": 64, "heads": 4})
    with pytest.raises(ValueError, match=r"pixel_decoder.points = 2 \(Mask2Former: 4\); pixel_decoder.ffn_dim = 128 "
                                         r"\(Mask2Former: 1024\); pixel_decoder.num_groups = 8 \(Mask2Former: 32\); "
                                         r"pixel_decoder.heads 4 != decoder.heads 8"):
        model_config_to_d2(config)
