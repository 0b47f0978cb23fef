"""PQ from COCO panoptic JSON + PNG folders, and the ``ecom2f pq`` command."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest

from ecom2f.cli import pq as cli
from ecom2f.evaluation.coco_panoptic_files import pq_compute_files, read_panoptic_png, write_panoptic_png
from ecom2f.evaluation.panoptic_quality import PQStat, pq_single


@pytest.fixture()
def sample(shared_dir, tmp_path):
    root = shared_dir / "data" / "coco_panoptic_sample"
    if not (root / "panoptic_examples.json").is_file():
        pytest.skip(f"COCO panoptic sample not found at {root} (set ECOM2F_SHARED_DIR)")
    gt_json = tmp_path / "gt.json"
    shutil.copy(root / "panoptic_examples.json", gt_json)
    shutil.copytree(root / "panoptic_examples", tmp_path / "gt")
    return gt_json, json.loads(gt_json.read_text())


def test_png_round_trip_and_decoding(tmp_path):
    ids = np.array([[0, 1, 255], [256, 65536, 256**3 - 1]], dtype=np.int64)
    write_panoptic_png(tmp_path / "ids.png", ids)
    np.testing.assert_array_equal(read_panoptic_png(tmp_path / "ids.png"), ids)
    assert [p.name for p in tmp_path.iterdir()] == ["ids.png"]  # no temporary left behind
    with pytest.raises(ValueError, match=r"\[0, 256\^3\)"):
        write_panoptic_png(tmp_path / "bad.png", np.array([[256**3]]))


def test_ground_truth_against_itself_through_files(sample, tmp_path):
    gt_json, _ = sample
    summary = pq_compute_files(gt_json, gt_json, tmp_path / "gt", tmp_path / "gt")
    for group in ("All", "Things", "Stuff"):
        assert summary[group]["pq"] == 1.0 and summary[group]["sq"] == 1.0 and summary[group]["rq"] == 1.0


def test_edited_prediction_folder_matches_in_memory_pq(sample, tmp_path):
    gt_json, meta = sample
    (tmp_path / "pred").mkdir()
    expected = PQStat()
    pred_annotations = []
    for annotation in meta["annotations"]:
        gt = read_panoptic_png(tmp_path / "gt" / annotation["file_name"])
        # Renumber to 1..n as Mask2Former does and shift right by 4 px (void fills the gap).
        pred = np.zeros_like(gt)
        segments = []
        for new_id, segment in enumerate(annotation["segments_info"], start=1):
            pred[:, 4:][gt[:, :-4] == segment["id"]] = new_id
            if (pred == new_id).any():
                segments.append({"id": new_id, "category_id": segment["category_id"]})
        write_panoptic_png(tmp_path / "pred" / annotation["file_name"], pred)
        pred_annotations.append({"image_id": annotation["image_id"], "file_name": annotation["file_name"],
                                 "segments_info": segments})
        expected += pq_single(pred, segments, gt, annotation["segments_info"], meta["categories"])
    pred_json = tmp_path / "pred.json"
    pred_json.write_text(json.dumps({"annotations": pred_annotations}))

    summary = pq_compute_files(gt_json, pred_json)  # folders default to the JSON names
    reference = expected.summary(meta["categories"])
    assert summary["All"] == pytest.approx(reference["All"])
    assert 0.5 < summary["All"]["pq"] < 1.0

    output = tmp_path / "summary.json"
    args = argparse.Namespace(gt_json=str(gt_json), pred_json=str(pred_json), gt_folder=None, pred_folder=None,
                              output=str(output))
    assert cli.run_pq(args) == 0
    assert json.loads(output.read_text())["All"]["pq"] == pytest.approx(reference["All"]["pq"])


def test_missing_prediction_is_an_error(sample, tmp_path):
    gt_json, _ = sample
    pred_json = tmp_path / "pred.json"
    pred_json.write_text(json.dumps({"annotations": []}))
    (tmp_path / "pred").mkdir()
    with pytest.raises(ValueError, match="no prediction for the image"):
        pq_compute_files(gt_json, pred_json)


def test_command_is_registered():
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers())
    args = parser.parse_args(["pq", "--gt-json", "a.json", "--pred-json", "b.json"])
    assert args.func is cli.run_pq and args.gt_folder is None
