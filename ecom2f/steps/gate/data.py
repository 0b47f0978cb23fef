"""Step 3's input: the depth table (step 2) as dense per-image arrays, labels and the split.

The depth table (see docs/gate_search.md for its schema) is ``<run>/depth/rows/*.parquet``, one
row per (image_id, exit), and ``<run>/depth/features/*.parquet``, one row per image with the
gate features: ``gate_mean [C]``, ``gate_max [C]`` and ``gate_grid [G*G*C]``, the coarsest
encoder input map pooled as :func:`ecom2f.modeling.gate.pool_gate_features` pools it (cell by
cell, row-major, the C channels of a cell together).

:func:`load_gate_table` turns them into a :class:`GateTable`: every array is aligned by image
(sorted image ids) and, for the per-exit ones, by the gate's exits (sorted ascending), so the
gate can be trained with plain tensor indexing, no pandas in the loop.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ecom2f import storage
from ecom2f.steps.depth.labels import NAN_QUALITY

log = logging.getLogger(__name__)

__all__ = ["GateTable", "derive_labels", "exit_costs", "load_gate_table", "split_images", "utilities"]

ROW_COLUMNS = ("image_id", "exit", "pq", "encoder_gflops")
FEATURE_COLUMNS = ("image_id", "gate_mean", "gate_max", "gate_grid")


@dataclasses.dataclass
class GateTable:
    """Per-image arrays; N images, E gate exits, C channels, G the stored grid size.

    ``image_ids [N]`` int64 (sorted), ``exits [E]`` int64 (ascending), ``pq [N, E]`` float32
    (per-image PQ at each exit), ``gflops [N, E]`` float32 (encoder GFLOPs at each exit),
    ``mean [N, C]``, ``max [N, C]``, ``grid [N, G*G*C]`` float32, ``difficulty [N]`` float32
    (NaN when the data has none).
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


# ----------------------------------------------------------------------------- loading


def _read_parquet_folder(uri: str, columns: list[str]):
    """All ``*.parquet`` files under ``uri`` as one pyarrow Table (local or s3://)."""
    import pyarrow.dataset as ds

    filesystem, path = storage.pyarrow_filesystem(uri)
    try:
        dataset = ds.dataset(path, filesystem=filesystem, format="parquet")
        empty = not dataset.files
    except (FileNotFoundError, OSError) as error:
        empty, reason = True, f" ({type(error).__name__}: {error})"
    else:
        reason = ""
    if empty:
        raise storage.StorageNotFoundError(
            f"no depth table at {uri}{reason}; run step 2 first (ecom2f build-depth) for this run"
        )
    missing = [name for name in columns if name not in dataset.schema.names]
    if missing:
        raise ValueError(f"the depth table at {uri} lacks columns {missing}; it has {dataset.schema.names}")
    table = dataset.to_table(columns=columns)
    if table.num_rows == 0:
        raise ValueError(f"the depth table at {uri} has no rows; rerun step 2")
    return table


def _list_column(table, name: str) -> np.ndarray:
    """A ``list<float32>`` column of equal-length lists -> ``[rows, length]`` float32, no Python loop."""
    import pyarrow.compute as pc

    column = table.column(name).combine_chunks()
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths.min() != lengths.max()):
        raise ValueError(f"feature column {name!r} has lists of lengths {lengths.min()}..{lengths.max()}; expected one")
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(column), -1 if len(column) else 0)


