"""Step 2's table in storage: the versioned parquet schema, its one writer and its one reader.

Layout under ``<run>/depth/``::

    rows/part-00000.parquet       one row per (image, exit)   (ROWS_SCHEMA)
    features/part-00000.parquet   one row per image           (FEATURES_SCHEMA)
    (manifest)                    RunLayout.depth_success, written last by the job: counts, exits, schema
                                  version, config hash, and the size and SHA-256 of every shard file

A shard holds the dataset positions ``[shard * shard_size, (shard + 1) * shard_size)``. Its
features file is written before its rows file, each in one atomic write (single PUT on S3,
temp name + rename locally), so a rows file that exists marks a complete shard.

:func:`read_depth_table` is how every consumer (step 2's own check, the labels, the gate, the
report, ``ecom2f depth-labels``) reads the table: it checks the schema version of every file,
then pivots the rows into a :class:`DepthTable` of dense ``[images, exits]`` arrays. Once step 2
has finished, every file is also checked against the checksum its manifest records: a shard
truncated or altered afterwards fails with :class:`~ecom2f.storage.errors.CorruptArtifactError`,
naming the file and what to rerun.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ecom2f import storage, tradeoff
from ecom2f.config.data import dataset_spec
from ecom2f.errors import MissingStepError, UserError
from ecom2f.storage import checksums
from ecom2f.storage.errors import CorruptArtifactError
from ecom2f.storage.layout import SUCCESS

__all__ = [
    "DEPTH_SCHEMA_VERSION",
    "FEATURES_SCHEMA",
    "FEATURE_KINDS",
    "QUALITIES",
    "ROWS_SCHEMA",
    "DepthTable",
    "DepthTableError",
    "completed_shards",
    "depth_config_hash",
    "load_depth_table",
    "read_depth_table",
    "shard_tables",
    "shard_uri",
    "verify_depth_table",
    "write_shard",
]

DEPTH_SCHEMA_VERSION = 2
SCHEMA_HISTORY = {1: "the first table", 2: "adds the per-image mIoU column `miou`"}
HASH_KEY = b"ecom2f.depth.config_hash"
VERSION_KEY = b"ecom2f.depth.schema_version"

ROWS_SCHEMA = pa.schema([
    ("image_id", pa.int64()), ("exit", pa.int16()), ("loss", pa.float32()),
    ("pq", pa.float32()), ("sq", pa.float32()), ("rq", pa.float32()),
    ("pq_things", pa.float32()), ("pq_stuff", pa.float32()), ("miou", pa.float32()),
    ("num_gt_segments", pa.int32()), ("num_pred_segments", pa.int32()),
    ("encoder_gflops", pa.float32()), ("difficulty", pa.float32()), ("schema_version", pa.int16()),
])
FEATURES_SCHEMA = pa.schema([
    ("image_id", pa.int64()), ("dataset_index", pa.int64()), ("height", pa.int32()), ("width", pa.int32()),
    ("gate_mean", pa.list_(pa.float32())), ("gate_max", pa.list_(pa.float32())),
    ("gate_grid", pa.list_(pa.float32())),
])
QUALITIES = ("pq", "sq", "rq", "pq_things", "pq_stuff", "miou")
PER_EXIT = ("loss", *QUALITIES, "num_pred_segments", "encoder_gflops")  # [images, exits] in a DepthTable
PER_IMAGE = ("num_gt_segments", "difficulty", "dataset_index", "height", "width")  # [images]
FEATURE_KINDS = {"mean": "gate_mean", "max": "gate_max", "grid": "gate_grid"}  # kind -> features column
log = logging.getLogger(__name__)
_PART = re.compile(r"part-(\d{5,})\.parquet$")
# What to do about a damaged shard of a finished table.
RERUN_STEP2 = ("delete that file and the table's manifest (depth/_SUCCESS.json) and rerun step 2 (`ecom2f build-depth` "
               "with the same --config/--storage): it recomputes only the shards that are missing")


class DepthTableError(UserError, ValueError):
    """The depth table is not exactly one row per (image, exit), is of another schema version, or
    belongs to another configuration; the message says what to rebuild or delete."""


# ----------------------------------------------------------------------------- the configuration


def depth_config_hash(config, weights_uri: str, weights_sha256: str = "") -> str:
    """What the table's values depend on: model, parent weights (where and what), images, exits,
    features, shards, the network's precision."""
    relevant = {
        "schema": DEPTH_SCHEMA_VERSION,
        "model": config.model.model_dump(mode="json"),
        "weights": str(weights_uri),
        "weights_sha256": weights_sha256,
        "dataset": dataset_spec(config.depth.dataset or config.data.train),
        "data_root": config.data.root,
        "test_size": [config.data.test_min_size, config.data.test_max_size],
        "exits": config.depth_exits,
        "grid": config.depth.gate_feature_grid,
        "shard_size": config.depth.shard_size,
        "seed": config.seed,
    }
    # Only a non-default precision enters the hash, so the hashes of existing fp32 tables stay valid.
    if config.depth.precision != "fp32":
        relevant["precision"] = config.depth.precision
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- writing


