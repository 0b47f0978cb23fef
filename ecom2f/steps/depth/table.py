"""Step 2's table in storage: the versioned parquet schema, shard writes, reading and checks.

Layout under ``<run>/depth/``::

    rows/part-00000.parquet       one row per (image, exit)   (ROWS_SCHEMA)
    features/part-00000.parquet   one row per image           (FEATURES_SCHEMA)
    _SUCCESS.json                 written last: counts, exits, schema version, config hash

A shard holds the dataset positions ``[shard * shard_size, (shard + 1) * shard_size)``. Its
features file is written before its rows file, each in one atomic write (single PUT on S3,
temp name + rename locally), so a rows file that exists marks a complete shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ecom2f import storage
from ecom2f.config.data import dataset_spec
from ecom2f.errors import MissingStepError

__all__ = [
    "DEPTH_SCHEMA_VERSION", "ROWS_SCHEMA", "FEATURES_SCHEMA", "MANIFEST", "DepthTableError",
    "shard_uri", "shard_tables", "write_shard", "completed_shards", "load_depth_table", "verify_depth_table",
    "depth_config_hash",
]

DEPTH_SCHEMA_VERSION = 2  # 2: + miou
MANIFEST = "_SUCCESS.json"
HASH_KEY = b"ecom2f.depth.config_hash"

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
_PART = re.compile(r"part-(\d{5,})\.parquet$")


class DepthTableError(RuntimeError):
    """The depth table is not exactly one row per (image, exit), or belongs to another configuration."""


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


def shard_uri(depth_uri: str, kind: str, shard: int) -> str:
    return storage.join(depth_uri, kind, f"part-{shard:05d}.parquet")


def shard_tables(images: dict, exits: list[int]) -> tuple[pa.Table, pa.Table]:
    """One shard's images (``{name: array}`` as :class:`AllExitsEvaluator` returns them, any order)
    -> (rows, features) tables sorted by dataset position."""
    order = np.argsort(images["index"], kind="stable")
    pick = {name: np.asarray(values)[order] for name, values in images.items()}
    n, num_exits = len(order), len(exits)
    per_image = lambda name: np.repeat(pick[name], num_exits)  # noqa: E731 - [n] -> [n * E]
    per_exit = lambda name: np.asarray(pick[name]).reshape(n * num_exits)  # noqa: E731 - [n, E] -> [n * E]
    rows = pa.table({
        "image_id": per_image("image_id"), "exit": np.tile(np.asarray(exits, np.int16), n),
        **{name: per_exit(name) for name in ("loss", "pq", "sq", "rq", "pq_things", "pq_stuff", "miou")},
        "num_gt_segments": per_image("num_gt_segments"), "num_pred_segments": per_exit("num_pred_segments"),
        "encoder_gflops": per_exit("encoder_gflops"), "difficulty": per_image("difficulty"),
        "schema_version": np.full(n * num_exits, DEPTH_SCHEMA_VERSION, np.int16),
    }, schema=ROWS_SCHEMA)
    lists = {name: pa.array(list(np.asarray(pick[name], np.float32)), pa.list_(pa.float32()))
             for name in ("gate_mean", "gate_max", "gate_grid")}
    features = pa.table({
        "image_id": pick["image_id"], "dataset_index": pick["index"], "height": pick["height"],
        "width": pick["width"], **lists,
    }, schema=FEATURES_SCHEMA)
    return rows, features


def _parquet_bytes(table: pa.Table, config_hash: str) -> bytes:
    table = table.replace_schema_metadata({HASH_KEY: config_hash.encode(), b"ecom2f.depth.schema_version":
                                           str(DEPTH_SCHEMA_VERSION).encode()})
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
        metadata = pq.read_schema(io.BytesIO(storage.read_bytes(uri))).metadata or {}
        found = metadata.get(HASH_KEY, b"?").decode()
        if found != config_hash:
            raise DepthTableError(
                f"{uri} was built with another configuration (hash {found}, now {config_hash}: the model, parent "
                f"weights, dataset, exits, grid or shard size changed); delete {depth_uri} or use another storage.run"
            )
        done.add(shard)
    return done


def _read(uris: list[str]) -> pd.DataFrame | None:
    tables = [pq.read_table(io.BytesIO(storage.read_bytes(uri))) for uri in uris]
    return pa.concat_tables(tables).to_pandas() if tables else None


def load_depth_table(uri: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rows, features)`` of the depth table at ``uri`` (``<run>/depth``), shards in order.

    ``rows``: one row per (image_id, exit), ROWS_SCHEMA's columns. ``features``: one row per
    image; ``gate_mean``/``gate_max``/``gate_grid`` hold numpy float32 arrays (``np.stack`` them).
    """
    rows_parts, feature_parts = _parts(uri, "rows"), _parts(uri, "features")
    if not rows_parts:
        raise MissingStepError(f"no depth table at {uri} (no rows/part-*.parquet); run `ecom2f build-depth` first")
    rows = _read([rows_parts[s] for s in sorted(rows_parts)])
    features = _read([feature_parts[s] for s in sorted(feature_parts) if s in rows_parts])
    versions = set(rows["schema_version"].unique().tolist())
    if versions != {DEPTH_SCHEMA_VERSION}:
        raise DepthTableError(f"{uri} holds schema versions {sorted(versions)}; this code reads {DEPTH_SCHEMA_VERSION}")
    return rows, features


def verify_depth_table(rows: pd.DataFrame, features: pd.DataFrame, num_images: int, exits: list[int]) -> None:
    """Exactly one row per (image, exit) for every image of the dataset, and one feature row per image."""
    problems = []
    if features is None or len(features) != num_images:
        problems.append(f"{0 if features is None else len(features)} feature rows for {num_images} images")
    else:
        positions = np.sort(features["dataset_index"].to_numpy())
        if not np.array_equal(positions, np.arange(num_images)):
            missing = np.setdiff1d(np.arange(num_images), positions)
            problems.append(f"dataset positions missing {missing[:10].tolist()} or repeated in the features")
    duplicated = rows.duplicated(["image_id", "exit"])
    if duplicated.any():
        problems.append(f"{int(duplicated.sum())} duplicated (image_id, exit) rows, e.g. "
                        f"{rows.loc[duplicated, ['image_id', 'exit']].head(3).to_dict('records')}")
    if len(rows) != num_images * len(exits):
        problems.append(f"{len(rows)} rows, expected {num_images} images x {len(exits)} exits = {num_images * len(exits)}")
    per_image = rows.groupby("image_id")["exit"].agg(lambda e: tuple(sorted(e)))
    wrong = per_image[per_image != tuple(exits)]
    if len(wrong):
        problems.append(f"{len(wrong)} images without exactly the exits {exits}, e.g. image {wrong.index[0]}: "
                        f"{list(wrong.iloc[0])}")
    if features is not None and set(per_image.index) != set(features["image_id"]):
        problems.append("the images in rows/ and features/ differ")
    if problems:
        raise DepthTableError("the depth table is not exactly one row per (image, exit): " + "; ".join(problems))
