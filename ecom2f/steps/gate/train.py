"""Step 3: train one gate design on the cached depth table (no images), score what it realises.

A trial (:class:`GateTrial`) is one design (pooling, hidden layers, width, dropout), one loss
and one trade-off ``beta``. :func:`train_gate` trains an :class:`ecom2f.modeling.gate.Gate` on
the training images' cached features and, after every epoch, scores it on the validation
images by what it would realise: the per-image PQ at the exits it picks, read from the table
(:func:`realised_metrics`), beside the oracle's (:func:`reference_metrics`).

Losses over logits ``[B, E]`` (``u [B, E]`` = ``q_k - beta * cost_k`` of the batch's images):

- ``cross_entropy``: against the hard labels ``argmax_k u_k`` (ties toward fewer layers);
- ``soft_cross_entropy``: against ``softmax(u / temperature)``;
- ``expected_utility``: ``-sum_k p_k u_k`` with ``p = softmax(logits)``: the gate's own
  expected utility, so it weighs how much a wrong pick costs, not only whether it is wrong;
- ``regression``: the logits regress ``u`` (mean squared error); the pick is the largest.

Inputs are standardised with the training split's mean and standard deviation while training;
:func:`fold_standardisation` then folds that into the first linear layer, so the saved Gate
takes the model's raw pooled features (``EarlyExitMask2Former.predict(depth="gate")``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ecom2f.config.model import GateConfig
from ecom2f.modeling.gate import Gate
from ecom2f.steps.gate.data import GateTable, derive_labels, exit_costs, utilities
from ecom2f.steps.gate.store import load_gate

__all__ = [
    "LOSSES",
    "GateTrial",
    "bf16_is_native",
    "fold_standardisation",
    "gate_inputs",
    "gate_loss",
    "load_gate",
    "realised_metrics",
    "reference_metrics",
    "train_gate",
]


LOSSES = ("cross_entropy", "soft_cross_entropy", "expected_utility", "regression")
# Soft targets: softmax(u / T). PQ lies in [0, 1] and exits differ by a few hundredths of PQ,
# so T = 0.02 keeps the targets peaked on the best exits without being one-hot.
DEFAULT_TEMPERATURE = 0.02
EVAL_CHUNK = 65536  # validation images per forward pass (bounds memory at COCO scale)


@dataclasses.dataclass(frozen=True)
class GateTrial:
    """One point of the search: a gate design, its loss, its trade-off and its optimiser."""

    pooling: str = "mean"
    grid_size: int = 2
    hidden_layers: int = 0
    width: int = 64
    dropout: float = 0.0
    loss: str = "cross_entropy"
    beta: float = 0.0
    cost: str = "layers"  # what beta multiplies: layers, or encoder GFLOPs
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 30
    batch_size: int = 256
    temperature: float = DEFAULT_TEMPERATURE
    seed: int = 0
    # Training matmuls in bfloat16 ("bf16"), or "auto": bf16 for gates with hidden layers where the
    # CPU multiplies it natively (AMX or AVX512-BF16), 1.1-1.3x faster there; weights and validation stay fp32.
    precision: str = "fp32"
    # Stop once val_utility_gap has not improved for this many epochs (0: run every epoch).
    patience: int = 0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"gate loss {self.loss!r}: expected one of {list(LOSSES)}")
        if self.cost not in ("layers", "gflops"):
            raise ValueError(f"gate cost {self.cost!r}: expected 'layers' or 'gflops'")
        if self.temperature <= 0:
            raise ValueError(f"gate temperature {self.temperature} must be > 0")
        if self.precision not in ("fp32", "bf16", "auto"):
            raise ValueError(f"gate precision {self.precision!r}: expected fp32, bf16 or auto")
        if self.patience < 0:
            raise ValueError(f"gate patience {self.patience} must be >= 0 (0 turns early stopping off)")

    @classmethod
    def from_dict(cls, values: dict) -> GateTrial:
        """Build from a Tune config; unknown keys are an error (a typo would silently be ignored)."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown gate trial keys {unknown}; known: {sorted(known)}")
        return cls(**values)

    def gate_config(self, exits: list[int]) -> GateConfig:
        return GateConfig(
            exits=list(exits), pooling=self.pooling, grid_size=self.grid_size,
            hidden_layers=self.hidden_layers, hidden_dim=self.width, dropout=self.dropout,
        )


# ----------------------------------------------------------------------------- features