def shard_uri(depth_uri: str, kind: str, shard: int) -> str:
    return storage.join(depth_uri, kind, f"part-{shard:05d}.parquet")


def shard_tables(images: dict, exits: list[int]) -> tuple[pa.Table, pa.Table]:
    """One shard's images (``{name: array}`` as :class:`AllExitsEvaluator` returns them, any order:
    per image ``[n]``, per exit ``[n, exits]``, features ``[n, F]``) -> (rows, features) tables
    sorted by dataset position."""
    order = np.argsort(images["index"], kind="stable")
    pick = {name: np.asarray(values)[order] for name, values in images.items()}
    n, num_exits = len(order), len(exits)
    per_image = lambda name: np.repeat(pick[name], num_exits)
    per_exit = lambda name: np.asarray(pick[name]).reshape(n * num_exits)
    rows = pa.table({
        "image_id": per_image("image_id"), "exit": np.tile(np.asarray(exits, np.int16), n),
        **{name: per_exit(name) for name in ("loss", *QUALITIES)},
        "num_gt_segments": per_image("num_gt_segments"), "num_pred_segments": per_exit("num_pred_segments"),
        "encoder_gflops": per_exit("encoder_gflops"), "difficulty": per_image("difficulty"),
        "schema_version": np.full(n * num_exits, DEPTH_SCHEMA_VERSION, np.int16),
    }, schema=ROWS_SCHEMA)
    lists = {column: pa.array(list(np.asarray(pick[column], np.float32)), pa.list_(pa.float32()))
             for column in FEATURE_KINDS.values()}
    features = pa.table({
        "image_id": pick["image_id"], "dataset_index": pick["index"], "height": pick["height"],
        "width": pick["width"], **lists,
    }, schema=FEATURES_SCHEMA)
    return rows, features


def _parquet_bytes(table: pa.Table, config_hash: str) -> bytes:
    table = table.replace_schema_metadata({HASH_KEY: config_hash.encode(),
                                           VERSION_KEY: str(DEPTH_SCHEMA_VERSION).encode()})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def write_shard(depth_uri: str, shard: int, rows: pa.Table, features: pa.Table, config_hash: str) -> None:
    """Features first, rows last (the rows file marks the shard complete); each write is atomic."""
    storage.write_bytes(shard_uri(depth_uri, "features", shard), _parquet_bytes(features, config_hash))
    storage.write_bytes(shard_uri(depth_uri, "rows", shard), _parquet_bytes(rows, config_hash))


def _parts(depth_uri: str, kind: str) -> dict[int, str]:
    folder = storage.join(depth_uri, kind)
    if not storage.exists(folder) and not storage.is_s3(folder):
        return {}
    parts = {}
    for uri in storage.list_uris(folder):
        match = _PART.search(uri)
        if match:
            parts[int(match.group(1))] = uri
    return parts


