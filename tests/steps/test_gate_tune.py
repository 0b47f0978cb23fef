"""Step 3 as a Ray job: Ray Tune on a local Ray cluster, the depth table and gates on moto S3."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecom2f import storage
from ecom2f.cli import main
from ecom2f.steps.gate.data import split_images
from ecom2f.steps.gate.metrics import realised_metrics
from ecom2f.steps.gate.store import load_gate
from ecom2f.steps.gate.tune import tune_gates
from tests.conftest import REPO_ROOT
from tests.steps.conftest import TINY_OVERRIDES, tiny_config
from tests.steps.test_gate_search import planted_table, write_depth_table

# "saturate": PQ 0.8 from the planted best exit on, 0.1 less per missing layer. beta 0 -> the
# oracle's mean depth is ~4 layers; beta 0.2 (> 0.1 gained per layer) -> always 2 layers.
SEARCH = [
    "gate.num_samples=2", "gate.betas=[0.0,0.2]", "gate.epochs=10", "gate.batch_size=64",
    "gate.asha.grace_period=2", "gate.poolings=[mean,mean_max]", "gate.hidden_layers=[1]", "gate.widths=[32]",
    "gate.losses=[cross_entropy,soft_cross_entropy]", "gate.lr=[0.003,0.01]", "gate.compute_budgets=[3.0,5.0]",
    "model.gate.exits=[2,3,4,5,6]",  # the planted table's exits
]


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_tune_on_s3_writes_gates_per_budget_that_load_back(ray_cluster, s3_bucket, tmp_path):
    config = tiny_config(tmp_path / "data", f"{s3_bucket}/runs", *SEARCH)
    layout = config.storage.layout()
    table = planted_table(1200, channels=config.model.pixel_decoder.conv_dim, shape="saturate")
    write_depth_table(table, layout.depth)

    gates_uri = tune_gates(config)
    assert gates_uri == layout.gates
    summary = json.loads(storage.read_text(layout.gates_success))
    assert summary["trials"] == 4 and summary["failed_trials"] == 0 and summary["unmet_budgets"] == []
    assert sorted(summary["gates"]) == ["layers_3", "layers_5"]

    results = pd.read_parquet(io.BytesIO(storage.read_bytes(layout.gates_results)))
    assert len(results) == 4 and sorted(results["beta"].unique()) == [0.0, 0.2]
    assert results["epochs_run"].between(2, 10).all() and results["error"].isna().all()
    _, val_rows = split_images(table.image_ids, config.gate.holdout_fraction, config.seed)
    picks = pd.read_parquet(io.BytesIO(storage.read_bytes(layout.gates_picks)))
    for name, budget in (("layers_3", 3.0), ("layers_5", 5.0)):
        gate, meta = load_gate(layout.gate(name))
        assert meta["budget"] == budget and meta["budget_unit"] == "layers"
        validation = meta["validation"]
        assert validation["val_layers"] <= budget
        fitting = results[results["val_layers"] <= budget]
        assert validation["val_pq"] == pytest.approx(fitting["val_pq"].max())
        assert meta["trial_id"] in set(fitting.loc[fitting["val_pq"] == fitting["val_pq"].max(), "trial_id"])
        assert gate.config.pooling == meta["trial"]["pooling"] and gate.config.exits == [2, 3, 4, 5, 6]
        # The saved gate, applied to the raw cached features, realises what gate.json says.
        mine = picks[(picks["gate"] == name) & (picks["split"] == "val")].set_index("image_id")
        chosen = np.searchsorted(table.exits, mine.loc[table.image_ids[val_rows], "exit"].to_numpy())
        realised = realised_metrics(table, val_rows, chosen, meta["beta"])
        assert realised["pq"] == pytest.approx(validation["val_pq"], abs=1e-6)
        assert meta["reference"]["oracle"]["pq"] == pytest.approx(validation["oracle_pq"])
    # The budgets pull toward different trade-offs: the tight one takes a cheap beta-0.2 gate,
    # the loose one a deep beta-0 gate close to that beta's oracle, far above 2 layers everywhere.
    tight, loose = (load_gate(layout.gate(n))[1] for n in ("layers_3", "layers_5"))
    assert tight["beta"] == 0.2 and tight["validation"]["val_layers"] < 2.5
    assert loose["beta"] == 0.0 and loose["validation"]["val_pq"] > loose["reference"]["fixed_2"]["pq"] + 0.1
    # ASHA stops trials on results that arrive asynchronously, so which trial survives may
    # vary between runs; every design in this search ends within 0.1 of the oracle.
    assert loose["validation"]["val_pq"] > loose["validation"]["oracle_pq"] - 0.1
    reference = pd.read_parquet(io.BytesIO(storage.read_bytes(storage.join(gates_uri, "reference.parquet"))))
    assert set(reference["policy"]) == {"oracle", "fixed_2", "fixed_3", "fixed_4", "fixed_5", "fixed_6"}
    assert storage.list_uris(storage.join(gates_uri, layout.gates_tune_name))  # Tune's own files went to the bucket too

    # A rerun finds _SUCCESS.json and returns without searching again.
    start = time.perf_counter()
    assert tune_gates(config) == gates_uri
    assert time.perf_counter() - start < 5


def test_cli_fails_early_without_a_depth_table(tmp_path, capsys):
    demo = str(REPO_ROOT / "configs" / "demo_cpu.yaml")
    assert main(["tune-gate", "--config", demo, "--storage", str(tmp_path), f"data.root={tmp_path}"]) == 2
    assert "run step 2 first" in capsys.readouterr().err
    config = tiny_config(tmp_path, tmp_path, "storage.run=demo")
    assert not storage.exists(config.storage.layout().gates_success)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_killed_search_resumes_with_tuner_restore(ray_cluster, tmp_path, caplog):
    """The driver of a search is killed (SIGKILL) once trials have checkpoints; the rerun restores
    the experiment (same trials), each unfinished trial continues from its checkpoint (its epoch
    stays equal to Tune's iteration count), and the search completes."""
    overrides = [*SEARCH, "gate.epochs=12", "gate.asha.grace_period=12", "gate.batch_size=32", "gate.patience=0",
                 f"ray.address={ray_cluster.get_runtime_context().gcs_address}"]
    config = tiny_config(tmp_path / "data", tmp_path / "runs", *overrides)
    layout = config.storage.layout()
    write_depth_table(planted_table(12_000, channels=config.model.pixel_decoder.conv_dim, shape="saturate"),
                      layout.depth)
    experiment = Path(layout.gates) / "tune"
    command = [sys.executable, "-m", "ray_jobs.tune_gate", "--config", str(REPO_ROOT / "configs" / "demo_cpu.yaml"),
               *TINY_OVERRIDES, f"data.root={tmp_path / 'data'}", f"storage.root={tmp_path / 'runs'}", *overrides]
    driver = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (list(experiment.glob("experiment_state-*.json")) and list(experiment.glob("*/checkpoint_*"))):
            assert driver.poll() is None, "the search ended before it could be interrupted"
            assert time.monotonic() < deadline, "no trial checkpointed within 120 s"
            time.sleep(0.05)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    trials_before = {path.name for path in experiment.iterdir() if path.is_dir()}
    assert trials_before and not storage.exists(layout.gates_success)
    # checkpoint_00000k holds epoch k + 1; a trial with checkpoints but short of 12 epochs was cut off.
    cut_off = [path.parent.name for path in experiment.glob("*/checkpoint_*")
               if max(int(c.name.split("_")[1]) for c in path.parent.glob("checkpoint_*")) < 11]
    assert cut_off, "the kill came after every checkpointed trial had finished"

    with caplog.at_level(logging.INFO, logger="ecom2f.steps.gate"):  # the search logs from ecom2f.steps.gate.search
        tune_gates(config)
    assert any("resuming the gate search" in record.getMessage() for record in caplog.records)
    summary = json.loads(storage.read_text(layout.gates_success))
    assert summary["trials"] == 4 and summary["failed_trials"] == 0
    trials_after = {path.name for path in experiment.iterdir() if path.is_dir()}
    assert trials_before <= trials_after and len(trials_after) == 4  # the same trials, none started anew
    results = pd.read_parquet(io.BytesIO(storage.read_bytes(layout.gates_results)))
    assert len(results) == 4 and results["error"].isna().all()
    for trial_dir in experiment.iterdir():
        if trial_dir.is_dir():
            reports = pd.read_json(trial_dir / "result.json", lines=True)
            # A trial restarted from scratch would report epoch 1 again at a later iteration.
            assert (reports["epoch"] == reports["training_iteration"]).all(), trial_dir.name
    for name in cut_off:  # the trials that were cut off ran to the end after the restore
        assert pd.read_json(experiment / name / "result.json", lines=True)["epoch"].max() == 12, name
