"""One point of step 3's search: a gate design, its loss, its trade-off and its optimiser."""

from __future__ import annotations

import dataclasses

from ecom2f import tradeoff
from ecom2f.config.model import GateConfig

__all__ = ["DEFAULT_TEMPERATURE", "LOSSES", "GateTrial"]

LOSSES = ("cross_entropy", "soft_cross_entropy", "expected_utility", "regression")
# Soft targets: softmax(u / T). PQ lies in [0, 1] and exits differ by a few hundredths of PQ,
# so T = 0.02 keeps the targets peaked on the best exits without being one-hot.
DEFAULT_TEMPERATURE = 0.02


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
        if self.cost not in tradeoff.COST_UNITS:
            raise ValueError(f"gate cost {self.cost!r}: expected one of {list(tradeoff.COST_UNITS)}")
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
