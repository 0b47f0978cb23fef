"""derive_labels on crafted tables whose labels were worked out by hand (the trade-off itself:
tests/test_tradeoff.py)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from ecom2f.steps.depth.labels import derive_labels, format_labels_summary, label_histogram, labels_summary
from ecom2f.steps.depth.table import DepthTable, DepthTableError


def _table(quality: dict[int, list[float]], exits=(1, 2, 3), gflops=None) -> pd.DataFrame:
    rows = []
    for image, values in quality.items():
        for e, (k, q) in enumerate(zip(exits, values)):
            cost = gflops[image][e] if gflops else 10.0 * k
            rows.append({"image_id": image, "exit": k, "pq": q, "encoder_gflops": cost})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # order must not matter


def test_layers_cost_by_hand():
    table = _table({7: [0.50, 0.60, 0.62], 3: [0.80, 0.80, 0.80], 5: [0.10, 0.40, 0.90]})
    # beta 0: best quality; image 3 ties everywhere -> the shallowest exit 1.
    labels = derive_labels(table, 0.0)
    assert labels.index.tolist() == [3, 5, 7]
    assert labels["label"].tolist() == [1, 3, 3]
    # beta 0.05: image 7: 0.45, 0.50, 0.47 -> 2; image 5: 0.05, 0.30, 0.75 -> 3; image 3 -> 1.
    labels = derive_labels(table, 0.05)
    assert labels["label"].tolist() == [1, 3, 2]
    assert labels.loc[7, "utility"] == pytest.approx(0.50)
    assert labels.loc[7, "quality"] == pytest.approx(0.60) and labels.loc[7, "cost"] == 2
    # beta 0.3: image 5: -0.2, -0.2, 0.0 -> 3; image 7: 0.2, 0.0, -0.28 -> 1.
    assert derive_labels(table, 0.3)["label"].tolist() == [1, 3, 1]


def test_exact_tie_goes_to_fewer_layers():
    # exact in binary: 0.5 - 0.25 = 0.75 - 0.5 = 0.25
    table = _table({1: [0.5, 0.75, 0.25]})
    labels = derive_labels(table, 0.25)  # 0.25, 0.25, -0.5 -> tie between 1 and 2
    assert labels["label"].tolist() == [1]


def test_ties_of_stored_float32_values_go_to_fewer_layers():
    """PQ 0.60 at exit 2 and 0.65 at exit 3 with beta 0.05 per layer tie (0.5 each) in exact
    arithmetic; stored as float32, as the depth table stores PQ, 0.65 - 0.60 is 0.04999995: the
    shallower exit must still win. And 0.55 / 0.60 / 0.65 at exits 1 / 2 / 3 tie three ways."""
    table = _table({1: [0.10, 0.60, 0.65], 2: [0.55, 0.60, 0.65], 3: [0.30, 0.35, 0.45]})
    table["pq"] = table["pq"].astype(np.float32)
    labels = derive_labels(DepthTable.from_rows(table), 0.05)
    assert labels["label"].tolist() == [2, 1, 3]  # image 3: 0.25, 0.25, 0.30 -> exit 3, no tie
    assert labels.loc[1, "quality"] == pytest.approx(0.60)


def test_gflops_cost_uses_each_images_own_cost():
    gflops = {1: [1.0, 2.0, 3.0], 2: [1.0, 10.0, 11.0]}
    table = _table({1: [0.5, 0.7, 0.8], 2: [0.5, 0.7, 0.8]}, gflops=gflops)
    # beta 0.05 per GFLOP: image 1: 0.45, 0.60, 0.65 -> 3; image 2: 0.45, 0.20, 0.25 -> 1.
    labels = derive_labels(table, 0.05, cost="gflops")
    assert labels["label"].tolist() == [3, 1]
    assert labels.loc[2, "cost"] == 1.0
    # with cost=layers the same beta sees costs 1, 2, 3: 0.45, 0.60, 0.65 for both.
    assert derive_labels(table, 0.05, cost="layers")["label"].tolist() == [3, 3]


def test_soft_targets_are_a_softmax_of_the_utilities():
    table = _table({1: [0.2, 0.5, 0.6]})
    labels = derive_labels(table, 0.1, temperature=0.1)
    utilities = np.array([0.1, 0.3, 0.3])
    expected = np.exp(utilities / 0.1) / np.exp(utilities / 0.1).sum()
    np.testing.assert_allclose(labels[["p_1", "p_2", "p_3"]].to_numpy()[0], expected, rtol=1e-12)
    assert labels["label"].tolist() == [2]  # tie 2/3 -> fewer layers


def test_nan_quality_counts_as_perfect_and_exits_subset():
    table = _table({1: [np.nan, 0.9, 0.0]})
    assert derive_labels(table, 0.0)["label"].tolist() == [1]
    assert derive_labels(table, 0.0, exits=[2, 3])["label"].tolist() == [2]


def test_bad_inputs_fail_with_a_message():
    table = _table({1: [0.1, 0.2, 0.3], 2: [0.1, 0.2, 0.3]})
    with pytest.raises(ValueError, match="beta=-1"):
        derive_labels(table, -1)
    with pytest.raises(ValueError, match="cost='flops'"):
        derive_labels(table, 0.1, cost="flops")
    with pytest.raises(DepthTableError, match="1 missing"):
        derive_labels(table.iloc[1:], 0.1)
    with pytest.raises(DepthTableError, match="1 duplicated"):
        derive_labels(pd.concat([table, table.iloc[:1]]), 0.1)
    with pytest.raises(ValueError, match=r"exits \[9\]"):
        derive_labels(table, 0.1, exits=[1, 9])


def test_histogram_and_summary_per_beta():
    table = _table({1: [0.5, 0.6, 0.62], 2: [0.8, 0.8, 0.8], 3: [0.1, 0.4, 0.9], 4: [0.1, 0.4, 0.9]})
    histogram = label_histogram(derive_labels(table, 0.05), exits=[1, 2, 3])
    assert histogram.to_dict() == {1: 1, 2: 1, 3: 2}
    summary = labels_summary(table, [0.0, 0.05])
    assert summary.loc[0.05, "mean_depth"] == pytest.approx((1 + 2 + 3 + 3) / 4)
    assert summary.loc[0.0, "exit_3"] == pytest.approx(0.75)
    assert summary.loc[0.05, "mean_gflops"] == pytest.approx(10 * 9 / 4)
    text = format_labels_summary(summary)
    assert "mean_depth" in text and "75.0%" in text


def test_derivation_at_coco_scale_is_fast():
    rng = np.random.default_rng(0)
    images, exits = 118_287, np.array([2, 3, 4, 5, 6])
    table = pd.DataFrame({
        "image_id": np.repeat(np.arange(images), len(exits)),
        "exit": np.tile(exits, images).astype(np.int16),
        "pq": rng.random(images * len(exits)).astype(np.float32),
        "encoder_gflops": np.tile(exits * 5.0, images).astype(np.float32),
    })
    derive_labels(table, 0.01)  # warm-up
    start = time.perf_counter()
    labels = derive_labels(table, 0.01)
    elapsed = time.perf_counter() - start
    assert len(labels) == images
    # An independent check on 100 images: the row-wise definition.
    for image in rng.choice(images, 100, replace=False):
        q = table["pq"].to_numpy()[image * 5 : image * 5 + 5].astype(np.float64) - 0.01 * exits
        assert labels.loc[image, "label"] == exits[int(np.argmax(q))]
    assert elapsed < 0.5, f"derive_labels took {elapsed:.3f} s for 118k x 5"


def test_depth_labels_command_trades_off_the_chosen_quality(tmp_path, capsys):
    """``ecom2f depth-labels`` on a written table: PQ and mIoU give the labels worked out by hand."""
    from ecom2f import storage
    from ecom2f.cli import main
    from ecom2f.steps.depth.table import shard_tables, write_shard
    from ecom2f.storage.layout import SUCCESS
    from tests.conftest import REPO_ROOT

    exits = [2, 3, 4, 5, 6]
    pq = np.array([[0.5] * 5, [0.1, 0.9, 0.1, 0.1, 0.1]], np.float32)     # beta 0: exits 2 and 3
    miou = np.array([[0.1, 0.2, 0.3, 0.4, 0.9], [0.5] * 5], np.float32)  # beta 0: exits 6 and 2
    per_exit = lambda value: np.full((2, 5), value, np.float32)
    images = {
        "index": np.array([0, 1]), "image_id": np.array([10, 11]), "height": np.array([64, 64], np.int32),
        "width": np.array([64, 64], np.int32), "num_gt_segments": np.array([3, 3], np.int32),
        "difficulty": np.array([0.1, 0.9], np.float32), "loss": per_exit(1.0), "pq": pq, "sq": pq, "rq": pq,
        "pq_things": pq, "pq_stuff": pq, "miou": miou, "encoder_gflops": np.tile(np.float32(exits), (2, 1)),
        "num_pred_segments": np.full((2, 5), 3, np.int32),
        "gate_mean": np.zeros((2, 4), np.float32), "gate_max": np.zeros((2, 4), np.float32),
        "gate_grid": np.zeros((2, 16), np.float32),
    }
    demo = str(REPO_ROOT / "configs" / "demo_cpu.yaml")
    run = storage.join(str(tmp_path), "demo")
    write_shard(storage.join(run, "depth"), 0, *shard_tables(images, exits), config_hash="crafted")
    common = ["depth-labels", "--config", demo, "--storage", str(tmp_path),
              "model.gate.exits=[2,3,4,5,6]", "--betas", "0"]  # the crafted table's exits
    assert main(common) == 2  # the table is not finished until step 2 writes its manifest, last
    assert "is not finished" in capsys.readouterr().err
    storage.write_text(storage.join(run, "depth", SUCCESS), '{"config_hash": "crafted"}')

    assert main(common) == 0
    by_pq = capsys.readouterr().out
    assert "mean_pq" in by_pq and "2.500" in by_pq
    assert main([*common, "--quality", "miou"]) == 0
    by_miou = capsys.readouterr().out
    assert "mean_miou" in by_miou and "4.000" in by_miou

    images["miou"] = np.full((2, 5), np.nan, np.float32)  # an instance-only dataset: no mIoU
    write_shard(storage.join(run, "depth"), 0, *shard_tables(images, exits), config_hash="crafted")
    assert main([*common, "--quality", "miou"]) == 2
    assert "has no miou values" in capsys.readouterr().err
