"""Step 3: train one gate design on the cached depth table (no images), score what it realises.

A trial (:class:`~ecom2f.steps.gate.trial.GateTrial`) is one design (pooling, hidden layers,
width, dropout), one loss (:mod:`ecom2f.steps.gate.losses`) and one trade-off ``beta``.
:func:`train_gate` trains an :class:`ecom2f.modeling.gate.Gate` on the training images' cached
features and, after every epoch, scores it on the validation images by what it would realise:
the per-image PQ at the exits it picks, read from the table, beside the oracle's
(:mod:`ecom2f.steps.gate.metrics`).

The loop is written in parts: :func:`_build` (inputs, standardisation, targets, gate,
optimiser), :func:`_restore` (a resumed trial), :func:`_batches` (one epoch's loader),
:func:`_train_step`, :func:`_validate`, :func:`_training_state` (what a checkpoint saves) and
:func:`_export`. Inputs are standardised with the training split's mean and standard deviation
while training; :func:`~ecom2f.steps.gate.features.fold_standardisation` then folds that into the
first linear layer, so the saved Gate takes the model's raw pooled features
(``EarlyExitMask2Former.predict(depth="gate")``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import time
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch

from ecom2f import tradeoff
from ecom2f.modeling.gate import Gate
from ecom2f.steps.gate.data import GateTable
from ecom2f.steps.gate.features import fold_standardisation, gate_inputs
from ecom2f.steps.gate.losses import gate_loss
from ecom2f.steps.gate.metrics import realised_metrics, reference_metrics
from ecom2f.steps.gate.trial import GateTrial

__all__ = ["Reporter", "bf16_is_native", "train_gate"]

EVAL_CHUNK = 65536  # validation images per forward pass (bounds memory at COCO scale)

# report(epoch, metrics, export, training_state) is called after every epoch: export() returns the
# gate as it would be saved (standardisation folded in, eval mode), training_state() what
# train_gate(resume=...) needs to continue exactly from this epoch. Returning False stops training.
Reporter = Callable[[int, dict, Callable[[], Gate], Callable[[], dict]], "bool | None"]


def bf16_is_native() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX tiles or AVX512-BF16)."""
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def _tensor(array: np.ndarray) -> torch.Tensor:
    # Arrays shipped through Ray's object store are read-only; they are only ever read here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(array))


@dataclasses.dataclass
class _Targets:
    """What the trade-off asks of each image (N images, E exits): ``utility [N, E]`` float32,
    ``labels [N]`` int64 (ideal exit index, ties to fewer layers), ``soft [N, E]`` float32."""

    utility: torch.Tensor
    labels: torch.Tensor
    soft: torch.Tensor


def _targets(table: GateTable, trial: GateTrial) -> _Targets:
    # From the table's own values (float32 PQ), so the tie rule sees their rounding (ecom2f.tradeoff).
    quality, cost = table.pq, table.cost(trial.cost)
    utility = tradeoff.utilities(quality, cost, trial.beta)
    return _Targets(
        utility=torch.from_numpy(utility.astype(np.float32)),
        labels=torch.from_numpy(tradeoff.ideal_exits(quality, cost, trial.beta)),
        soft=torch.from_numpy(tradeoff.soft_targets(utility, trial.temperature).astype(np.float32)),
    )


@dataclasses.dataclass
class _Run:
    """One trial's training: fixed inputs (``features [N, F]``, the training split's ``mean``/``std``
    ``[F]``, the image positions, targets, the oracle's validation metrics) and the evolving state."""

    trial: GateTrial
    table: GateTable
    features: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    train_index: torch.Tensor
    val_rows: np.ndarray
    targets: _Targets
    oracle: dict
    gate: Gate
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    bf16: bool
    first_epoch: int = 1
    seconds_before: float = 0.0
    best_gap: float = math.inf
    stale: int = 0
    metrics: dict = dataclasses.field(default_factory=dict)


def _build(table: GateTable, train_rows: np.ndarray, val_rows: np.ndarray, trial: GateTrial) -> _Run:
    torch.manual_seed(trial.seed)  # the gate's initial weights, then dropout
    generator = torch.Generator().manual_seed(trial.seed)  # the shuffling
    features = _tensor(gate_inputs(table, trial.pooling, trial.grid_size))
    train_index = torch.as_tensor(np.asarray(train_rows, dtype=np.int64))
    train_features = features[train_index]
    mean, std = train_features.mean(0), train_features.std(0, unbiased=False).clamp_min(1e-6)
    gate = Gate(table.channels, trial.gate_config(table.exits.tolist()))
    optimizer = torch.optim.AdamW(gate.parameters(), lr=trial.lr, weight_decay=trial.weight_decay, fused=True)
    # A linear gate's 256 x 5 products are too small to gain from bf16 (its casts cost more).
    bf16 = trial.precision == "bf16" or (trial.precision == "auto" and trial.hidden_layers > 0 and bf16_is_native())
    val_rows = np.asarray(val_rows)
    oracle = reference_metrics(table, val_rows, trial.beta, trial.cost)["oracle"]
    return _Run(trial, table, features, mean, std, train_index, val_rows, _targets(table, trial), oracle, gate,
                optimizer, generator, bf16)


