"""Step 3's input: the depth table (step 2) as the gate sees it, and the train/validation split.

:class:`GateTable` is the part of a :class:`~ecom2f.steps.depth.table.DepthTable` a gate trains
on: the gate's exits only (ascending), PQ with undefined values counted as the trade-off counts
them, encoder GFLOPs, and the pooled gate features (``gate_mean [C]``, ``gate_max [C]``,
``gate_grid [G*G*C]``: the coarsest encoder input map pooled as
:func:`ecom2f.modeling.gate.pool_gate_features` pools it). Every array is aligned by image
(sorted image ids), so the gate trains with plain tensor indexing, no pandas in the loop, and
Ray ships only these arrays to the trials.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ecom2f import tradeoff
from ecom2f.steps.depth.table import DepthTable, DepthTableError, read_depth_table

__all__ = ["GateTable", "load_gate_table", "split_images"]


@dataclasses.dataclass
class GateTable:
    """Per-image arrays; N images, E gate exits, C channels, G the stored grid size.

    ``image_ids [N]`` int64 (sorted), ``exits [E]`` int64 (ascending), ``pq [N, E]`` float32
    (per-image PQ at each exit, undefined counted as ``tradeoff.NAN_QUALITY``), ``gflops [N, E]``
    float32 (encoder GFLOPs at each exit), ``mean [N, C]``, ``max [N, C]``, ``grid [N, G*G*C]``
    float32, ``difficulty [N]`` float32 (NaN when the data has none).
    """

    image_ids: np.ndarray
    exits: np.ndarray
    pq: np.ndarray
    gflops: np.ndarray
    mean: np.ndarray
    max: np.ndarray
    grid: np.ndarray
    grid_size: int
    difficulty: np.ndarray

    @property
    def channels(self) -> int:
        return self.mean.shape[1]

    def __len__(self) -> int:
        return len(self.image_ids)

    def cost(self, unit: str = "layers") -> np.ndarray:
        """``[N, E]`` cost of each exit: its layer count (float64), or its encoder GFLOPs (float32)."""
        return tradeoff.exit_costs(unit, self.exits, self.gflops)

    @classmethod
    def from_depth(cls, depth: DepthTable, exits: list[int]) -> GateTable:
        """The gate's view of ``depth`` (read with its features) at the gate's ``exits``."""
        if len(depth) == 0:
            raise DepthTableError("the depth table has no rows; rerun step 2 (`ecom2f build-depth`)")
        depth = depth.select_exits(exits)
        mean, maxima, grid = (depth.features(kind) for kind in ("mean", "max", "grid"))
        channels = mean.shape[1]
        grid_size = round((grid.shape[1] // max(channels, 1)) ** 0.5)
        if grid_size * grid_size * channels != grid.shape[1] or maxima.shape[1] != channels:
            raise DepthTableError(
                f"gate feature sizes disagree: gate_mean {channels}, gate_max {maxima.shape[1]}, gate_grid "
                f"{grid.shape[1]} (expected G*G*{channels} for a square grid G); rebuild step 2"
            )
        return cls(
            image_ids=depth.image_ids.astype(np.int64), exits=depth.exits.astype(np.int64),
            pq=tradeoff.defined_quality(depth.quality("pq")).astype(np.float32),
            gflops=depth.cost("gflops").astype(np.float32), mean=mean, max=maxima, grid=grid,
            grid_size=grid_size, difficulty=depth.difficulty.astype(np.float32),
        )


def load_gate_table(depth_uri: str, exits: list[int]) -> GateTable:
    """The depth table at ``depth_uri`` (read by ``read_depth_table``: schema version checked, one
    row per (image, exit), features for every image) at the gate's ``exits`` (any order)."""
    return GateTable.from_depth(read_depth_table(depth_uri), exits)


def split_images(image_ids: np.ndarray, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_positions, validation_positions)``: a seeded permutation of the sorted image ids.

    The same ids, fraction and seed always give the same split, whatever order the rows came in.
    """
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction {holdout_fraction} must be in (0, 1)")
    count = len(image_ids)
    holdout = round(count * holdout_fraction)
    if count < 2 or holdout < 1 or holdout >= count:
        raise ValueError(
            f"cannot split {count} images with holdout_fraction {holdout_fraction}: each side needs at least "
            "one image; use more images (step 2) or another gate.holdout_fraction"
        )
    order = np.argsort(image_ids, kind="stable")
    permuted = order[np.random.default_rng(seed).permutation(count)]
    return np.sort(permuted[holdout:]), np.sort(permuted[:holdout])
