"""Step 3's search on Ray Tune: gate designs x betas as function trainables under ASHA.

The depth table is shipped to the trials once (``tune.with_parameters`` puts it in the object
store). Every epoch a trial reports its validation metrics and its gate as a checkpoint (Tune
keeps the newest); the objective is ``val_utility_gap`` (the oracle's utility minus the gate's,
on the same images and beta), which, unlike the utility itself, is comparable across betas, so
ASHA may compare trials of different betas fairly. An interrupted search is restored
(``Tuner.restore``) and each unfinished trial continues from its checkpoint.
"""

from __future__ import annotations

import logging
import os
import tempfile

import numpy as np
import pandas as pd
import torch

from ecom2f import storage
from ecom2f.config import Config
from ecom2f.steps.gate.data import GateTable
from ecom2f.steps.gate.store import write_gate
from ecom2f.steps.gate.train import train_gate
from ecom2f.steps.gate.trial import GateTrial
from ecom2f.storage.layout import GATE_TRAINING_STATE

log = logging.getLogger(__name__)

__all__ = ["OBJECTIVE", "gate_trainable", "results_table", "run_search", "search_space"]

OBJECTIVE, OBJECTIVE_MODE = "val_utility_gap", "min"
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

    The checkpoint holds the gate as it would be saved (``store.write_gate``) and the training
    state; a trial restored after an interruption (``Tuner.restore``) continues from it instead
    of starting over.
    """
    from ray import tune

    torch.set_num_threads(1)  # one CPU per trial; more threads only contend
    # One INFO line per epoch and trial ("Checkpoint successfully created at ...") would bury the search's output.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    # The object store hands out read-only arrays; torch warns on (and must not write to) them.
    train_rows, val_rows = np.array(train_rows), np.array(val_rows)
    trial = GateTrial.from_dict(trial_config)
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = torch.load(os.path.join(folder, GATE_TRAINING_STATE), map_location="cpu", weights_only=True)
        log.info("trial resumes after epoch %d", resume["epoch"])

    def report(epoch: int, metrics: dict, export, training_state) -> None:
        with tempfile.TemporaryDirectory(prefix="ecom2f-gate-") as folder:
            write_gate(folder, export(), {"channels": table.channels, "beta": trial.beta, "cost": trial.cost,
                                          "trial": trial_config, "validation": metrics})
            torch.save(training_state(), os.path.join(folder, GATE_TRAINING_STATE))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    train_gate(table, train_rows, val_rows, trial, report, resume=resume)


def _new_tuner(config: Config, trainable, storage_path: str, filesystem):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    scheduler = ASHAScheduler(
        time_attr="training_iteration", max_t=config.gate.epochs,
        grace_period=config.gate.asha.grace_period, reduction_factor=config.gate.asha.reduction_factor,
    )
    return tune.Tuner(
        trainable,
        param_space=search_space(config),
        tune_config=tune.TuneConfig(
            metric=OBJECTIVE, mode=OBJECTIVE_MODE, scheduler=scheduler, num_samples=config.gate.num_samples,
            # Seeded, so the same config samples the same designs (reproducible searches and tests).
            search_alg=BasicVariantGenerator(random_state=config.seed),
        ),
        run_config=tune.RunConfig(
            name=config.storage.layout().gates_tune_name, storage_path=storage_path, storage_filesystem=filesystem,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,  # no trial status tables: step 3 logs its own summary
        ),
    )


# AWS credentials Ray Tune copies from the driver's environment into every trial's runtime_env.
CREDENTIAL_VARIABLES = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN",
                                  "AWS_SESSION_TOKEN"})


def keep_credentials_out_of_runtime_envs() -> None:
    """Stops Ray Tune from putting the driver's AWS credentials in its trials' runtime_env.

    Ray 2.60's Tune copies them there (``ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE``),
    and Ray's runtime-env agent logs every runtime_env it creates in plain text
    (``<session>/logs/runtime_env_agent.log``): the secret key would be on every node's disk. The
    trials then take their credentials as every other Ray worker of ecom2f does (steps 1 and 2:
    the node's environment or instance role), and the run's S3 settings from ``worker_config``.
    """
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = frozenset(class_cache.ENV_VARS_TO_PROPAGATE) - CREDENTIAL_VARIABLES


def run_search(config: Config, table: GateTable, train_rows: np.ndarray, val_rows: np.ndarray):
    """Run (or resume) the search on the Ray cluster of ``ray.address``; returns Tune's ResultGrid."""
    from ray import tune

    from ecom2f.steps.ray_cluster import init_ray

    init_ray(config.ray.address)
    keep_credentials_out_of_runtime_envs()
    layout = config.storage.layout()
    filesystem, storage_path = storage.pyarrow_filesystem(layout.gates)
    trainable = tune.with_resources(
        tune.with_parameters(gate_trainable, table=table, train_rows=train_rows, val_rows=val_rows), {"cpu": 1}
    )
    experiment = f"{storage_path.rstrip('/')}/{layout.gates_tune_name}"
    if tune.Tuner.can_restore(experiment, storage_filesystem=filesystem):
        log.info("resuming the gate search at %s", experiment)
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=filesystem)
    else:
        tuner = _new_tuner(config, trainable, storage_path, filesystem)
    return tuner.fit()


def results_table(grid) -> tuple[pd.DataFrame, dict]:
    """One row per trial of Tune's ResultGrid (its settings and last report) and ``{trial_id: Result}``."""
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
