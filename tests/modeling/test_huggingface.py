"""transformers' Mask2Former checkpoints <-> ecom2f: equivalence of outputs, round trips, refusals.

The reference is transformers' own model, built here from a tiny random config (transformers
is a pinned dev dependency; nothing is downloaded). Outputs are compared at full depth within
1e-4 of the largest magnitude; conversions are compared bit for bit.
"""

from __future__ import annotations

import json

import pytest
import torch

from ecom2f.errors import BadInputError
from ecom2f.modeling.class_info import ClassInfo
from ecom2f.modeling.huggingface_checkpoint import (
    CONFIG_FILE,
    GATE_FILE,
    SIDECAR_FILE,
    HuggingFaceFolder,
    export_huggingface,
    hf_state_to_ecom2f,
    import_huggingface,
)
from ecom2f.modeling.huggingface_config import model_config_from_hf
from ecom2f.modeling.huggingface_keys import canonical_hf_key
from ecom2f.modeling.mask2former_checkpoint import CheckpointMismatchError
from tests.modeling.huggingface_tiny import relative_error, tiny_hf_model, transformers_mask2former

TOLERANCE = 1e-4


def _saved(model, folder):
    model.save_pretrained(folder)
    return folder


def _outputs(hf_model, ecom2f_model, pixels):
    with torch.no_grad():
        theirs = hf_model(pixels, output_auxiliary_logits=True)
        ours = ecom2f_model.forward_raw(pixels)
    return theirs, ours


def _assert_equivalent(theirs, ours):
    assert relative_error(theirs.class_queries_logits, ours["pred_logits"]) < TOLERANCE
    assert relative_error(theirs.masks_queries_logits, ours["pred_masks"]) < TOLERANCE
    assert len(theirs.auxiliary_logits) == len(ours["aux_outputs"])
    for aux_theirs, aux_ours in zip(theirs.auxiliary_logits, ours["aux_outputs"]):
        assert relative_error(aux_theirs["class_queries_logits"], aux_ours["pred_logits"]) < TOLERANCE
        assert relative_error(aux_theirs["masks_queries_logits"], aux_ours["pred_masks"]) < TOLERANCE


@pytest.fixture(scope="module")
def swin(tmp_path_factory):
    """transformers' Mask2Former with a Swin-T backbone, its save_pretrained folder, and ecom2f's import."""
    transformers_mask2former()
    hf_model = tiny_hf_model("swin_t", seed=1)
    folder = _saved(hf_model, tmp_path_factory.mktemp("hf") / "swin")
    model, classes, report = import_huggingface(folder, num_things=4)
    return hf_model, folder, model, classes, report


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    transformers_mask2former()
    hf_model = tiny_hf_model("resnet18", seed=2)
    folder = _saved(hf_model, tmp_path_factory.mktemp("hf") / "resnet")
    model, classes, report = import_huggingface(folder, num_things=4)
    return hf_model, folder, model, classes, report


# ----------------------------------------------------------------------------- equivalence
def test_swin_outputs_equal_transformers_where_maps_need_padding_and_shifted_windows(swin):
    """96 x 160 pixels: res5 is 3 x 5, smaller than the 7 x 7 window, so both models pad before the
    cyclic shift (transformers' SwinBackbone passes always_partition=True, as D2SwinTransformer does)."""
    hf_model, _, model, _, report = swin
    assert not report.initialised.keys() - {"gate.head.weight", "gate.head.bias"}
    pixels = torch.randn(1, 3, 96, 160, generator=torch.Generator().manual_seed(0))
    _assert_equivalent(*_outputs(hf_model, model, pixels))


@pytest.mark.parametrize("pre_norm", [False, True], ids=["post_norm", "pre_norm"])
def test_resnet_outputs_equal_transformers(tmp_path, pre_norm):
    hf_model = tiny_hf_model("resnet18", seed=3, pre_norm=pre_norm)
    model, _, _ = import_huggingface(_saved(hf_model, tmp_path / "hf"), num_things=4)
    assert model.config.backbone.name == "resnet18" and model.config.decoder.pre_norm is pre_norm
    pixels = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    _assert_equivalent(*_outputs(hf_model, model, pixels))


