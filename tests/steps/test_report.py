"""The report: crafted evaluation summary and depth table -> report.md + PNGs on S3; the
figures hold the right series with the right numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecom2f import storage
from ecom2f.report.plots import FIXED_LABEL, ORACLE_LABEL, depth_histogram_figure, difficulty_figure, pareto_figure
from ecom2f.report.write import gates_vs_fixed, oracle_beats_fixed, oracle_vs_fixed, summary_markdown, write_report
from ecom2f.steps.depth.table import DepthTable
from tests.steps.conftest import tiny_config

EXITS = [2, 3, 4, 5, 6]


def _summary() -> pd.DataFrame:
    rows = []
    for k, pq in zip(range(1, 7), (0.30, 0.36, 0.40, 0.42, 0.43, 0.44)):
        rows.append({"kind": "fixed", "variant": f"depth_{k}", "pq": pq, "mean_layers": float(k)})
    # The oracle's beta sweep: (layers, PQ); at 3 layers it interpolates to 0.475.
    for name, kind, layers, pq in (("oracle", "oracle", 4.0, 0.50), ("oracle_beta=0.01", "oracle_curve", 2.0, 0.45),
                                   ("oracle_beta=1", "oracle_curve", 1.0, 0.30),
                                   ("oracle_beta=0.005", "oracle_curve", 6.0, 0.50)):
        rows.append({"kind": kind, "variant": name, "pq": pq, "mean_layers": layers})
    rows.append({"kind": "gate", "variant": "layers_3.0", "pq": 0.41, "mean_layers": 2.9, "estimate_pq": 0.43,
                 "pq_minus_estimate": -0.02})
    frame = pd.DataFrame(rows)
    frame["mean_encoder_gflops"] = 0.01 * frame["mean_layers"]
    frame["mean_total_gflops"] = 0.3 + frame["mean_encoder_gflops"]
    frame["pq_things"], frame["pq_stuff"] = frame["pq"] - 0.05, frame["pq"] + 0.05
    frame["seconds_per_image"] = np.where(frame["kind"].str.startswith("oracle"), np.nan, 0.01 * frame["mean_layers"])
    frame["images"] = 50
    return frame


def _depth_rows(images: int = 50) -> pd.DataFrame:
    """Image i needs ``need_i = 2 + floor(5 * difficulty_i)`` (clipped to 6) layers: q rises 0.1 per layer until
    then and stays flat, so at beta 0 the ideal exit is need_i (ties go to fewer layers); at beta 0.2 per
    layer a 0.1 gain no longer pays, so every image takes exit 2."""
    difficulty = np.linspace(0.0, 0.99, images)
    need = np.clip(2 + np.floor(5 * difficulty).astype(int), 2, 6)
    rows = [{"image_id": i, "exit": k, "pq": 0.3 + 0.1 * (min(k, need[i]) - 2), "encoder_gflops": 0.01 * k,
             "difficulty": difficulty[i], "loss": 1.0} for i in range(images) for k in EXITS]
    return pd.DataFrame(rows), need


def test_oracle_vs_fixed_interpolates_the_oracle_curve():
    comparison = oracle_vs_fixed(_summary()).set_index("variant")
    # Curve points (1, .30), (2, .45), (4, .50), (6, .50): at 3 layers .475, at 5 layers .50.
    assert comparison.loc["depth_3", "oracle_pq_at_equal_layers"] == pytest.approx(0.475)
    assert comparison.loc["depth_3", "margin"] == pytest.approx(0.075)
    assert comparison.loc["depth_1", "margin"] == pytest.approx(0.0)
    assert comparison.loc["depth_5", "oracle_pq_at_equal_layers"] == pytest.approx(0.50)
    assert oracle_beats_fixed(comparison.reset_index())


def test_a_cheaper_better_oracle_point_beats_deeper_fixed_depths():
    """Beta 0 with ties to fewer layers makes the oracle's best point cheap (here 2.5 layers): fixed
    depths beyond the curve's end compare with the best oracle point at their cost or less."""
    summary = _summary()
    summary = summary[~summary["variant"].isin(["oracle", "oracle_beta=0.005"])]
    comparison = oracle_vs_fixed(summary).set_index("variant")
    assert comparison.loc["depth_6", "oracle_pq_at_equal_layers"] == pytest.approx(0.45)  # (2, .45) is the best
    assert comparison.loc["depth_6", "margin"] == pytest.approx(0.45 - 0.44)
    worse = summary.assign(pq=np.where(summary["variant"] == "depth_4", 0.46, summary["pq"]))
    assert not oracle_beats_fixed(oracle_vs_fixed(worse))


def test_pareto_figure_holds_the_three_series():
    summary = _summary()
    lines = {line.get_label(): line for line in pareto_figure(summary).axes[0].get_lines()}
    assert FIXED_LABEL in lines and ORACLE_LABEL in lines
    gates = [label for label in lines if label.startswith("gate layers_3.0")]
    assert gates == ["gate layers_3.0 (2.90 layers)"]
    np.testing.assert_allclose(lines[FIXED_LABEL].get_xdata(), [0.01 * k for k in range(1, 7)])
    np.testing.assert_allclose(lines[FIXED_LABEL].get_ydata(), [30, 36, 40, 42, 43, 44])
    np.testing.assert_allclose(lines[ORACLE_LABEL].get_xdata(), [0.01, 0.02, 0.04, 0.06])  # sorted by cost
    np.testing.assert_allclose(lines[ORACLE_LABEL].get_ydata(), [30, 45, 50, 50])
    np.testing.assert_allclose(lines[gates[0]].get_xdata(), [0.029])
    np.testing.assert_allclose(lines[gates[0]].get_ydata(), [41])


