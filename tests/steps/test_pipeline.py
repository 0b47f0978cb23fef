"""The pipeline's skip logic: complete artifacts are not recomputed, a rerun resumes, a step that
returns without its artifact fails; the real steps' markers are the agreed paths."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from ecom2f import storage
from ecom2f.steps.pipeline import STEPS, Step, run_pipeline, summary_table
from tests.steps.conftest import tiny_config


def _recording_steps(calls: list[str], fail_at: str | None = None) -> tuple[Step, ...]:
    """The real steps' markers with stand-in work that records itself and writes the marker."""

    def runner(step: Step):
        def run(config):
            calls.append(step.name)
            if step.name == fail_at:
                raise RuntimeError(f"injected failure in {step.name}")
            storage.write_text(step.marker(config), "{}")

        return run

    return tuple(Step(step.name, step.marker, runner(step)) for step in STEPS)


def test_markers_are_the_agreed_artifacts(tiny_data_root, tmp_path):
    config = tiny_config(tiny_data_root, tmp_path / "runs")
    run = config.storage.layout().run_uri
    assert [(s.name, s.marker(config)) for s in STEPS] == [
        ("parent", f"{run}/parent/model_final.pth"),
        ("depth", f"{run}/depth/_SUCCESS.json"),
        ("gates", f"{run}/gates/_SUCCESS.json"),
        ("evaluate", f"{run}/eval/_SUCCESS.json"),
        ("report", f"{run}/report/_SUCCESS.json"),
    ]


def test_interrupted_run_resumes_and_complete_run_skips_everything(s3_bucket, tiny_data_root):
    config = tiny_config(tiny_data_root, f"{s3_bucket}/runs", "storage.run=pipeline")
    calls: list[str] = []
    with pytest.raises(RuntimeError, match="injected failure in gates"):
        run_pipeline(config, _recording_steps(calls, fail_at="gates"), echo=lambda _: None)
    assert calls == ["parent", "depth", "gates"]

    calls.clear()
    printed: list[str] = []
    result = run_pipeline(config, _recording_steps(calls), echo=printed.append)
    assert calls == ["gates", "evaluate", "report"]  # parent and depth were complete
    assert result.skipped == ["parent", "depth"] and result.ran == ["gates", "evaluate", "report"]
    assert printed[-1] == f"report: {config.storage.layout().report}/report.md"

    calls.clear()
    result = run_pipeline(config, _recording_steps(calls), echo=lambda _: None)
    assert calls == [] and result.skipped == [s.name for s in STEPS]

    # Deleting the last artifact reruns that step only.
    storage.delete(STEPS[4].marker(config))
    run_pipeline(config, _recording_steps(calls), echo=lambda _: None)
    assert calls == ["report"]

    # A step to redo under complete later steps (a parent to train again under its old gates) is
    # refused before anything runs, naming the stale folders.
    calls.clear()
    storage.delete(STEPS[0].marker(config))
    layout = config.storage.layout()
    with pytest.raises(RuntimeError, match=r"step parent has no artifact .* \['depth', 'gates', 'evaluate', "
                                           r"'report'\] are complete.*Delete .*/depth, .*/gates, .*/eval, .*/report"):
        run_pipeline(config, _recording_steps(calls), echo=lambda _: None)
    assert calls == []
    for folder in (layout.depth, layout.gates, layout.eval, layout.report):
        storage.delete(folder, recursive=True)
    run_pipeline(config, _recording_steps(calls), echo=lambda _: None)
    assert calls == [step.name for step in STEPS]


def test_a_step_that_does_not_write_its_artifact_fails(tiny_data_root, tmp_path):
    config = tiny_config(tiny_data_root, tmp_path / "runs")
    silent = (Step("parent", STEPS[0].marker, lambda c: None),)
    with pytest.raises(RuntimeError, match="step parent returned but .*model_final.pth is missing"):
        run_pipeline(config, silent, echo=lambda _: None)


def test_the_real_steps_are_skipped_when_complete_and_the_table_is_printed(tiny_data_root, tmp_path):
    """The default STEPS on a run whose artifacts all exist: no step runs (none could: no Ray here)."""
    config = tiny_config(tiny_data_root, tmp_path / "runs")
    for step in STEPS:
        storage.write_text(step.marker(config), "{}")
    summary = pd.DataFrame({
        "kind": ["fixed", "fixed", "oracle", "oracle_curve", "gate"],
        "variant": ["depth_2", "depth_6", "oracle", "oracle_beta=1", "layers_4.0"],
        "pq": [0.3, 0.4, 0.5, 0.3, 0.42], "mean_layers": [2.0, 6.0, 3.5, 2.0, 3.9],
        "mean_encoder_gflops": [0.02, 0.06, 0.035, 0.02, 0.039], "mean_total_gflops": [1.0, 1.04, 1.015, 1.0, 1.019],
        "estimate_pq": [None, None, None, None, 0.44],
    })
    buffer = io.BytesIO()
    summary.to_parquet(buffer, index=False)
    storage.write_bytes(storage.join(config.storage.layout().eval, "summary.parquet"), buffer.getvalue())
    printed: list[str] = []
    result = run_pipeline(config, echo=printed.append)
    assert result.ran == []
    table = printed[-2]
    assert table == summary_table(summary)
    lines = table.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["depth_2", "depth_6", "oracle", "layers_4.0"]
    assert lines[-1].split() == ["layers_4.0", "42.0", "3.9", "0.039", "1.019", "44.0"]