def test_transformers_ignores_the_pixel_mask_as_mask2former_ignores_padding(resnet):
    """Documented: transformers' image processor returns a pixel mask, but its model does not use it
    (the pixel decoder's padding mask is all zeros), exactly as Mask2Former never masks padding.
    So an image padded into a batch gives other outputs than alone, in all three models alike."""
    hf_model, _, model, _, _ = resnet
    pixels = torch.zeros(2, 3, 64, 96)
    pixels[0] = torch.randn(3, 64, 96, generator=torch.Generator().manual_seed(2))
    pixels[1, :, :32, :64] = torch.randn(3, 32, 64, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(2, 64, 96, dtype=torch.long)
    mask[0], mask[1, :32, :64] = 1, 1
    with torch.no_grad():
        masked, unmasked = hf_model(pixels, pixel_mask=mask), hf_model(pixels)
        alone = hf_model(pixels[1:, :, :32, :64])
    assert torch.equal(masked.class_queries_logits, unmasked.class_queries_logits)
    assert torch.equal(masked.masks_queries_logits, unmasked.masks_queries_logits)
    assert relative_error(alone.class_queries_logits, unmasked.class_queries_logits[1:]) > 1e-3
    theirs, ours = _outputs(hf_model, model, pixels)
    _assert_equivalent(theirs, ours)


# ----------------------------------------------------------------------------- export and round trips
def _randomise_gate(model, seed: int = 4):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.gate.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("fixture", ["swin", "resnet"])
def test_export_loads_in_transformers_and_round_trips_bit_exact(fixture, request, tmp_path):
    transformers = transformers_mask2former()
    hf_model, _, model, classes, _ = request.getfixturevalue(fixture)
    _randomise_gate(model)
    folder = tmp_path / "exported"
    report = export_huggingface(model, folder, classes)
    assert {"config.json", "model.safetensors", "preprocessor_config.json", SIDECAR_FILE, GATE_FILE} == {
        path.name for path in folder.iterdir()}
    assert report.ignored == {"gate.head.weight": f"ecom2f's gate: written beside, to {GATE_FILE}",
                              "gate.head.bias": f"ecom2f's gate: written beside, to {GATE_FILE}"}

    loaded, info = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(folder, output_loading_info=True)
    assert {key: value for key, value in info.items() if value} == {}
    loaded.eval()
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before, after = hf_model(pixels), loaded(pixels)
    assert torch.equal(before.class_queries_logits, after.class_queries_logits)
    assert torch.equal(before.masks_queries_logits, after.masks_queries_logits)
    assert loaded.config.id2label == hf_model.config.id2label

    again, again_classes, again_report = import_huggingface(folder)
    ours, theirs = model.state_dict(), again.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    assert again.config == model.config and again_classes == classes
    assert again_report.initialised == {}  # the gate came back from its file


def test_transformers_5_in_memory_names_map_like_the_files(resnet, swin):
    for hf_model, folder, model, _, _ in (resnet, swin):
        from ecom2f.modeling.huggingface_checkpoint import read_huggingface_folder

        in_memory = {canonical_hf_key(key): value for key, value in hf_model.state_dict().items()}
        on_disk = read_huggingface_folder(folder).state
        assert in_memory.keys() == on_disk.keys()
        mapped, _ = hf_state_to_ecom2f(model, in_memory)
        assert all(torch.equal(mapped[key], model.state_dict()[key]) for key in mapped)


def test_pytorch_bin_and_sharded_safetensors_read_like_one_file(resnet, tmp_path):
    from safetensors.torch import save_file

    _, folder, model, _, _ = resnet
    from ecom2f.modeling.huggingface_checkpoint import read_huggingface_folder

    state = read_huggingface_folder(folder).state
    config = (folder / CONFIG_FILE).read_text()
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / CONFIG_FILE).write_text(config)
    torch.save(state, binary / "pytorch_model.bin")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / CONFIG_FILE).write_text(config)
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, names in shards.items():
        save_file({key: state[key].contiguous() for key in names}, str(sharded / name))
    index = {"weight_map": {key: name for name, names in shards.items() for key in names}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    for other in (binary, sharded):
        imported, _, _ = import_huggingface(other, num_things=4)
        assert all(torch.equal(value, imported.state_dict()[key]) for key, value in model.state_dict().items()
                   if not key.startswith("gate."))


# ----------------------------------------------------------------------------- refusals
def test_a_checkpoint_that_does_not_fit_names_the_keys(resnet):
    hf_model, _, model, _, _ = resnet
    state = {canonical_hf_key(key): value for key, value in hf_model.state_dict().items()}
    del state["model.transformer_module.decoder.layers.1.fc1.weight"]
    state["model.transformer_module.extra.weight"] = torch.zeros(1)
    state["class_predictor.weight"] = torch.zeros(9, 32)
    with pytest.raises(CheckpointMismatchError) as raised:
        hf_state_to_ecom2f(model, state)
    message = str(raised.value)
    assert "checkpoint keys with no model key (1): ['model.transformer_module.extra.weight']" in message
    assert "absent from the checkpoint (1): ['model.transformer_module.decoder.layers.1.fc1.weight']" in message
    assert "class_predictor.weight: checkpoint (9, 32) vs model (8, 32)" in message


def _config(**changes) -> dict:
    backbone = {"model_type": "swin", "embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24],
                "window_size": 7, "out_features": ["stage1", "stage2", "stage3", "stage4"]}
    config = {"model_type": "mask2former", "backbone_config": backbone, "id2label": {"0": "a", "1": "b"}}
    for key, value in changes.items():
        target = backbone if key.startswith("backbone_") else config
        target[key.removeprefix("backbone_")] = value
    return config


@pytest.mark.parametrize(("changes", "message"), [
    ({"backbone_embed_dim": 160, "backbone_num_heads": [5, 10, 20, 40], "backbone_depths": [2, 2, 18, 2]},
     "= \\(160, .*not one of ecom2f.s Swin backbones"),
    ({"backbone_config": None, "use_timm_backbone": True, "backbone": "resnet50"}, "through timm/AutoBackbone"),
    ({"backbone_model_type": "convnext"}, "model_type = 'convnext': ecom2f supports 'swin' and 'resnet'"),
    ({"activation_function": "gelu"}, "activation_function = 'gelu'"),
    ({"backbone_use_absolute_embeddings": True}, "use_absolute_embeddings = True"),
    ({}, "not a label set ecom2f knows.*give num_things"),
])
def test_configs_ecom2f_cannot_represent_are_refused_by_key(changes, message):
    with pytest.raises(BadInputError, match=message):
        model_config_from_hf(_config(**changes), classes=ClassInfo(("a", "b"), (0,)) if changes else None)


def test_released_label_sets_give_things_and_tasks():
    coco = ["person"] + [f"thing{i}" for i in range(78)] + ["toothbrush", "banner"] + [f"s{i}" for i in range(52)]
    panoptic = model_config_from_hf(_config(id2label=dict(enumerate(coco))))
    assert (panoptic.num_classes, panoptic.num_things) == (133, 80)
    assert panoptic.test.panoptic_on and panoptic.test.instance_on and panoptic.test.semantic_on
    ade = model_config_from_hf(_config(id2label=dict(enumerate(["wall", "building"] + [f"c{i}" for i in range(148)]))))
    assert (ade.num_things, ade.test.semantic_on, ade.test.panoptic_on) == (0, True, False)
    cityscapes = ["road"] + [f"s{i}" for i in range(10)] + ["person"] + [f"t{i}" for i in range(6)] + ["bicycle"]
    city = model_config_from_hf(_config(id2label=dict(enumerate(cityscapes))))
    assert (city.num_things, city.thing_ids) == (8, tuple(range(11, 19)))
    semantic_use = model_config_from_hf(_config(id2label=dict(enumerate(cityscapes))),
                                        classes=ClassInfo.from_names(cityscapes, num_things=0))
    assert semantic_use.num_things == 0


def test_pixel_normalisation_comes_from_the_preprocessor_config():
    config = model_config_from_hf(_config(), {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25],
                                              "rescale_factor": 1 / 255}, ClassInfo(("a", "b"), (0,)))
    assert config.pixel_mean == pytest.approx([127.5] * 3) and config.pixel_std == pytest.approx([63.75] * 3)
    assert model_config_from_hf(_config(), None, ClassInfo(("a", "b"), (0,))).pixel_mean == pytest.approx(
        [123.675, 116.28, 103.53])