def test_histogram_and_difficulty_figures_hold_the_derived_labels():
    from ecom2f.steps.depth.labels import derive_labels

    rows, need = _depth_rows()
    labels = {beta: derive_labels(rows, beta, cost="layers", exits=EXITS) for beta in (0.0, 0.2)}
    assert (labels[0.0]["label"].to_numpy() == need).all()
    axes = depth_histogram_figure(labels, EXITS).axes[0]
    heights = [patch.get_height() for patch in axes.patches]
    expected = [100 * np.mean(need == k) for k in EXITS] + [100.0, 0, 0, 0, 0]
    np.testing.assert_allclose(heights, expected)
    assert [t.get_text() for t in axes.get_legend().get_texts()] == [
        f"beta=0 (mean {need.mean():.2f} layers)", "beta=0.2 (mean 2.00 layers)"]

    difficulty = rows.groupby("image_id")["difficulty"].first()
    gate = pd.DataFrame({"difficulty": [0.1, 0.9], "depth": [2, 6]})
    lines = {line.get_label(): line for line in difficulty_figure(labels, difficulty, {"g": gate}).axes[0].get_lines()}
    assert set(lines) == {"ideal exit, beta=0", "ideal exit, beta=0.2", "gate g (validation images)"}
    assert np.all(np.diff(lines["ideal exit, beta=0"].get_ydata()) > 0), "harder images need more layers"
    np.testing.assert_allclose(lines["ideal exit, beta=0.2"].get_ydata(), 2.0)


def test_gates_compare_with_the_fixed_depth_curve_at_their_mean_cost():
    summary = _summary()
    deep = summary[summary["variant"] == "layers_3.0"].assign(variant="layers_4.0", pq=0.40, mean_layers=4.0)
    comparison = gates_vs_fixed(pd.concat([summary, deep])).set_index("variant")
    # 2.9 layers: between depth 2 (.36) and depth 3 (.40) -> .396; the gate's .41 is .014 above it.
    assert comparison.loc["layers_3.0", "fixed_curve_pq_at_equal_layers"] == pytest.approx(0.396)
    assert comparison.loc["layers_3.0", "margin"] == pytest.approx(0.014)
    # Exactly 4 layers: depth 4's .42; the gate's .40 is below the curve.
    assert comparison.loc["layers_4.0", "margin"] == pytest.approx(-0.02)
    assert gates_vs_fixed(summary[summary["kind"] != "gate"]).empty


def test_write_report_on_s3(s3_bucket, tiny_data_root):
    config = tiny_config(tiny_data_root, f"{s3_bucket}/runs", "storage.run=report", "gate.betas=[0.0,0.2]")
    rows, _ = _depth_rows()
    per_image = pd.DataFrame({"kind": ["gate", "gate"], "variant": ["layers_3.0"] * 2, "depth": [2, 6],
                              "difficulty": [0.1, 0.9]})
    uri = write_report(config, summary=_summary(), per_image=per_image, depth_table=DepthTable.from_rows(rows))
    layout = config.storage.layout()
    assert uri == layout.report_markdown == storage.join(layout.report, "report.md")
    for name in ("pareto", "depth_histogram", "difficulty"):
        assert layout.report_figure(name) == storage.join(layout.report, f"{name}.png")
        assert storage.read_bytes(layout.report_figure(name))[:8] == b"\x89PNG\r\n\x1a\n"
    assert storage.exists(layout.report_success)
    text = storage.read_text(uri)
    assert "oracle beats every deeper fixed depth: **yes**" in text
    assert "Gates vs the fixed-depth curve at equal mean layers" in text and "0.0140" in text
    assert "| layers_3.0 | gate | 41.00 |" in text and "| 43.00 | -2.00 |" in text
    assert "![PQ vs encoder GFLOPs](pareto.png)" in text and "beta 0.2: 2.00" in text


def test_summary_markdown_leaves_out_the_oracle_curve_unless_asked():
    table = summary_markdown(_summary())
    assert "oracle_beta" not in table and "| oracle | oracle | 50.00 |" in table
    assert "oracle_beta=1" in summary_markdown(_summary(), include_curve=True)


def test_write_report_reads_a_complete_depth_table_from_the_run(tmp_path, tiny_data_root):
    """Without ``depth_table``, the report reads the run's table (read_depth_table, rows only)
    once step 2's manifest says it is complete, and leaves the depth plots out before."""
    from ecom2f.steps.depth.table import DEPTH_SCHEMA_VERSION, shard_uri

    config = tiny_config(tiny_data_root, tmp_path / "runs", "storage.run=report", "gate.betas=[0.0,0.2]",
                         "model.gate.exits=[2,3,4,5,6]")
    layout = config.storage.layout()
    rows, need = _depth_rows()
    storage.write_bytes(shard_uri(layout.depth, "rows", 0),
                        rows.assign(schema_version=np.int16(DEPTH_SCHEMA_VERSION)).to_parquet(index=False))
    per_image = pd.DataFrame({"kind": ["gate"], "variant": ["layers_3.0"], "depth": [2], "difficulty": [0.1]})
    write_report(config, summary=_summary(), per_image=per_image)
    assert not storage.exists(layout.report_figure("depth_histogram"))  # no manifest: step 2 is not complete

    storage.write_text(layout.depth_success, "{}")
    text = storage.read_text(write_report(config, summary=_summary(), per_image=per_image))
    assert storage.exists(layout.report_figure("depth_histogram")) and storage.exists(layout.report_figure("difficulty"))
    assert f"beta 0: {need.mean():.2f}, beta 0.2: 2.00" in text
    assert "![histogram of ideal depths](depth_histogram.png)" in text