def gate_inputs(table: GateTable, pooling: str, grid_size: int) -> np.ndarray:
    """The cached features as the Gate's pooled input ``[N, F]`` for ``pooling``.

    ``mean`` and ``mean_max`` are the stored mean / concat(mean, max), exactly what
    :func:`~ecom2f.modeling.gate.pool_gate_features` computes. ``grid`` at the stored size G is
    the stored grid; at a smaller g dividing G, each g-cell is the average of its (G/g)^2
    stored cells, which equals pooling the map to g x g directly when the map's sides divide
    by G (otherwise adaptive pooling's uneven bins make it a close approximation).
    """
    if pooling == "mean":
        return table.mean
    if pooling == "mean_max":
        return np.concatenate((table.mean, table.max), axis=1)
    if pooling != "grid":
        raise ValueError(f"gate pooling {pooling!r}: expected mean, mean_max or grid")
    stored = table.grid_size
    if grid_size == stored:
        return table.grid
    if grid_size > stored or stored % grid_size:
        raise ValueError(
            f"gate grid size {grid_size} cannot be made from the stored {stored}x{stored} grid; use a divisor of "
            f"{stored} or rebuild step 2 with depth.gate_feature_grid a multiple of {grid_size}"
        )
    block = stored // grid_size
    cells = table.grid.reshape(len(table), grid_size, block, grid_size, block, table.channels)
    return cells.mean(axis=(2, 4), dtype=np.float32).reshape(len(table), -1)


def bf16_is_native() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX tiles or AVX512-BF16)."""
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def _tensor(array: np.ndarray) -> torch.Tensor:
    # Arrays shipped through Ray's object store are read-only; they are only ever read here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(array))


def fold_standardisation(gate: Gate, mean: torch.Tensor, std: torch.Tensor) -> Gate:
    """A copy of ``gate`` whose first linear layer takes raw features: ``W x' + b`` with
    ``x' = (x - mean) / std`` becomes ``(W / std) x + (b - (W / std) mean)``; the same logits
    (up to rounding) in eval mode."""
    folded = copy.deepcopy(gate)
    first = folded.hidden[0] if len(folded.hidden) else folded.head
    with torch.no_grad():
        scaled = first.weight / std
        first.bias -= scaled @ mean
        first.weight.copy_(scaled)
    return folded


# ----------------------------------------------------------------------------- losses


def gate_loss(name: str, logits: torch.Tensor, utility: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE):
    """Scalar loss of ``logits [B, E]`` against the batch's utilities ``u [B, E]`` (see module doc)."""
    if name == "cross_entropy":
        return F.cross_entropy(logits, utility.argmax(-1))
    if name == "soft_cross_entropy":
        targets = torch.softmax(utility / temperature, -1)
        return -(targets * torch.log_softmax(logits, -1)).sum(-1).mean()
    if name == "expected_utility":
        return -(torch.softmax(logits, -1) * utility).sum(-1).mean()
    if name == "regression":
        return F.mse_loss(logits, utility)
    raise ValueError(f"gate loss {name!r}: expected one of {list(LOSSES)}")


# ----------------------------------------------------------------------------- metrics


def realised_metrics(table: GateTable, positions: np.ndarray, picks: np.ndarray, beta: float,
                     cost: str = "layers") -> dict[str, float]:
    """What picking exit index ``picks [n]`` for images ``positions [n]`` gives, from the table:
    mean PQ, mean layers, mean encoder GFLOPs and mean utility ``q - beta * cost``."""
    rows = np.asarray(positions)
    picks = np.asarray(picks)
    costs = exit_costs(table, cost)[rows, picks]
    quality = table.pq[rows, picks].astype(np.float64)
    return {
        "pq": float(quality.mean()),
        "layers": float(table.exits[picks].mean()),
        "gflops": float(table.gflops[rows, picks].astype(np.float64).mean()),
        "utility": float((quality - beta * costs).mean()),
    }


def reference_metrics(table: GateTable, positions: np.ndarray, beta: float, cost: str = "layers") -> dict:
    """``{"oracle": metrics, "fixed_<k>": metrics per exit k}`` on the same images, same beta."""
    rows = np.asarray(positions)
    oracle = derive_labels(table, beta, cost)[rows]
    result = {"oracle": realised_metrics(table, rows, oracle, beta, cost)}
    for index, depth in enumerate(table.exits):
        result[f"fixed_{int(depth)}"] = realised_metrics(table, rows, np.full(len(rows), index), beta, cost)
    return result


# ----------------------------------------------------------------------------- training

# report(epoch, metrics, export, training_state) is called after every epoch: export() returns the
# gate as it would be saved (standardisation folded in, eval mode), training_state() what
# train_gate(resume=...) needs to continue exactly from this epoch. Returning False stops training.
Reporter = Callable[[int, dict, Callable[[], Gate], Callable[[], dict]], "bool | None"]


def _logits(gate: Gate, features: torch.Tensor, rows: np.ndarray, mean, std) -> torch.Tensor:
    gate.eval()
    with torch.no_grad():
        chunks = [gate((features[torch.as_tensor(rows[i:i + EVAL_CHUNK])] - mean) / std)
                  for i in range(0, len(rows), EVAL_CHUNK)]
    return torch.cat(chunks)