def test_export_refuses_what_transformers_hard_codes(tmp_path):
    from ecom2f.modeling import build_model

    model = build_model({"backbone": {"name": "resnet18"}, "num_classes": 3, "num_things": 1,
                         "pixel_decoder": {"conv_dim": 32, "mask_dim": 32, "points": 2, "heads": 4, "ffn_dim": 64},
                         "decoder": {"hidden_dim": 32, "num_queries": 4, "layers": 2, "heads": 8, "ffn_dim": 64}})
    with pytest.raises(BadInputError, match=r"pixel_decoder.points = 2 \(transformers: 4\); decoder.heads = 8 "
                                            r"\(transformers: 4\)"):
        export_huggingface(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_folder_that_holds_files(resnet, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    with pytest.raises(BadInputError, match="exists and is not an empty folder"):
        export_huggingface(resnet[2], tmp_path / "taken", resnet[3])


def test_a_folder_without_weights_or_config_is_named(tmp_path):
    from ecom2f.errors import MissingFileError
    from ecom2f.modeling.huggingface_checkpoint import read_huggingface_folder

    with pytest.raises(MissingFileError, match="has no config.json"):
        read_huggingface_folder(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(_config()))
    with pytest.raises(MissingFileError, match="has no weights: expected one of model.safetensors"):
        read_huggingface_folder(tmp_path)
    assert read_huggingface_folder(tmp_path, weights=False).state is None
    assert isinstance(HuggingFaceFolder({}), HuggingFaceFolder)


def test_window_indices_in_older_files_are_checked_not_loaded(swin):
    """Checkpoints saved by transformers 4 hold Swin's relative_position_index; it must match the window."""
    hf_model, folder, model, _, _ = swin
    from ecom2f.modeling.huggingface_checkpoint import read_huggingface_folder

    state = dict(read_huggingface_folder(folder).state)
    indices = {canonical_hf_key(name): buffer for name, buffer in hf_model.named_buffers()
               if name.endswith("relative_position_index")}
    assert len(indices) == 12 and all(".attention.self.relative_position_index" in key for key in indices)
    _, report = hf_state_to_ecom2f(model, {**state, **indices})
    assert not any(key.endswith("index") for key in report.ignored)
    wrong = {key: value.flip(0) for key, value in indices.items()}
    with pytest.raises(CheckpointMismatchError, match="differs from the model's window index"):
        hf_state_to_ecom2f(model, {**state, **wrong})
