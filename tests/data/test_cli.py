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
    assert capsys.readouterr().err == \
        "ecom2f data check: error: 'not_a_dataset' is not a registered dataset name: pass --format\n"
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