def train_gate(table: GateTable, train_rows: np.ndarray, val_rows: np.ndarray, trial: GateTrial,
               report: Reporter | None = None, resume: dict | None = None) -> tuple[Gate, dict]:
    """Train ``trial`` on images ``train_rows``, score on ``val_rows`` after every epoch.

    ``resume``: a ``training_state()`` a reporter was given (a Tune checkpoint's
    ``training_state.pt``): training continues after that epoch with the same weights, optimiser
    moments and random streams, so an interrupted trial ends where an uninterrupted one would.

    Returns the exported gate (raw-feature input, eval mode) and the last epoch's metrics:
    ``val_pq``, ``val_layers``, ``val_gflops``, ``val_utility``, ``val_accuracy`` (picks equal
    to the hard labels), the oracle's ``oracle_*`` on the same images, ``val_utility_gap``
    (oracle utility minus the gate's: comparable across betas, the search's objective),
    ``train_loss``, ``epoch``, ``seconds`` (training time, summed over resumptions). With
    ``trial.patience``, training stops once the validation objective ``val_utility_gap`` has not
    improved for that many epochs; the gate and metrics are then those of the last epoch run
    (what Tune saw last).
    """
    start = time.perf_counter()
    torch.manual_seed(trial.seed)
    generator = torch.Generator().manual_seed(trial.seed)
    features = _tensor(gate_inputs(table, trial.pooling, trial.grid_size))
    utility = torch.from_numpy(utilities(table, trial.beta, trial.cost).astype(np.float32))
    train_index = torch.as_tensor(np.asarray(train_rows, dtype=np.int64))
    train_features = features[train_index]
    mean = train_features.mean(0)
    std = train_features.std(0, unbiased=False).clamp_min(1e-6)
    del train_features

    gate = Gate(table.channels, trial.gate_config(table.exits.tolist()))
    optimizer = torch.optim.AdamW(gate.parameters(), lr=trial.lr, weight_decay=trial.weight_decay, fused=True)
    first_epoch, seconds_before, metrics = 1, 0.0, {}
    if resume is not None:
        if resume.get("trial") != dataclasses.asdict(trial):
            raise ValueError(f"the training state to resume is of trial {resume.get('trial')}, not {trial}")
        gate.load_state_dict(resume["gate"])
        optimizer.load_state_dict(resume["optimizer"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        first_epoch, metrics = resume["epoch"] + 1, resume["metrics"]
        seconds_before = metrics["seconds"]
    labels = derive_labels(table, trial.beta, trial.cost)
    oracle = reference_metrics(table, val_rows, trial.beta, trial.cost)["oracle"]
    steps_per_epoch = math.ceil(len(train_index) / trial.batch_size)
    # A linear gate's 256 x 5 products are too small to gain from bf16 (its casts cost more).
    bf16 = trial.precision == "bf16" or (trial.precision == "auto" and trial.hidden_layers > 0 and bf16_is_native())
    best_gap, stale = (resume or {}).get("best_gap", math.inf), (resume or {}).get("stale_epochs", 0)
    for epoch in range(first_epoch, trial.epochs + 1):
        if trial.patience and stale >= trial.patience:
            break
        gate.train()
        order = train_index[torch.randperm(len(train_index), generator=generator)]
        total = 0.0
        for step in range(steps_per_epoch):
            batch = order[step * trial.batch_size:(step + 1) * trial.batch_size]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = gate((features[batch] - mean) / std)
            loss = gate_loss(trial.loss, logits.float(), utility[batch], trial.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        picks = _logits(gate, features, np.asarray(val_rows), mean, std).argmax(-1).numpy()
        realised = realised_metrics(table, val_rows, picks, trial.beta, trial.cost)
        metrics = {
            **{f"val_{key}": value for key, value in realised.items()},
            "val_accuracy": float((picks == labels[np.asarray(val_rows)]).mean()),
            **{f"oracle_{key}": value for key, value in oracle.items()},
            "val_utility_gap": oracle["utility"] - realised["utility"],
            "train_loss": total / len(train_index),
            "epoch": epoch,
            "seconds": seconds_before + time.perf_counter() - start,
        }
        if metrics["val_utility_gap"] < best_gap - 1e-9:
            best_gap, stale = metrics["val_utility_gap"], 0
        else:
            stale += 1

        def training_state(epoch=epoch, metrics=metrics, best_gap=best_gap, stale=stale) -> dict:
            return {"trial": dataclasses.asdict(trial), "epoch": epoch, "metrics": dict(metrics),
                    "gate": copy.deepcopy(gate.state_dict()),
                    "optimizer": copy.deepcopy(optimizer.state_dict()), "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(), "best_gap": best_gap, "stale_epochs": stale}

        if report is not None and report(epoch, metrics, lambda: fold_standardisation(gate, mean, std).eval(),
                                         training_state) is False:
            break
    return fold_standardisation(gate, mean, std).eval(), metrics