def completed_shards(depth_uri: str, config_hash: str) -> set[int]:
    """Shards whose rows file exists; raises if one was written under another configuration."""
    done = set()
    for shard, uri in _parts(depth_uri, "rows").items():
        try:
            metadata = pq.read_schema(io.BytesIO(storage.read_bytes(uri))).metadata or {}
        except pa.ArrowInvalid as error:  # damaged since it was written: computed again, and overwritten
            log.warning("%s is not a readable parquet file (%s); its shard is computed again", uri, error)
            continue
        found = metadata.get(HASH_KEY, b"?").decode()
        if found != config_hash:
            raise DepthTableError(
                f"{uri} was built with another configuration (hash {found}, now {config_hash}: the model, parent "
                f"weights, dataset, exits, grid or shard size changed); delete {depth_uri} or use another storage.run"
            )
        done.add(shard)
    return done


# ----------------------------------------------------------------------------- reading


def _version_error(uri: str, found) -> DepthTableError:
    what = SCHEMA_HISTORY.get(DEPTH_SCHEMA_VERSION, "")
    return DepthTableError(
        f"{uri} is a depth table of schema version {found}; this ecom2f reads version {DEPTH_SCHEMA_VERSION} "
        f"({what}). Rebuild step 2: delete the run's depth/ folder and run `ecom2f build-depth` again"
    )


def _read_part(uri: str, kind: str, reading: _Reading) -> pa.Table:
    """One shard file, after checking its checksum and that it is of this schema version."""
    data = reading.check(uri, storage.read_bytes(uri))
    try:
        table = pq.read_table(io.BytesIO(data))
    except pa.ArrowInvalid as error:
        raise CorruptArtifactError(f"{uri} is not a readable parquet file ({error}); {RERUN_STEP2}") from None
    stamped = (table.schema.metadata or {}).get(VERSION_KEY)
    if stamped is not None and stamped.decode() != str(DEPTH_SCHEMA_VERSION):
        raise _version_error(uri, stamped.decode())
    if kind == "rows":
        if "schema_version" not in table.column_names:
            raise _version_error(uri, "unknown (no schema_version column)")
        versions = set(pc.unique(table.column("schema_version")).to_pylist())
        if versions != {DEPTH_SCHEMA_VERSION} and table.num_rows:
            raise _version_error(uri, ", ".join(str(v) for v in sorted(versions)))
    return table


class _Reading:
    """How a table's files are read: checked against the checksums of its manifest (when step 2 has
    written one), and with ``digests`` given, each file's digest recorded there (for the manifest)."""

    def __init__(self, depth_uri: str, digests: dict | None) -> None:
        self.manifest_uri = storage.join(depth_uri, SUCCESS)
        self.recorded = checksums.recorded(checksums.read_manifest(self.manifest_uri, RERUN_STEP2), self.manifest_uri)
        self.digests = digests

    def check_listed(self, found: list[str], kind: str) -> None:
        checksums.check_listed(self.manifest_uri, self.recorded, found, f"{kind}/", RERUN_STEP2)

    def check(self, uri: str, data: bytes) -> bytes:
        name = checksums.relative_name(self.manifest_uri, uri)
        if self.digests is not None:
            self.digests[name] = checksums.digest(data)
        expected = None if self.recorded is None else self.recorded[name]
        return checksums.verify(uri, data, expected, self.manifest_uri, RERUN_STEP2)


def _read_tables(uri: str, features: bool, digests: dict | None = None) -> tuple[pa.Table, pa.Table | None]:
    """``(rows, features or None)`` of every shard at ``uri``, each file checksum- and version-checked."""
    reading = _Reading(uri, digests)
    rows_parts = _parts(uri, "rows")
    if not rows_parts:
        raise MissingStepError(f"no depth table at {uri} (no rows/part-*.parquet); run step 2 first "
                               "(`ecom2f build-depth` with the same --config/--storage)")
    reading.check_listed(list(rows_parts.values()), "rows")
    rows = pa.concat_tables([_read_part(rows_parts[s], "rows", reading) for s in sorted(rows_parts)])
    if not features:
        return rows, None
    feature_parts = {s: part for s, part in _parts(uri, "features").items() if s in rows_parts}
    reading.check_listed(list(feature_parts.values()), "features")
    tables = [_read_part(feature_parts[s], "features", reading) for s in sorted(feature_parts)]
    return rows, (pa.concat_tables(tables) if tables else FEATURES_SCHEMA.empty_table())