def _restore(run: _Run, resume: dict) -> None:
    """Continue after the epoch ``resume`` (a ``training_state()``) was taken at: weights, optimiser
    moments, random streams, early-stopping counters."""
    if resume.get("trial") != dataclasses.asdict(run.trial):
        raise ValueError(f"the training state to resume is of trial {resume.get('trial')}, not {run.trial}")
    run.gate.load_state_dict(resume["gate"])
    run.optimizer.load_state_dict(resume["optimizer"])
    run.generator.set_state(resume["generator"])
    torch.set_rng_state(resume["torch_rng"])
    run.first_epoch, run.metrics = resume["epoch"] + 1, resume["metrics"]
    run.seconds_before = run.metrics["seconds"]
    run.best_gap, run.stale = resume.get("best_gap", math.inf), resume.get("stale_epochs", 0)


def _batches(run: _Run) -> Iterator[torch.Tensor]:
    """One epoch's training batches (image positions ``[B]``), shuffled by the trial's generator."""
    order = run.train_index[torch.randperm(len(run.train_index), generator=run.generator)]
    size = run.trial.batch_size
    for begin in range(0, len(order), size):
        yield order[begin:begin + size]


def _train_step(run: _Run, batch: torch.Tensor) -> float:
    """One optimiser step on ``batch``; returns the batch's summed loss."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=run.bf16):
        logits = run.gate((run.features[batch] - run.mean) / run.std)
    targets = run.targets
    loss = gate_loss(run.trial.loss, logits.float(), targets.utility[batch], run.trial.temperature,
                     labels=targets.labels[batch], targets=targets.soft[batch])
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    return float(loss.detach()) * len(batch)


def _picks(run: _Run) -> np.ndarray:
    """``[n_val]`` the gate's exit index for each validation image (eval mode, in chunks)."""
    run.gate.eval()
    rows = run.val_rows
    with torch.no_grad():
        chunks = [run.gate((run.features[torch.as_tensor(rows[i:i + EVAL_CHUNK])] - run.mean) / run.std)
                  for i in range(0, len(rows), EVAL_CHUNK)]
    return torch.cat(chunks).argmax(-1).numpy()


def _validate(run: _Run, epoch: int, train_loss: float, seconds: float) -> dict:
    picks = _picks(run)
    realised = realised_metrics(run.table, run.val_rows, picks, run.trial.beta, run.trial.cost)
    return {
        **{f"val_{key}": value for key, value in realised.items()},
        "val_accuracy": float((picks == run.targets.labels.numpy()[run.val_rows]).mean()),
        **{f"oracle_{key}": value for key, value in run.oracle.items()},
        "val_utility_gap": run.oracle["utility"] - realised["utility"],
        "train_loss": train_loss,
        "epoch": epoch,
        "seconds": seconds,
    }


def _note_progress(run: _Run, metrics: dict) -> None:
    run.metrics = metrics
    if metrics["val_utility_gap"] < run.best_gap - 1e-9:
        run.best_gap, run.stale = metrics["val_utility_gap"], 0
    else:
        run.stale += 1


def _training_state(run: _Run, epoch: int, metrics: dict, best_gap: float, stale: int) -> dict:
    """What ``train_gate(resume=...)`` needs to continue after ``epoch`` (taken when called)."""
    return {"trial": dataclasses.asdict(run.trial), "epoch": epoch, "metrics": dict(metrics),
            "gate": copy.deepcopy(run.gate.state_dict()), "optimizer": copy.deepcopy(run.optimizer.state_dict()),
            "generator": run.generator.get_state(), "torch_rng": torch.get_rng_state(), "best_gap": best_gap,
            "stale_epochs": stale}


def _export(run: _Run) -> Gate:
    """The gate as saved: standardisation folded in (raw-feature input), eval mode."""
    return fold_standardisation(run.gate, run.mean, run.std).eval()


def train_gate(table: GateTable, train_rows: np.ndarray, val_rows: np.ndarray, trial: GateTrial,
               report: Reporter | None = None, resume: dict | None = None) -> tuple[Gate, dict]:
    """Train ``trial`` on images ``train_rows``, score on ``val_rows`` after every epoch.

    ``resume``: a ``training_state()`` a reporter was given (a Tune checkpoint's training state):
    training continues after that epoch with the same weights, optimiser moments and random
    streams, so an interrupted trial ends where an uninterrupted one would.

    Returns the exported gate (raw-feature input, eval mode) and the last epoch's metrics:
    ``val_pq``, ``val_layers``, ``val_gflops``, ``val_utility``, ``val_accuracy`` (picks equal
    to the hard labels), the oracle's ``oracle_*`` on the same images, ``val_utility_gap``
    (oracle utility minus the gate's: comparable across betas, the search's objective),
    ``train_loss``, ``epoch``, ``seconds`` (training time, summed over resumptions). With
    ``trial.patience``, training stops once ``val_utility_gap`` has not improved for that many
    epochs; the gate and metrics are then those of the last epoch run (what Tune saw last).
    """
    start = time.perf_counter()
    run = _build(table, train_rows, val_rows, trial)
    if resume is not None:
        _restore(run, resume)
    for epoch in range(run.first_epoch, trial.epochs + 1):
        if trial.patience and run.stale >= trial.patience:
            break
        run.gate.train()
        total = sum(_train_step(run, batch) for batch in _batches(run))
        seconds = run.seconds_before + time.perf_counter() - start
        _note_progress(run, _validate(run, epoch, total / len(run.train_index), seconds))
        state = functools.partial(_training_state, run, epoch, run.metrics, run.best_gap, run.stale)
        if report is not None and report(epoch, run.metrics, functools.partial(_export, run), state) is False:
            break
    return _export(run), run.metrics
