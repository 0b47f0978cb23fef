"""``ecom2f data synth|check`` and the data benchmark, run as a user would."""

import subprocess
import sys

from ecom2f.cli import main
from tests.data.helpers import copy_of, make_panoptic


def test_synth_then_check_passes(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "s"), "--num-images", "5", "--image-size", "64", "--seed", "1"]) == 0
    assert max(p.name for p in (tmp_path / "s" / "images").iterdir()) == "000005.jpg"
    assert main(["data", "check", str(tmp_path / "s"), "--format", "coco_panoptic"]) == 0
    assert "5 samples checked: OK" in capsys.readouterr().out


def test_check_lists_every_problem_with_counts_and_examples_and_fails(panoptic_template, tmp_path, capsys):
    root = tmp_path / "bad"
    copy_of(panoptic_template, root)
    for name in ("000001.jpg", "000002.jpg"):
        (root / "images" / name).write_bytes(b"not an image")
    (root / "panoptic" / "000003.png").unlink()
    assert main(["data", "check", str(root), "--format", "coco_panoptic"]) == 1
    out = capsys.readouterr().out
    assert "FAILED (3 errors)" in out
    assert "error unreadable_image: 2" in out and "000002.jpg" in out
    assert "error missing_annotation_file: 1" in out and "000003.png" in out