def read_depth_table(uri: str, features: bool = True, digests: dict | None = None) -> DepthTable:
    """The depth table at ``uri`` (``<run>/depth``, local or s3://) as a :class:`DepthTable`.

    Every file is checked against the checksum in the table's manifest (once step 2 has written
    it) and its schema version is checked (another version: a :class:`DepthTableError` saying to
    rebuild step 2), then the table must hold exactly one row per (image, exit) and, with
    ``features``, one feature row per image. ``features=False`` skips the gate features (the
    largest part: ``G*G*C`` floats per image), for the labels and the report. ``digests``: a dict
    that receives each file's checksum (step 2 records them in the manifest).
    """
    rows, feature_table = _read_tables(uri, features, digests)
    return DepthTable.from_rows(rows, feature_table, where=uri)


def require_finished(layout) -> None:
    """Step 2 must have finished the run's table (its ``_SUCCESS.json`` is written last).

    Shards of an interrupted step 2 are a valid table of fewer images; reading them as the whole
    table would train gates on a part of the data without anyone noticing.
    """
    if not storage.exists(layout.depth_success):
        raise MissingStepError(
            f"the depth table at {layout.depth} is not finished (no {layout.depth_success}); run step 2 first "
            "(`ecom2f build-depth` with the same --config/--storage) to complete it"
        )


def read_finished_depth_table(layout, features: bool = True) -> DepthTable:
    """The run's depth table once step 2 has finished it (:func:`require_finished`)."""
    require_finished(layout)
    return read_depth_table(layout.depth, features=features)


