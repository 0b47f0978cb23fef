"""Step 2's table in storage: its one writer and its one reader (values round trip into the dense
view; the schema version is checked on every read, by every consumer)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecom2f import storage
from ecom2f.errors import MissingStepError
from ecom2f.steps.depth.table import (
    DEPTH_SCHEMA_VERSION,
    DepthTable,
    DepthTableError,
    load_depth_table,
    read_depth_table,
    shard_tables,
    shard_uri,
    write_shard,
)
from tests.conftest import REPO_ROOT

EXITS = [1, 3, 6]
CHANNELS, GRID = 4, 2


def crafted_images(count: int = 7, seed: int = 0) -> dict:
    """What the scorer hands the writer for ``count`` images: per image ``[n]``, per exit ``[n, 3]``,
    features ``[n, F]``; image ids are not in dataset order."""
    rng = np.random.default_rng(seed)
    per_exit = lambda: rng.random((count, len(EXITS))).astype(np.float32)
    pq_values = per_exit()
    pq_values[2, 1] = np.nan  # undefined at one exit: stored as NaN
    return {
        "index": np.arange(count), "image_id": (rng.permutation(count) * 5 + 100).astype(np.int64),
        "height": rng.integers(32, 96, count).astype(np.int32), "width": rng.integers(32, 96, count).astype(np.int32),
        "num_gt_segments": rng.integers(0, 9, count).astype(np.int32), "difficulty": rng.random(count).astype(np.float32),
        "loss": per_exit(), "pq": pq_values, "sq": per_exit(), "rq": per_exit(), "pq_things": per_exit(),
        "pq_stuff": per_exit(), "miou": per_exit(), "num_pred_segments": rng.integers(0, 9, (count, 3)).astype(np.int32),
        "encoder_gflops": np.sort(per_exit(), axis=1) * 10,
        "gate_mean": rng.normal(size=(count, CHANNELS)).astype(np.float32),
        "gate_max": rng.normal(size=(count, CHANNELS)).astype(np.float32),
        "gate_grid": rng.normal(size=(count, GRID * GRID * CHANNELS)).astype(np.float32),
    }


def write_table(depth_uri: str, images: dict, shards=((0, 1, 2, 3), (4, 5, 6))) -> None:
    for shard, positions in enumerate(shards):
        positions = list(reversed(positions))  # handed over in any order
        write_shard(depth_uri, shard, *shard_tables({k: v[positions] for k, v in images.items()}, EXITS), "crafted")


def test_values_round_trip_into_the_dense_view(tmp_path):
    images = crafted_images()
    depth = str(tmp_path / "depth")
    write_table(depth, images)
    table = read_depth_table(depth)
    order = np.argsort(images["image_id"])  # the view is by ascending image id
    np.testing.assert_array_equal(table.image_ids, images["image_id"][order])
    assert table.exits.tolist() == EXITS and len(table) == 7
    for name in ("loss", "pq", "sq", "rq", "pq_things", "pq_stuff", "miou", "num_pred_segments", "encoder_gflops"):
        np.testing.assert_array_equal(table.per_exit[name], images[name][order], err_msg=name)
    for name in ("pq", "miou"):
        np.testing.assert_array_equal(table.quality(name), images[name][order])
    assert np.isnan(table.quality("pq")).sum() == 1  # undefined stays NaN; the trade-off decides what it counts as
    np.testing.assert_array_equal(table.loss, images["loss"][order])
    np.testing.assert_array_equal(table.cost("gflops"), images["encoder_gflops"][order])
    np.testing.assert_array_equal(table.cost("layers"), np.tile(np.float64(EXITS), (7, 1)))
    np.testing.assert_array_equal(table.difficulty, images["difficulty"][order])
    np.testing.assert_array_equal(table.per_image["dataset_index"], images["index"][order])
    for name in ("num_gt_segments", "height", "width"):
        np.testing.assert_array_equal(table.per_image[name], images[name][order], err_msg=name)
    for kind in ("mean", "max", "grid"):
        np.testing.assert_array_equal(table.features(kind), images[f"gate_{kind}"][order], err_msg=kind)
    subset = table.select_exits([6, 1])
    assert subset.exits.tolist() == [1, 6]
    np.testing.assert_array_equal(subset.quality("sq"), images["sq"][order][:, [0, 2]])
    # The long view reads the same files.
    rows, features = load_depth_table(depth)
    assert len(rows) == 21 and (rows["schema_version"] == DEPTH_SCHEMA_VERSION).all()
    assert sorted(features["image_id"]) == sorted(images["image_id"])


def test_reading_without_features_and_bad_names(tmp_path):
    depth = str(tmp_path / "depth")
    write_table(depth, crafted_images())
    light = read_depth_table(depth, features=False)
    assert light.pooled is None and len(light) == 7
    with pytest.raises(ValueError, match="read without its gate features"):
        light.features("mean")
    with pytest.raises(ValueError, match="quality='loss'"):
        light.quality("loss")
    with pytest.raises(ValueError, match="cost='seconds'"):
        light.cost("seconds")
    with pytest.raises(ValueError, match=r"exits \[2\] are not in the depth table"):
        light.select_exits([1, 2])
    with pytest.raises(MissingStepError, match="run step 2 first"):
        read_depth_table(str(tmp_path / "nowhere"))


def _rewrite_rows_as_version_1(uri: str) -> None:
    """A schema-1 shard: no ``miou`` column, ``schema_version`` 1 in its rows and its metadata."""
    table = pq.read_table(io.BytesIO(storage.read_bytes(uri))).drop_columns(["miou"])
    column = table.schema.get_field_index("schema_version")
    table = table.set_column(column, "schema_version", pa.array(np.ones(table.num_rows, np.int16)))
    table = table.replace_schema_metadata({b"ecom2f.depth.schema_version": b"1"})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    storage.write_bytes(uri, sink.getvalue())


def test_every_reader_refuses_a_table_of_another_schema_version(tmp_path, capsys):
    """Shard 1 is of schema version 1: the steps' reader, the long view, the gate's loader (which
    once skipped the check) and ``ecom2f depth-labels`` all refuse it, naming the version and what to do."""
    from ecom2f.cli import main
    from ecom2f.steps.gate.data import load_gate_table
    from ecom2f.storage.layout import SUCCESS

    run = tmp_path / "demo"
    depth = str(run / "depth")
    write_table(depth, crafted_images())
    storage.write_text(storage.join(depth, SUCCESS), '{"config_hash": "crafted"}')  # a finished step 2
    _rewrite_rows_as_version_1(shard_uri(depth, "rows", 1))
    message = r"part-00001\.parquet is a depth table of schema version 1; this ecom2f reads version 2.*build-depth"
    for read in (read_depth_table, load_depth_table, lambda uri: load_gate_table(uri, EXITS)):
        with pytest.raises(DepthTableError, match=message):
            read(depth)
    command = ["depth-labels", "--config", str(REPO_ROOT / "configs" / "demo_cpu.yaml"), "--storage", str(tmp_path),
               "model.gate.exits=[1,3,6]", "--betas", "0"]
    assert main(command) == 2
    assert "schema version 1" in capsys.readouterr().err


def test_a_rows_file_without_a_schema_version_is_refused(tmp_path):
    depth = str(tmp_path / "depth")
    write_table(depth, crafted_images())
    uri = shard_uri(depth, "rows", 0)
    table = pq.read_table(io.BytesIO(storage.read_bytes(uri))).drop_columns(["schema_version"])
    sink = io.BytesIO()
    pq.write_table(table.replace_schema_metadata({}), sink)
    storage.write_bytes(uri, sink.getvalue())
    with pytest.raises(DepthTableError, match="schema version unknown"):
        read_depth_table(depth)


def test_gaps_repeats_and_feature_mismatches_are_named(tmp_path):
    images = crafted_images()
    rows, features = shard_tables(images, EXITS)
    ids = np.sort(images["image_id"])
    with pytest.raises(DepthTableError, match=rf"1 missing \(e\.g\. image {ids[0]} at exit 3\)"):
        keep = ~((rows.column("image_id").to_numpy() == ids[0]) & (rows.column("exit").to_numpy() == 3))
        DepthTable.from_rows(rows.filter(pa.array(keep)), features)
    with pytest.raises(DepthTableError, match="1 duplicated"):
        DepthTable.from_rows(pa.concat_tables([rows, rows.slice(0, 1)]), features)
    with pytest.raises(DepthTableError, match=r"1 images have rows but no gate features"):
        DepthTable.from_rows(rows, features.slice(1))
    ragged = features.set_column(features.schema.get_field_index("gate_mean"), "gate_mean",
                                 pa.array([[1.0] * (i % 2 + 1) for i in range(7)], pa.list_(pa.float32())))
    with pytest.raises(DepthTableError, match="lists of lengths 1..2"):
        DepthTable.from_rows(rows, ragged)
