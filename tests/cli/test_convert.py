"""``ecom2f convert``: every pair of formats round-trips bit for bit; sources are recognised; bad input is one line."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import yaml

from ecom2f.cli import main
from ecom2f.modeling import build_model
from ecom2f.modeling.class_info import ClassInfo
from ecom2f.modeling.model_compat import architecture_differences

NAMES = ("circle", "square", "star", "ring", "sky", "grass", "water")


def _model():
    """A tiny ResNet-18 model in the shape all three formats can hold (Mask2Former fixes the encoder's
    FFN at 1024 and one head count), with every weight, the gate's too, off its initialisation."""
    torch.manual_seed(11)
    model = build_model({
        "backbone": {"name": "resnet18"}, "num_classes": len(NAMES), "num_things": 4,
        "pixel_decoder": {"conv_dim": 32, "mask_dim": 32, "heads": 4, "ffn_dim": 1024, "encoder_layers": 2},
        "decoder": {"hidden_dim": 32, "num_queries": 5, "layers": 2, "heads": 4, "ffn_dim": 64},
        "gate": {"exits": [2]}, "test": {"detections_per_image": 100},
    })
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same model as an ecom2f run, a Mask2Former .pth (+ YAML) and a transformers folder."""
    from ecom2f.cli.convert import _write_run
    from ecom2f.modeling.checkpoint_formats import write_mask2former
    from ecom2f.modeling.huggingface_checkpoint import export_huggingface

    root = tmp_path_factory.mktemp("sources")
    model = _model()
    classes = ClassInfo(NAMES, (0, 1, 2, 3))
    _write_run(model, classes, str(root / "run"))
    write_mask2former(model, root / "m2f" / "model.pth")
    export_huggingface(model, root / "hf", classes)
    return model, {"ecom2f": root / "run", "mask2former": root / "m2f" / "model.pth", "huggingface": root / "hf"}


def _read(path, fmt):
    from ecom2f.cli.convert import _read

    model, classes, _, _ = _read(str(path), None, 4 if fmt == "mask2former" else None)
    return model, classes


def _convert(src, dst, to, capsys, *extra) -> str:
    assert main(["convert", str(src), str(dst), "--to", to, *extra]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


_TARGET_NAME = {"ecom2f": "run_out", "mask2former": "out.pth", "huggingface": "hf_out"}


@pytest.mark.parametrize(("first", "second"), list(itertools.permutations(["ecom2f", "mask2former", "huggingface"], 2)))
def test_a_round_trip_through_every_pair_of_formats_is_bit_exact(sources, tmp_path, capsys, first, second):
    model, paths = sources
    things = ["--num-things", "4"] if first == "mask2former" else []
    middle = tmp_path / _TARGET_NAME[second]
    _convert(paths[first], middle, second, capsys, *things)
    back = tmp_path / ("back_" + _TARGET_NAME[first])
    _convert(middle, back, first, capsys, *(["--num-things", "4"] if second == "mask2former" else []))

    converted, classes = _read(back, first)
    ours, theirs = model.state_dict(), converted.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)  # the gate included, in every format
    assert architecture_differences(model.config, converted.config) == []
    if "mask2former" not in (first, second):  # detectron2 YAMLs have no place for names or every setting
        assert converted.config == model.config
        assert classes.names == NAMES


def test_the_report_says_what_was_mapped_initialised_and_ignored(sources, tmp_path, capsys):
    model, paths = sources
    out = _convert(paths["mask2former"], tmp_path / "hf", "huggingface", capsys, "--num-things", "4")
    assert out.splitlines()[0] == f"source: ECO-M2F checkpoint (with gate), detectron2 torch file ({paths['mask2former']})"
    assert f"-> ecom2f: {len(model.state_dict())} tensors mapped" in out
    assert "ignored (1): criterion.empty_weight: the loss' class weights" in out
    assert "ignored (2): gate.head.bias, gate.head.weight: ecom2f's gate: written beside, to ecom2f_gate.safetensors" in out
    assert "note: no class names known: id2label holds LABEL_0" in out
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["id2label"]["0"] == "LABEL_0"

    named = tmp_path / "names.txt"
    named.write_text("\n".join(NAMES) + "\n")
    _convert(paths["mask2former"], tmp_path / "hf_named", "huggingface", capsys, "--num-things", "4",
             "--class-names", str(named))
    assert json.loads((tmp_path / "hf_named" / "config.json").read_text())["id2label"]["6"] == "water"


def test_a_plain_mask2former_checkpoint_leaves_the_gate_at_its_initialisation(sources, tmp_path, capsys):
    _, paths = sources
    state = torch.load(paths["mask2former"], weights_only=True)["model"]
    plain = {key: value for key, value in state.items() if ".gt." not in key}
    torch.save({"model": plain}, tmp_path / "plain.pth")
    (tmp_path / "plain.yaml").write_text(paths["mask2former"].with_suffix(".yaml").read_text())
    out = _convert(tmp_path / "plain.pth", tmp_path / "run", "ecom2f", capsys, "--num-things", "4")
    assert "source: Mask2Former checkpoint, detectron2 torch file" in out
    assert "left at initialisation (2): gate.head.bias, gate.head.weight: a plain Mask2Former checkpoint has no gate" in out


def test_an_ecom2f_run_on_s3_converts_to_s3(sources, tmp_path, capsys, s3_bucket):
    from ecom2f import storage

    model, paths = sources
    storage.upload_dir(paths["ecom2f"], f"{s3_bucket}/runs/parent_run")
    _convert(f"{s3_bucket}/runs/parent_run", f"{s3_bucket}/exports/hf", "huggingface", capsys)
    assert storage.exists(f"{s3_bucket}/exports/hf/model.safetensors")
    _convert(f"{s3_bucket}/exports/hf", f"{s3_bucket}/runs/converted", "ecom2f", capsys)
    saved = yaml.safe_load(storage.read_text(f"{s3_bucket}/runs/converted/config.yaml"))
    assert saved["storage"]["root"] == f"{s3_bucket}/runs" and saved["storage"]["run"] == "converted"
    _convert(f"{s3_bucket}/runs/converted", tmp_path / "run", "ecom2f", capsys)
    converted, classes = _read(tmp_path / "run", "ecom2f")
    assert all(torch.equal(value, converted.state_dict()[key]) for key, value in model.state_dict().items())
    assert classes.names == NAMES

    for path in (paths["mask2former"], paths["mask2former"].with_suffix(".yaml")):  # the YAML beside comes along
        storage.upload_file(path, f"{s3_bucket}/m2f/{path.name}")
    _convert(f"{s3_bucket}/m2f/model.pth", tmp_path / "from_m2f", "ecom2f", capsys, "--num-things", "4")
    converted, _ = _read(tmp_path / "from_m2f", "ecom2f")
    assert all(torch.equal(value, converted.state_dict()[key]) for key, value in model.state_dict().items())


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: tmp / "absent.pkl", "absent.pkl does not exist"),
    (lambda tmp: _write(tmp / "notes.txt", "x"), "expected a detectron2 .pkl, a .pth, or a folder"),
    (lambda tmp: _save(tmp / "weights.pth", {"pixel_decoder.mask_features.weight": torch.zeros(1)}),
     "holds ecom2f weights without their model section; convert the run folder"),
    (lambda tmp: _save(tmp / "orphan.pth", {"sem_seg_head.predictor.query_feat.weight": torch.zeros(1)}),
     "no detectron2 config for .*orphan.yaml does not exist"),
])
def test_bad_sources_are_one_line(tmp_path, capsys, make, message):
    source = make(tmp_path)
    assert main(["convert", str(source), str(tmp_path / "out"), "--to", "huggingface"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ecom2f convert: error: ")
    assert __import__("re").search(message, err), err


def test_an_existing_destination_is_refused(sources, tmp_path, capsys):
    _, paths = sources
    assert main(["convert", str(paths["huggingface"]), str(paths["ecom2f"]), "--to", "ecom2f"]) == 2
    assert "already exists; give a new path" in capsys.readouterr().err


def _write(path, text):
    path.write_text(text)
    return path


def _save(path, state):
    torch.save(state, path)
    return path