def load_depth_table(uri: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The long view for ad-hoc analysis: ``(rows, features)`` DataFrames, shards in order, read and
    version-checked by the same code as :func:`read_depth_table` (which the steps use).

    ``rows``: one row per (image_id, exit), ROWS_SCHEMA's columns. ``features``: one row per
    image; ``gate_mean``/``gate_max``/``gate_grid`` hold numpy float32 arrays.
    """
    rows, features = _read_tables(uri, features=True)
    return rows.to_pandas(), features.to_pandas()


# ----------------------------------------------------------------------------- the typed view


def _columns(table) -> dict[str, np.ndarray]:
    """Scalar columns of a DataFrame or pyarrow Table as numpy arrays (float nulls -> NaN)."""
    if isinstance(table, pd.DataFrame):
        return {name: table[name].to_numpy() for name in table.columns}
    if isinstance(table, pa.Table):
        return {name: table.column(name).to_numpy() for name in table.column_names
                if not pa.types.is_list(table.schema.field(name).type)}
    raise TypeError(f"expected the depth rows as a pandas DataFrame or a pyarrow Table, got {type(table).__name__}")


def _list_column(table: pa.Table | pd.DataFrame, name: str) -> np.ndarray:
    """A column of equal-length float lists -> ``[rows, length]`` float32 (no Python loop for pyarrow)."""
    if isinstance(table, pd.DataFrame):
        values = table[name].to_list()
        return np.asarray(np.stack(values) if values else np.zeros((0, 0)), np.float32)
    column = table.column(name).combine_chunks()
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) and lengths.min() != lengths.max():
        raise DepthTableError(f"feature column {name!r} has lists of lengths {lengths.min()}..{lengths.max()}; "
                              "expected one length: rebuild step 2")
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(column), -1 if len(column) else 0)


def _pivot_positions(image_id: np.ndarray, exit_: np.ndarray, where: str):
    """``(image_ids [N], exits [E], flat [rows])``: each row's cell ``image * E + exit`` of the
    dense grid; raises unless every cell has exactly one row."""
    image_ids, image_index = np.unique(np.asarray(image_id, np.int64), return_inverse=True)
    exits, exit_index = np.unique(np.asarray(exit_, np.int64), return_inverse=True)
    flat = image_index * len(exits) + exit_index
    counts = np.bincount(flat, minlength=len(image_ids) * len(exits))
    missing, repeated = np.flatnonzero(counts == 0), np.flatnonzero(counts > 1)
    if len(missing) or len(repeated):
        example = lambda cells: ", ".join(
            f"image {image_ids[c // len(exits)]} at exit {exits[c % len(exits)]}" for c in cells[:3])
        raise DepthTableError(
            f"the depth table{where} must hold exactly one row per (image, exit): {len(missing)} missing"
            f"{f' (e.g. {example(missing)})' if len(missing) else ''} and {len(repeated)} duplicated"
            f"{f' (e.g. {example(repeated)})' if len(repeated) else ''} of {len(image_ids)} images x {len(exits)} "
            "exits; rerun step 2 (`ecom2f build-depth`) to complete it, or delete it and rebuild"
        )
    return image_ids, exits, flat


def _dense(values: np.ndarray, flat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = np.empty(shape[0] * shape[1], dtype=values.dtype)
    out[flat] = values
    return out.reshape(shape)


def _align_features(features, image_ids: np.ndarray, where: str) -> tuple[dict, dict]:
    """Feature rows in the order of ``image_ids``: ``({kind: [N, F]}, {per-image column: [N]})``."""
    columns = _columns(features)
    if "image_id" not in columns:
        raise DepthTableError(f"the depth features{where} have no image_id column; rebuild step 2")
    feature_ids = np.asarray(columns["image_id"], np.int64)
    if len(np.unique(feature_ids)) != len(feature_ids):
        raise DepthTableError(f"the depth features{where} have duplicate image ids; rebuild step 2")
    order = np.argsort(feature_ids, kind="stable")
    position = np.minimum(np.searchsorted(feature_ids[order], image_ids), max(len(order) - 1, 0))
    found = feature_ids[order][position] == image_ids if len(order) else np.zeros(len(image_ids), bool)
    if not found.all() or len(feature_ids) != len(image_ids):
        raise DepthTableError(
            f"the images in the depth table's rows and features{where} differ: {int((~found).sum())} images have "
            f"rows but no gate features (e.g. {image_ids[~found][:5].tolist()}), {len(feature_ids)} feature rows for "
            f"{len(image_ids)} images; rerun step 2"
        )
    take = order[position]
    pooled = {kind: _list_column(features, column)[take] for kind, column in FEATURE_KINDS.items()
              if column in (features.columns if isinstance(features, pd.DataFrame) else features.column_names)}
    return pooled, {name: columns[name][take] for name in PER_IMAGE if name in columns}


@dataclasses.dataclass(frozen=True)
class DepthTable:
    """Step 2's table as dense arrays: N images (ascending ``image_ids [N]``), E exits (ascending
    ``exits [E]``), C channels, G the stored feature grid.

    ``per_exit``: ``[N, E]`` arrays as stored (``loss``, the qualities of :data:`QUALITIES` with NaN
    where undefined, ``num_pred_segments``, ``encoder_gflops``); ``per_image``: ``[N]`` arrays
    (``num_gt_segments``, ``difficulty``, and from the features ``dataset_index``, ``height``,
    ``width``); ``pooled``: ``{"mean": [N, C], "max": [N, C], "grid": [N, G*G*C]}`` float32, or
    None when read without features. Build with :func:`read_depth_table` or :meth:`from_rows`.
    """

    image_ids: np.ndarray
    exits: np.ndarray
    per_exit: dict[str, np.ndarray]
    per_image: dict[str, np.ndarray]
    pooled: dict[str, np.ndarray] | None = None

    @classmethod
    def from_rows(cls, rows, features=None, where: str = "") -> DepthTable:
        """Pivot long ``rows`` (DataFrame or pyarrow Table, one row per (image, exit), any order, any
        subset of ROWS_SCHEMA's columns with ``image_id`` and ``exit``) and optional ``features``
        (one row per image) into dense arrays; raises :class:`DepthTableError` on gaps or repeats."""
        where = f" at {where}" if where else ""
        columns = _columns(rows)
        absent = {"image_id", "exit"} - set(columns)
        if absent:
            raise DepthTableError(f"the depth rows{where} lack columns {sorted(absent)}: not a step-2 table")
        image_ids, exits, flat = _pivot_positions(columns["image_id"], columns["exit"], where)
        shape = (len(image_ids), len(exits))
        per_exit = {name: _dense(columns[name], flat, shape) for name in PER_EXIT if name in columns}
        a_row = np.empty(len(image_ids), np.int64)
        a_row[flat // len(exits)] = np.arange(len(flat))  # one of each image's rows: they agree per image
        per_image = {name: columns[name][a_row] for name in PER_IMAGE if name in columns}
        pooled = None
        if features is not None:
            pooled, from_features = _align_features(features, image_ids, where)
            per_image.update(from_features)
        return cls(image_ids, exits, per_exit, per_image, pooled)

    def __len__(self) -> int:
        return len(self.image_ids)

    def _per_exit(self, name: str) -> np.ndarray:
        if name not in self.per_exit:
            raise ValueError(f"{name!r} is not a per-exit column of the depth table (it has {sorted(self.per_exit)})")
        return self.per_exit[name]

    def quality(self, name: str = "pq") -> np.ndarray:
        """``[N, E]`` per-image quality ``name`` (one of :data:`QUALITIES`) as stored: float32, NaN
        where undefined (the trade-off counts NaN as :data:`ecom2f.tradeoff.NAN_QUALITY`)."""
        if name not in QUALITIES:
            raise ValueError(f"quality={name!r}: choose one of {QUALITIES}")
        return self._per_exit(name)

    def cost(self, unit: str) -> np.ndarray:
        """``[N, E]`` cost of each exit: ``layers`` (its layer count) or ``gflops`` (encoder GFLOPs)."""
        return tradeoff.exit_costs(unit, self.exits, self._per_exit("encoder_gflops"))

    @property
    def loss(self) -> np.ndarray:
        """``[N, E]`` the criterion's total at each exit."""
        return self._per_exit("loss")

    @property
    def difficulty(self) -> np.ndarray:
        """``[N]`` the synthetic generator's difficulty score (NaN for real data)."""
        return self.per_image.get("difficulty", np.full(len(self), np.nan, np.float32))

    def features(self, kind: str) -> np.ndarray:
        """``[N, F]`` float32 pooled gate features: ``mean`` ``[N, C]``, ``max`` ``[N, C]`` or
        ``grid`` ``[N, G*G*C]`` (cell by cell, row-major, the C channels of a cell together)."""
        if self.pooled is None:
            raise ValueError("this depth table was read without its gate features; use read_depth_table(uri)")
        if kind not in self.pooled:
            raise ValueError(f"feature kind {kind!r}: the table has {sorted(self.pooled)} of {list(FEATURE_KINDS)}")
        return self.pooled[kind]

    def select_exits(self, exits: Sequence[int]) -> DepthTable:
        """The same images at ``exits`` only (any order given; kept ascending)."""
        wanted = sorted({int(k) for k in exits})
        absent = sorted(set(wanted) - set(self.exits.tolist()))
        if absent:
            raise ValueError(f"exits {absent} are not in the depth table (it has {self.exits.tolist()}); "
                             "step 2's depth.exits must cover them")
        columns = np.searchsorted(self.exits, wanted)
        return dataclasses.replace(self, exits=self.exits[columns],
                                   per_exit={name: values[:, columns] for name, values in self.per_exit.items()})


# ----------------------------------------------------------------------------- checks


def verify_depth_table(table: DepthTable, num_images: int, exits: list[int]) -> None:
    """Step 2's final check: the table covers every image of the dataset, once, at exactly ``exits``.

    (One row per (image, exit) and one feature row per image are checked when it is read.)
    """
    problems = []
    if len(table) != num_images:
        problems.append(f"{len(table)} images for a dataset of {num_images}")
    if table.exits.tolist() != sorted(exits):
        problems.append(f"exits {table.exits.tolist()}, expected {sorted(exits)}")
    positions = table.per_image.get("dataset_index")
    if table.pooled is None or positions is None:
        problems.append("no feature rows (read the table with its features)")
    elif not np.array_equal(np.sort(positions), np.arange(num_images)):
        missing = np.setdiff1d(np.arange(num_images), positions)
        problems.append(f"dataset positions missing {missing[:10].tolist()} or repeated in the features")
    if problems:
        raise DepthTableError("the depth table does not cover the dataset: " + "; ".join(problems)
                              + "; rerun step 2 (`ecom2f build-depth`)")