def load_gate_table(depth_uri: str, exits: list[int]) -> GateTable:
    """Read ``<depth_uri>/rows`` and ``<depth_uri>/features`` into a :class:`GateTable`.

    Only the rows of ``exits`` (the gate's, ``model.gate.exits``) are kept. Fails, naming the
    images, when an image lacks one of those exits, has duplicates, or has no features.
    """
    rows = _read_parquet_folder(storage.join(depth_uri, "rows"), [*ROW_COLUMNS, "difficulty"]).to_pandas()
    features = _read_parquet_folder(storage.join(depth_uri, "features"), list(FEATURE_COLUMNS))
    exits = sorted(int(k) for k in exits)
    rows = rows[rows["exit"].isin(exits)]
    duplicated = rows.duplicated(["image_id", "exit"])
    if duplicated.any():
        bad = rows.loc[duplicated, ["image_id", "exit"]].head(5).to_dict("records")
        raise ValueError(f"the depth table has duplicate (image_id, exit) rows, e.g. {bad}; rebuild step 2")
    wide = rows.pivot(index="image_id", columns="exit", values=["pq", "encoder_gflops"])
    missing_exits = [k for k in exits if ("pq", k) not in wide.columns]
    if missing_exits:
        raise ValueError(f"the depth table has no rows for gate exits {missing_exits}; step 2 must cover {exits}")
    # Gaps are missing rows, counted; a NaN pq is a legal value (no ground truth and nothing
    # predicted at that exit) and counts as perfect quality, as in step 2's derive_labels.
    rows_per_image = rows.groupby("image_id")["exit"].nunique().reindex(wide.index)
    gaps = (rows_per_image < len(exits)).to_numpy()
    if gaps.any():
        raise ValueError(
            f"{int(gaps.sum())} images lack a row for some gate exit {exits} "
            f"(e.g. image ids {wide.index[gaps][:5].tolist()}); rerun step 2 to complete the table"
        )
    pq = wide["pq"][exits].to_numpy(np.float32)
    pq = np.where(np.isnan(pq), np.float32(NAN_QUALITY), pq)
    image_ids = wide.index.to_numpy(np.int64)
    difficulty = rows.groupby("image_id")["difficulty"].first().reindex(image_ids).to_numpy(np.float32)

    feature_ids = features.column("image_id").to_numpy().astype(np.int64)
    order = np.argsort(feature_ids, kind="stable")
    if len(np.unique(feature_ids)) != len(feature_ids):
        raise ValueError("the depth features have duplicate image ids; rebuild step 2")
    position = np.searchsorted(feature_ids[order], image_ids)
    position = np.minimum(position, len(order) - 1)
    found = feature_ids[order][position] == image_ids
    if not found.all():
        raise ValueError(
            f"{int((~found).sum())} images have rows but no gate features "
            f"(e.g. {image_ids[~found][:5].tolist()}); rerun step 2"
        )
    take = order[position]
    mean, maxima, grid = (_list_column(features, name)[take] for name in ("gate_mean", "gate_max", "gate_grid"))
    channels = mean.shape[1]
    cells = grid.shape[1] // max(channels, 1)
    grid_size = int(round(cells**0.5))
    if grid_size * grid_size * channels != grid.shape[1] or maxima.shape[1] != channels:
        raise ValueError(
            f"gate feature sizes disagree: gate_mean {channels}, gate_max {maxima.shape[1]}, gate_grid "
            f"{grid.shape[1]} (expected G*G*{channels} for a square grid G)"
        )
    return GateTable(
        image_ids=image_ids,
        exits=np.asarray(exits, dtype=np.int64),
        pq=pq,
        gflops=wide["encoder_gflops"][exits].to_numpy(np.float32),
        mean=mean,
        max=maxima,
        grid=grid,
        grid_size=grid_size,
        difficulty=difficulty,
    )


# ----------------------------------------------------------------------------- labels


def exit_costs(table: GateTable, cost: str = "layers") -> np.ndarray:
    """``[N, E]`` float64 cost of each exit: its number of layers, or its encoder GFLOPs."""
    if cost == "layers":
        return np.broadcast_to(table.exits.astype(np.float64), table.pq.shape)
    if cost == "gflops":
        return table.gflops.astype(np.float64)
    raise ValueError(f"cost {cost!r}: expected 'layers' or 'gflops'")


def utilities(table: GateTable, beta: float, cost: str = "layers") -> np.ndarray:
    """``[N, E]`` float64 ``q_k - beta * cost_k`` (float64 so that equal utilities stay equal)."""
    return table.pq.astype(np.float64) - beta * exit_costs(table, cost)


def derive_labels(table: GateTable, beta: float, cost: str = "layers") -> np.ndarray:
    """``[N]`` int64 index into ``table.exits`` of ``argmax_k (q_k - beta * cost_k)``.

    Ties go to fewer layers: exits are ascending and ``argmax`` returns the first maximum.
    """
    return utilities(table, beta, cost).argmax(axis=1)


# ----------------------------------------------------------------------------- split


def split_images(image_ids: np.ndarray, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_positions, validation_positions)``: a seeded permutation of the sorted image ids.

    The same ids, fraction and seed always give the same split, whatever order the rows came in.
    """
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction {holdout_fraction} must be in (0, 1)")
    count = len(image_ids)
    holdout = int(round(count * holdout_fraction))
    if count < 2 or holdout < 1 or holdout >= count:
        raise ValueError(
            f"cannot split {count} images with holdout_fraction {holdout_fraction}: each side needs at least "
            "one image; use more images (step 2) or another gate.holdout_fraction"
        )
    order = np.argsort(image_ids, kind="stable")
    permuted = order[np.random.default_rng(seed).permutation(count)]
    return np.sort(permuted[holdout:]), np.sort(permuted[:holdout])
