"""Step 3 as a Ray job: Ray Tune searches gate designs x beta on the cached depth table.

``tune_gates(config) -> <run>/gates`` reads the depth table once, ships it to the trials once
(``tune.with_parameters`` puts it in the object store), and runs function trainables
(:func:`gate_trainable`) under ASHA. Every epoch a trial reports its validation metrics and its
gate as a checkpoint (Tune keeps the newest). The objective is ``val_utility_gap`` (the oracle's
utility minus the gate's, on the same images and beta), which, unlike the utility itself, is
comparable across betas, so ASHA may compare trials of different betas fairly.

Then, for every budget in ``gate.compute_budgets`` the best-PQ trial within it is saved under
``<run>/gates/<budget-name>/`` (:mod:`ecom2f.steps.gate.store`), with ``results.parquet`` (every
trial), ``reference.parquet`` (oracle and fixed depths per beta on the validation images),
``picks.parquet`` (each chosen gate's exit per image) and ``_SUCCESS.json`` last. A rerun
returns at once when ``_SUCCESS.json`` exists, and resumes an interrupted search otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time

import numpy as np
import pandas as pd
import torch

from ecom2f import storage
from ecom2f.config import Config
from ecom2f.steps.gate.data import GateTable, load_gate_table, split_images
from ecom2f.steps.gate.select import select_for_budgets
from ecom2f.steps.gate.store import GATE_JSON, GATE_WEIGHTS, load_gate, write_gate
from ecom2f.steps.gate.train import GateTrial, gate_inputs, realised_metrics, reference_metrics, train_gate

log = logging.getLogger(__name__)

__all__ = ["gate_trainable", "search_space", "tune_gates"]

TUNE_RUN_NAME = "tune"
SUCCESS_FILE = "_SUCCESS.json"
OBJECTIVE, OBJECTIVE_MODE = "val_utility_gap", "min"
TRAINING_STATE = "training_state.pt"  # in each trial checkpoint, beside the gate
TRIAL_KEYS = ("pooling", "grid_size", "hidden_layers", "width", "dropout", "loss", "beta", "lr")


def search_space(config: Config) -> dict:
    """Tune's ``param_space`` from the ``gate`` section: a random design per sample, and every
    beta (``grid_search``), so each trade-off gets ``gate.num_samples`` trials."""
    from ray import tune

    search = config.gate
    return {
        "pooling": tune.choice(list(search.poolings)),
        "grid_size": tune.choice(list(search.grid_sizes)),
        "hidden_layers": tune.choice(list(search.hidden_layers)),
        "width": tune.choice(list(search.widths)),
        "dropout": tune.choice(list(search.dropouts)),
        "loss": tune.choice(list(search.losses)),
        "beta": tune.grid_search(list(search.betas)),
        "lr": tune.loguniform(*search.lr),
        "epochs": search.epochs,
        "batch_size": search.batch_size,
        "cost": search.budget_unit,
        "temperature": search.temperature,
        "precision": search.precision,
        "patience": search.patience,
        "seed": config.seed,
    }


def gate_trainable(trial_config: dict, table: GateTable, train_rows: np.ndarray, val_rows: np.ndarray) -> None:
    """One Tune trial (runs in a Ray worker): train, report metrics and a checkpoint every epoch.

    The checkpoint holds the gate as it would be saved (``gate.pt``, ``gate.json``) and the
    training state (``training_state.pt``); a trial restored after an interruption
    (``Tuner.restore``) continues from it instead of starting over.
    """
    from ray import tune

    torch.set_num_threads(1)  # one CPU per trial; more threads only contend
    trial = GateTrial.from_dict(trial_config)
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = torch.load(os.path.join(folder, TRAINING_STATE), map_location="cpu", weights_only=True)
        log.info("trial resumes after epoch %d", resume["epoch"])

    def report(epoch: int, metrics: dict, export, training_state) -> None:
        with tempfile.TemporaryDirectory(prefix="ecom2f-gate-") as folder:
            write_gate(folder, export(), {"channels": table.channels, "beta": trial.beta, "cost": trial.cost,
                                          "trial": trial_config, "validation": metrics})
            torch.save(training_state(), os.path.join(folder, TRAINING_STATE))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    train_gate(table, train_rows, val_rows, trial, report, resume=resume)


# ----------------------------------------------------------------------------- the job


def _run_search(config: Config, table: GateTable, train_rows, val_rows):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from ecom2f.steps.ray_cluster import init_ray

    init_ray(config.ray.address)
    layout = config.storage.layout()
    filesystem, storage_path = storage.pyarrow_filesystem(layout.gates)
    trainable = tune.with_resources(
        tune.with_parameters(gate_trainable, table=table, train_rows=train_rows, val_rows=val_rows), {"cpu": 1}
    )
    experiment = f"{storage_path.rstrip('/')}/{TUNE_RUN_NAME}"
    if tune.Tuner.can_restore(experiment, storage_filesystem=filesystem):
        log.info("resuming the gate search at %s", experiment)
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=filesystem)
    else:
        scheduler = ASHAScheduler(
            time_attr="training_iteration", max_t=config.gate.epochs,
            grace_period=config.gate.asha.grace_period, reduction_factor=config.gate.asha.reduction_factor,
        )
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(config),
            tune_config=tune.TuneConfig(
                metric=OBJECTIVE, mode=OBJECTIVE_MODE, scheduler=scheduler, num_samples=config.gate.num_samples,
                # Seeded, so the same config samples the same designs (reproducible searches and tests).
                search_alg=BasicVariantGenerator(random_state=config.seed),
            ),
            run_config=tune.RunConfig(
                name=TUNE_RUN_NAME, storage_path=storage_path, storage_filesystem=filesystem,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
    return tuner.fit()


def _results_table(grid) -> tuple[pd.DataFrame, dict]:
    """One row per trial (its last report) and ``{trial_id: Result}``."""
    rows, by_id = [], {}
    for index, result in enumerate(grid):
        metrics = dict(result.metrics or {})
        trial_id = str(metrics.get("trial_id") or os.path.basename(str(result.path)) or index)
        by_id[trial_id] = result
        row = {"trial_id": trial_id, **{key: result.config.get(key) for key in TRIAL_KEYS}}
        row.update({key: value for key, value in metrics.items() if key.startswith(("val_", "oracle_"))})
        row.update(epochs_run=metrics.get("epoch"), train_loss=metrics.get("train_loss"),
                   seconds=metrics.get("seconds"), error=repr(result.error) if result.error else None)
        rows.append(row)
    return pd.DataFrame(rows), by_id


def _reference_table(config: Config, table: GateTable, val_rows) -> pd.DataFrame:
    rows = []
    for beta in config.gate.betas:
        for policy, metrics in reference_metrics(table, val_rows, beta, config.gate.budget_unit).items():
            rows.append({"beta": beta, "policy": policy, **metrics})
    return pd.DataFrame(rows)


def _write_parquet(frame: pd.DataFrame, uri: str) -> None:
    storage.write_bytes(uri, frame.to_parquet(index=False))


def tune_gates(config: Config) -> str:
    """Run step 3 for ``config``'s run; returns ``<run>/gates`` (see module doc)."""
    layout = config.storage.layout()
    success = storage.join(layout.gates, SUCCESS_FILE)
    storage.preflight(layout.run_uri)
    if storage.exists(success):
        log.info("step 3 is complete (%s exists); nothing to search", success)
        return layout.gates
    layout.create()
    start = time.perf_counter()
    table = load_gate_table(layout.depth, config.model.gate.exits)
    if table.channels != config.model.pixel_decoder.conv_dim:
        raise ValueError(
            f"the depth table's gate features have {table.channels} channels but model.pixel_decoder.conv_dim is "
            f"{config.model.pixel_decoder.conv_dim}; the table was built with another model: rebuild step 2"
        )
    train_rows, val_rows = split_images(table.image_ids, config.gate.holdout_fraction, config.seed)
    log.info("gate search on %d images (%d train, %d validation), exits %s",
             len(table), len(train_rows), len(val_rows), table.exits.tolist())
    grid = _run_search(config, table, train_rows, val_rows)
    results, by_id = _results_table(grid)
    if results.empty or results["val_pq"].isna().all():
        errors = [repr(r.error) for r in grid if r.error][:3]
        raise RuntimeError(f"no gate trial finished an epoch; first errors: {errors}")
    unit = config.gate.budget_unit
    if config.gate.compute_budgets:
        chosen = select_for_budgets(results, list(config.gate.compute_budgets), unit)
    else:  # no budgets: one gate per beta, the trial closest to that beta's oracle
        chosen = {}
        for beta, trials in results.dropna(subset=[OBJECTIVE]).groupby("beta"):
            best = trials.sort_values([OBJECTIVE, "trial_id"]).iloc[0].to_dict()
            chosen[f"beta_{beta:g}"] = {"budget": None, "unit": unit, "trial": best}

    split = {"seed": config.seed, "holdout_fraction": config.gate.holdout_fraction,
             "train_images": int(len(train_rows)), "val_images": int(len(val_rows))}
    validation = np.zeros(len(table), dtype=bool)
    validation[val_rows] = True
    picks, saved, unmet = [], {}, []
    for name, choice in chosen.items():
        row = choice["trial"]
        if row is None:
            log.warning("no trial fits the budget %s (%s); no gate saved for it", choice["budget"], unit)
            unmet.append(name)
            continue
        with tempfile.TemporaryDirectory(prefix="ecom2f-chosen-") as local:
            by_id[row["trial_id"]].checkpoint.to_directory(local)
            gate, metadata = load_gate(local)
        metadata.update(budget=choice["budget"], budget_unit=unit, name=name, trial_id=row["trial_id"],
                        depth_table=layout.depth, split=split,
                        reference=reference_metrics(table, val_rows, metadata["beta"], metadata["cost"]))
        target = storage.join(layout.gates, name)
        write_gate(target, gate, metadata)
        saved[name] = {"uri": target, "trial_id": row["trial_id"], "beta": metadata["beta"],
                       "val_pq": metadata["validation"]["val_pq"],
                       "val_layers": metadata["validation"]["val_layers"],
                       "val_gflops": metadata["validation"]["val_gflops"]}
        with torch.no_grad():
            features = torch.from_numpy(np.ascontiguousarray(gate_inputs(table, gate.config.pooling,
                                                                         gate.config.grid_size)))
            chosen_index = gate(features).argmax(-1).numpy()
        picks.append(pd.DataFrame({
            "gate": name, "image_id": table.image_ids, "split": np.where(validation, "val", "train"),
            "exit": table.exits[chosen_index].astype(np.int16), "difficulty": table.difficulty,
        }))
        check = realised_metrics(table, val_rows, chosen_index[val_rows], metadata["beta"], metadata["cost"])
        log.info("gate %s: trial %s, beta %g, validation PQ %.4f at %.2f layers (%.3f GFLOPs); table says %.4f",
                 name, row["trial_id"], metadata["beta"], saved[name]["val_pq"], saved[name]["val_layers"],
                 saved[name]["val_gflops"], check["pq"])

    _write_parquet(results, storage.join(layout.gates, "results.parquet"))
    _write_parquet(_reference_table(config, table, val_rows), storage.join(layout.gates, "reference.parquet"))
    if picks:
        _write_parquet(pd.concat(picks, ignore_index=True), storage.join(layout.gates, "picks.parquet"))
    summary = {"gates": saved, "unmet_budgets": unmet, "budget_unit": unit, "trials": int(len(results)),
               "failed_trials": int(results["error"].notna().sum()), "split": split,
               "files": [GATE_WEIGHTS, GATE_JSON], "seconds": time.perf_counter() - start}
    storage.write_text(success, json.dumps(summary, indent=2, sort_keys=True))
    return layout.gates
