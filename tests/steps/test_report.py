"""The report on a crafted evaluation whose trade-off is known (tests/report/crafted.py): the numbers
it states, its sentences and checks, its figures, and where it writes (S3 and local)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecom2f import storage
from ecom2f.report.comparisons import oracle_beats_fixed, oracle_over_gates, oracle_vs_fixed
from ecom2f.report.evidence import gather, merge_identical_gates
from ecom2f.report.plots import (
    CURVE_LABEL,
    FIXED_LABEL,
    ORACLE_LABEL,
    depth_histogram_figure,
    difficulty_figure,
    pareto_figure,
)
from ecom2f.report.write import write_report
from ecom2f.steps.depth.labels import derive_labels
from tests.report import crafted
from tests.steps.conftest import tiny_config

EXITS = [2, 3, 4, 5, 6]
FIXED_PQ = [55.0, 58.75, 62.5, 66.25, 70.0, 73.75]  # 0.55 + 0.0375 (k - 1), see crafted.py


@pytest.fixture(scope="module")
def evaluation():
    rows = crafted.per_image_rows()
    return rows, crafted.summary(rows)


@pytest.fixture
def config(tmp_path, tiny_data_root):
    spec = crafted.dataset_json(tmp_path / "val")
    return tiny_config(tiny_data_root, tmp_path / "runs", "storage.run=report", "gate.betas=[0.0,0.2]",
                       "model.gate.exits=[2,3,4,5,6]",
                       f"data.val={{format: coco_panoptic, image_root: {spec['image_root']}, json: {spec['json']}, "
                       f"png_root: {spec['png_root']}}}")


def test_the_summary_of_the_crafted_case_is_the_hand_derived_one(evaluation):
    _, summary = evaluation
    fixed = summary[summary["kind"] == "fixed"].sort_values("mean_layers")
    np.testing.assert_allclose(100 * fixed["pq"], FIXED_PQ)
    oracle = summary.set_index("variant").loc["oracle"]
    # Simple images tie at every depth (-> depth 1), cluttered ones are best at 6.
    assert oracle["mean_layers"] == pytest.approx(3.5) and 100 * oracle["pq"] == pytest.approx(73.75)


def test_identical_gates_are_merged(evaluation):
    rows, summary = evaluation
    merged_summary, merged_rows, merged = merge_identical_gates(summary, rows)
    assert merged == {"layers_3.0 = layers_4.0": ["layers_3.0", "layers_4.0"], "layers_5.0": ["layers_5.0"]}
    assert sorted(merged_summary.loc[merged_summary["kind"] == "gate", "variant"]) == ["layers_3.0 = layers_4.0",
                                                                                       "layers_5.0"]
    assert "layers_4.0" not in set(merged_rows["variant"])


def test_evidence_holds_the_known_trade_off(evaluation, config):
    rows, summary = evaluation
    evidence = gather(config, summary, rows, crafted.depth_table())
    good = evidence.versus.loc["layers_3.0 = layers_4.0"]
    # 4 mean layers (0.4 GFLOPs): the curve gives 66.25, the gate the full depth's 73.75.
    assert good["pq"] == pytest.approx(73.75) and good["curve_pq"] == pytest.approx(66.25)
    assert good["vs_curve"] == pytest.approx(7.5) and 0 < good["vs_curve_low"] < 7.5 < good["vs_curve_high"]
    assert good["vs_full"] == pytest.approx(0.0, abs=1e-9)
    # Matched PQ: the curve reaches 73.75 only at depth 6 (0.6 GFLOPs): 0.2 saved, a third of the encoder.
    assert good["matched_gflops"] == pytest.approx(0.6) and good["saved_share"] == pytest.approx(1 / 3)
    flat = evidence.versus.loc["layers_5.0"]
    assert flat["vs_curve"] == pytest.approx(0.0, abs=1e-9) and flat["vs_full"] == pytest.approx(-3.75)
    assert evidence.scene_gain.loc["cluttered", "gain"] == pytest.approx(25.0)
    assert evidence.scene_gain.loc["simple", "gain"] == pytest.approx(0.0, abs=1e-9)
    assert evidence.depths == [1, 2, 3, 4, 5, 6] and evidence.gate_exits == EXITS
    sweep = evidence.sweep.set_index("beta")
    assert len(sweep) >= 20 and {0.0, 0.2} <= set(sweep.index)
    assert sweep.loc[0.0, "mean_layers"] == pytest.approx(4.0) and sweep.loc[0.0, "table_pq"] == pytest.approx(77.5)
    assert sweep.loc[0.2, "mean_layers"] == pytest.approx(2.0) and (sweep["seconds"] < 1.0).all()


def test_the_report_states_the_trade_off(evaluation, config):
    rows, summary = evaluation
    crafted.gate_metadata(config.storage.layout(), storage)
    text = storage.read_text(write_report(config, summary=summary, per_image=rows, depth_table=crafted.depth_table()))
    assert "Gate `layers_3.0 = layers_4.0` is above the fixed-depth curve by 7.5 PQ (95% CI +" in text
    assert "Gate `layers_5.0` is not distinguishable from the fixed-depth curve (+0.0 PQ" in text
    assert "gate, beta 0.01, budget <= 3.0, 4.0 layers" in text  # merged budgets named in the headline
    assert "- A gate above the fixed-depth curve at its mean cost, 95% CI excluding zero: **yes** " in text
    assert ("- Deeper fixed exits better on cluttered scenes than on simple ones (the gain of depth_6 over depth_1, "
            "cluttered minus simple, 95% CI above zero): **yes**") in text
    assert "It chose 6.00 layers on average on cluttered scenes and 2.00 on simple ones." in text
    assert "the encoder is **38%** of the model's 1.600 GFLOPs per image" in text  # 0.6 of 1.6
    assert "| `depth_6` | full depth (baseline) | 73.8 |" in text
    assert "1.600 ± 0.000" in text and "1.400 ± 0.200" in text  # total GFLOPs of the full depth and the gate
    assert "0.200 (+33%)" in text  # encoder GFLOPs saved at matched PQ
    assert ("at matched PQ (the cost at which the fixed-depth curve reaches its PQ) it saves 0.200 encoder GFLOPs "
            "per image (+33% of the full depth's") in text  # the summary at the top says it too
    assert "| gate layers_5.0, beta=0 (validation) | 0 | 0 | 0 | 0 | 100 | 0 |" in text  # one histogram row per beta
    assert "Depth 1 is a fixed depth only" in text
    assert "| ideal, beta=0 (training) | 0 | 50 | 0 | 0 | 0 | 50 |" in text
    assert "Labels for 26 betas" in text
    assert "PQ - est." not in text and "0.7375" not in text  # one unit: % everywhere
    layout = config.storage.layout()
    for name in ("pareto", "depth_histogram", "scenes", "difficulty", "beta_sweep"):
        assert storage.read_bytes(layout.report_figure(name))[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name}.png)" in text
    assert storage.exists(layout.report_success)


def test_write_report_on_s3(s3_bucket, tiny_data_root, evaluation, tmp_path):
    rows, summary = evaluation
    spec = crafted.dataset_json(tmp_path / "val")
    config = tiny_config(tiny_data_root, f"{s3_bucket}/runs", "storage.run=report", "gate.betas=[0.0,0.2]",
                         "model.gate.exits=[2,3,4,5,6]",
                         f"data.val={{format: coco_panoptic, image_root: {spec['image_root']}, json: {spec['json']}, "
                         f"png_root: {spec['png_root']}}}")
    uri = write_report(config, summary=summary, per_image=rows, depth_table=crafted.depth_table())
    layout = config.storage.layout()
    assert uri == layout.report_markdown == storage.join(layout.report, "report.md")
    assert storage.read_bytes(layout.report_figure("pareto"))[:8] == b"\x89PNG\r\n\x1a\n"
    assert "above the fixed-depth curve by 7.5 PQ" in storage.read_text(uri)


def test_pareto_figure_draws_the_curves_and_the_gates_intervals(evaluation, config):
    rows, summary = evaluation
    evidence = gather(config, summary, rows, None)
    ax = pareto_figure(evidence.summary, evidence.versus).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines[FIXED_LABEL].get_xdata(), [0.1 * k for k in range(1, 7)])
    np.testing.assert_allclose(lines[FIXED_LABEL].get_ydata(), FIXED_PQ)
    assert ORACLE_LABEL in lines
    curve = lines[CURVE_LABEL]  # the comparisons' curve: here the straight line itself
    np.testing.assert_allclose(curve.get_ydata(), 55 + 37.5 * (curve.get_xdata() - 0.1), atol=1e-9)
    gate = lines["gate layers_3.0 = layers_4.0 (4.00 layers)"]
    np.testing.assert_allclose(gate.get_xdata(), [0.4]) and np.testing.assert_allclose(gate.get_ydata(), [73.75])
    # The error bar: curve + the margin's interval, around the gate.
    versus = evidence.versus.loc["layers_3.0 = layers_4.0"]
    segments = [c for c in ax.collections if len(c.get_segments())]
    bars = [s for c in segments for s in c.get_segments() if np.allclose(s[:, 0], 0.4)]
    np.testing.assert_allclose(sorted(bars[0][:, 1]), [66.25 + versus["vs_curve_low"], 66.25 + versus["vs_curve_high"]])


def test_histogram_and_difficulty_figures_keep_training_and_validation_apart(evaluation):
    rows, _ = evaluation
    table = crafted.depth_table()
    labels = {beta: derive_labels(table, beta, cost="layers", exits=EXITS) for beta in (0.0, 0.2)}
    gate = rows[rows["variant"] == "layers_3.0"]
    fig = depth_histogram_figure(labels, [1, 2, 3, 4, 5, 6], {"layers_3.0": gate["depth"]})
    left, right = fig.axes
    assert [t.get_text() for t in left.get_xticklabels()] == ["1", "2", "3", "4", "5", "6"]
    heights = [p.get_height() for p in left.patches]
    np.testing.assert_allclose(heights, [0, 50, 0, 0, 0, 50] + [0, 100, 0, 0, 0, 0])  # beta 0, then beta 0.2
    assert "Training images" in left.get_title() and "Validation images" in right.get_title()
    np.testing.assert_allclose([p.get_height() for p in right.patches], [0, 50, 0, 0, 0, 50])

    difficulty = pd.Series(table.difficulty, index=pd.Index(table.image_ids, name="image_id"))
    fig = difficulty_figure(labels, difficulty, {"g": gate.assign(scene=gate["image_id"].astype(int).sub(1).map(crafted.scene))})
    left, right = fig.axes
    ideal = {line.get_label(): line for line in left.get_lines()}
    np.testing.assert_allclose(ideal["ideal exit, beta=0"].get_ydata(), [2, 6])
    assert {line.get_label() for line in right.get_lines()} == {"gate g, cluttered scenes", "gate g, simple scenes"}


def test_oracle_comparisons_on_the_summary(evaluation):
    _, summary = evaluation
    comparison = oracle_vs_fixed(summary).set_index("variant")
    # Curve points (3.5 layers, 73.75) and its beta sweep; ties at depth 1 by construction and, here,
    # at depth 6 too: cluttered images are best at 6, simple ones tie everywhere.
    np.testing.assert_allclose(100 * comparison["margin"], [0, 3.75, 7.5, 7.5, 3.75, 0], atol=1e-9)
    assert not oracle_beats_fixed(comparison.reset_index())
    worse_full = summary.assign(pq=np.where(summary["variant"] == "depth_6", 0.72, summary["pq"]))
    assert oracle_beats_fixed(oracle_vs_fixed(worse_full))
    over = oracle_over_gates(summary)
    assert over["layers_5.0"] > 0 and over["layers_3.0"] > -1e-12


def test_write_report_reads_a_finished_depth_table_from_the_run(tmp_path, tiny_data_root, evaluation, config):
    """Without ``depth_table``, the report reads the run's table once step 2 has finished it, and
    leaves the depth-table parts out before."""
    from ecom2f.steps.depth.table import DEPTH_SCHEMA_VERSION, shard_uri

    rows, summary = evaluation
    layout = config.storage.layout()
    table_rows = pd.DataFrame([{"image_id": i + 1, "exit": k, "pq": crafted.iou(crafted.scene(i), k),
                                "encoder_gflops": 0.1 * k, "loss": 1.0, "difficulty": 0.5}
                               for i in range(10) for k in EXITS])
    storage.write_bytes(shard_uri(layout.depth, "rows", 0),
                        table_rows.assign(schema_version=np.int16(DEPTH_SCHEMA_VERSION)).to_parquet(index=False))
    text = storage.read_text(write_report(config, summary=summary, per_image=rows))
    assert not storage.exists(layout.report_figure("depth_histogram")) and "beta without retraining" not in text

    storage.write_text(layout.depth_success, "{}")
    text = storage.read_text(write_report(config, summary=summary, per_image=rows))
    assert storage.exists(layout.report_figure("depth_histogram")) and "beta without retraining" in text


def test_the_scene_check_says_when_depth_only_costs_simple_scenes(evaluation, config):
    """The demo's case: the deepest exit gains nothing on cluttered scenes but loses on simple ones, so
    the cluttered-minus-simple difference is positive; the check says yes and says why."""
    from ecom2f.report.sections import checks

    rows, summary = evaluation
    evidence = gather(config, summary, rows, None)
    evidence.scene_gain = pd.DataFrame({"gain": [-0.5, -14.0, 13.5], "low": [-1.5, -21.2, 8.6],
                                        "high": [0.4, -8.8, 20.9], "images": [30, 30, 60]},
                                       index=["cluttered", "simple", "cluttered - simple"])
    text = checks(evidence)
    assert "95% CI above zero): **yes**: cluttered -0.5 (-1.5..+0.4), simple -14.0 (-21.2..-8.8)" in text
    assert "but depth_6 is not better than depth_1 on cluttered scenes themselves" in text


def test_the_summary_states_the_scene_mix_of_each_split():
    from ecom2f.report.sections import _mix

    assert _mix(pd.Series({"cluttered": 128, "simple": 128})) == " (128 cluttered, 128 simple scenes)"
    assert _mix(pd.Series({"simple": 5})) == " (0 cluttered, 5 simple scenes)"
    assert _mix(None) == ""