def test_check_with_registered_name_and_bad_arguments(tmp_path, monkeypatch, capsys):
    make_panoptic(tmp_path / "synthetic" / "val", num_images=2)
    monkeypatch.setenv("ECOM2F_DATASETS", str(tmp_path))
    assert main(["data", "check", "synthetic_panoptic_val"]) == 0
    assert main(["data", "check", "not_a_dataset"]) == 2
    assert capsys.readouterr().err == (
        "ecom2f data check: error: no dataset named 'not_a_dataset'; registered: ade20k_panoptic_train, "
        "ade20k_panoptic_val, ade20k_sem_seg_train, ade20k_sem_seg_val, cityscapes_fine_panoptic_train, "
        "cityscapes_fine_panoptic_val, coco_2017_train, coco_2017_train_panoptic, coco_2017_val, "
        "coco_2017_val_panoptic, synthetic_panoptic_train, synthetic_panoptic_val (not_a_dataset is no folder either)\n")
    (tmp_path / "empty").mkdir()
    assert main(["data", "check", str(tmp_path / "empty"), "--format", "coco_panoptic"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ecom2f data check: error: ") and err.count("\n") == 1 and "pass --json" in err
    assert main(["data", "check", str(tmp_path), "--format", "semantic"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ecom2f data check: error: ") and err.count("\n") == 1 and "needs --classes" in err


def test_semantic_check_from_the_command_line(tmp_path, capsys):
    import numpy as np

    from tests.data.helpers import make_semantic

    make_semantic(tmp_path, [np.zeros((8, 8), np.uint8), np.full((8, 8), 9, np.uint8)])
    assert main(["data", "check", str(tmp_path), "--format", "semantic", "--classes", "road,car"]) == 1
    assert "label_out_of_range: 1" in capsys.readouterr().out


def test_bench_prints_images_per_second_per_worker():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.data_loading", "--num-images", "4", "--image-size", "64", "--target-size", "128",
         "--workers", "0", "--batches", "2"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("machine:")
    workers, rate, per_worker = lines[-1].split()
    assert workers == "0" and float(rate) > 0 and float(per_worker) == float(rate)


# -- issue 18: the checker a user meets first ---------------------------------------------------
def _coco_layout(root, splits=("val2017", "train2017"), num_images=2):
    """detectron2's COCO panoptic layout (docs/data.md): annotations/panoptic_<split>.json,
    <split>/ images, panoptic_<split>/ PNGs; made from synthetic sets."""
    import shutil

    (root / "annotations").mkdir(parents=True)
    for seed, split in enumerate(splits):
        flat = root / f"flat_{split}"
        make_panoptic(flat, num_images=num_images, seed=seed)
        (flat / "images").rename(root / split)
        (flat / "panoptic").rename(root / f"panoptic_{split}")
        (flat / "panoptic.json").rename(root / "annotations" / f"panoptic_{split}.json")
        shutil.rmtree(flat)


def _one_error_line(capsys, command="data check") -> str:
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured
    prefix = f"ecom2f {command}: error: "
    assert captured.err.startswith(prefix), captured.err
    return captured.err.removeprefix(prefix).strip()


def test_check_recognises_the_detectron2_coco_layout_the_readme_names(tmp_path, capsys):
    """`ecom2f data check datasets/coco --format coco_panoptic` (README) on the layout of docs/data.md:
    both splits are found and checked, whatever the folder is called."""
    root = tmp_path / "my_coco"
    _coco_layout(root)
    assert main(["data", "check", str(root), "--format", "coco_panoptic"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{root}: 2 datasets in a registered layout: coco_2017_train_panoptic, "
                          "coco_2017_val_panoptic\n")
    assert f"{root}/annotations/panoptic_val2017.json: 2 samples checked: OK" in out
    assert f"{root}/annotations/panoptic_train2017.json: 2 samples checked: OK" in out
    assert main(["data", "check", str(root), "--format", "coco_panoptic", "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "panoptic_val2017.json: 2 samples checked: OK" in out and "train2017" not in out
    # a broken PNG in one split fails the check and names the file
    (root / "panoptic_val2017" / "000001.png").unlink()
    assert main(["data", "check", str(root), "--format", "coco_panoptic"]) == 1
    out = capsys.readouterr().out
    assert "FAILED (1 errors)" in out and "missing_annotation_file: 1" in out and "000001.png" in out


def test_check_recognises_the_synthetic_root_and_the_data_root(tmp_path, capsys):
    make_panoptic(tmp_path / "synthetic" / "train", num_images=2)
    make_panoptic(tmp_path / "synthetic" / "val", num_images=3)
    for root in (tmp_path / "synthetic", tmp_path):  # a dataset's folder, or the data root holding it
        assert main(["data", "check", str(root), "--format", "coco_panoptic"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"{root}: 2 datasets in a registered layout: synthetic_panoptic_train, "
                              "synthetic_panoptic_val\n")
        assert "synthetic/train/panoptic.json: 2 samples checked: OK" in out
        assert "synthetic/val/panoptic.json: 3 samples checked: OK" in out


def test_check_of_a_folder_that_does_not_exist_says_so(tmp_path, capsys):
    missing = tmp_path / "datasets" / "coco"
    assert main(["data", "check", str(missing), "--format", "coco_panoptic"]) == 2
    assert _one_error_line(capsys) == (f"dataset folder {missing} does not exist; check the path (or give a registered "
                                       "dataset name without --format)")


def test_check_of_a_folder_of_no_known_layout_names_the_flag(tmp_path, capsys):
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.json").write_text("{}")
    assert main(["data", "check", str(tmp_path), "--format", "coco_panoptic"]) == 2
    message = _one_error_line(capsys)
    assert message.startswith(f"cannot tell which annotation JSON to use in {tmp_path}: found ['a.json', 'b.json']")
    assert "annotations/panoptic_val2017.json" in message and message.endswith("pass --json")


def test_a_misspelled_dataset_name_gets_a_did_you_mean(capsys):
    assert main(["data", "check", "synthetic_panoptic_tran"]) == 2
    assert _one_error_line(capsys) == ("no dataset named 'synthetic_panoptic_tran'; did you mean "
                                       "'synthetic_panoptic_train' or 'synthetic_panoptic_val' or "
                                       "'ade20k_panoptic_train'? (synthetic_panoptic_tran is no folder either)")


def test_a_folder_without_format_asks_for_it(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path)]) == 2
    assert _one_error_line(capsys) == f"{tmp_path} is a folder: pass its --format (coco_panoptic, coco_instances, semantic)"


def test_synth_into_a_non_empty_folder_refuses_or_replaces_cleanly(tmp_path, capsys):
    """Formerly a 5-image JSON beside 20 JPEGs; now refused, or replaced whole with --overwrite."""
    out = tmp_path / "s"
    assert main(["data", "synth", str(out), "--num-images", "4", "--image-size", "48"]) == 0
    capsys.readouterr()
    assert main(["data", "synth", str(out), "--num-images", "2", "--image-size", "48"]) == 2
    assert _one_error_line(capsys, "data synth") == (
        f"{out} is not empty (3 entries, e.g. images): choose an empty or new folder, or pass --overwrite to replace it")
    assert len(list((out / "images").iterdir())) == 4  # untouched
    assert main(["data", "synth", str(out), "--num-images", "2", "--image-size", "48", "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000001.jpg", "000002.jpg"]
    assert sorted(p.name for p in (out / "panoptic").iterdir()) == ["000001.png", "000002.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no staging or retired folder left
    assert main(["data", "check", str(out), "--format", "coco_panoptic"]) == 0
    assert "2 samples checked: OK" in capsys.readouterr().out
    # a failed --overwrite keeps the old set whole
    assert main(["data", "synth", str(out), "--num-images", "0", "--overwrite"]) == 2
    assert "--num-images 1 or more" in _one_error_line(capsys, "data synth")
    assert len(list((out / "images").iterdir())) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_synth_with_no_images_is_one_line(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "s"), "--num-images", "0"]) == 2
    assert _one_error_line(capsys, "data synth") == "num_images=0: generate at least one image (--num-images 1 or more)"
