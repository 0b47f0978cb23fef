"""Step 2 as a Ray Data job on the local Ray cluster, with its table on moto's S3 server.

The parent has random weights saved as ``model_final.pth`` (step 1 is tested elsewhere); one
batch fails once mid-run, then the rerun must finish only what is missing.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ecom2f import storage
from ecom2f.modeling import build_model
from ecom2f.steps.depth.job import DEPTH_SCHEMA_VERSION, build_depth_dataset, derive_labels
from ecom2f.steps.depth.table import (
    ROWS_SCHEMA,
    DepthTable,
    DepthTableError,
    load_depth_table,
    read_depth_table,
    shard_uri,
    verify_depth_table,
)
from tests.faults import FailOnceAtIndex, pickle_by_value
from tests.steps.conftest import tiny_config

EXITS = [1, 2, 3, 4, 5, 6]


def _save_random_parent(config, seed: int) -> None:
    """A parent of random weights (``torch.manual_seed(seed)``) as the run's parent weights."""
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save(build_model(config.model).state_dict(), buffer)
    storage.write_bytes(config.storage.layout().parent_weights, buffer.getvalue())


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(300)
def test_interrupted_run_resumes_exactly_on_s3(ray_cluster, s3_bucket, tiny_data_root, tmp_path):
    # 8 images, shards of 3: [0, 1, 2], [3, 4, 5], [6, 7]; batches of 2; one actor at 0.5 CPU.
    config = tiny_config(tiny_data_root, f"{s3_bucket}/runs", "storage.run=depth_job", "depth.shard_size=3",
                         "depth.batch_size=2", "depth.num_actors=1", "depth.gate_feature_grid=2", "gate.grid_sizes=[2]")
    layout = config.storage.layout()
    with pytest.raises(FileNotFoundError, match="run step 1 first"):
        build_depth_dataset(config)
    _save_random_parent(config, seed=0)

    marker = tmp_path / "failed"
    pickle_by_value()
    with pytest.raises(RuntimeError, match=r"shards \[1\] are incomplete.*injected failure.*rerun"):
        build_depth_dataset(config, fault=FailOnceAtIndex(4, str(marker)))
    assert marker.exists()
    depth = layout.depth
    assert storage.exists(shard_uri(depth, "rows", 0)) and storage.exists(shard_uri(depth, "rows", 2))
    assert not storage.exists(shard_uri(depth, "rows", 1))
    assert not storage.exists(layout.depth_success)

    # Tamper with a finished shard: if the rerun recomputed it, the mark would vanish.
    tampered = pq.read_table(io.BytesIO(storage.read_bytes(shard_uri(depth, "rows", 0))))
    loss = pa.array(tampered["loss"].to_numpy() + 1000.0, pa.float32())
    tampered = tampered.set_column(tampered.schema.get_field_index("loss"), "loss", loss)
    sink = io.BytesIO()
    pq.write_table(tampered, sink)  # keeps the schema metadata (the config hash)
    storage.write_bytes(shard_uri(depth, "rows", 0), sink.getvalue())

    assert build_depth_dataset(config) == depth
    rows, features = load_depth_table(depth)
    assert len(rows) == 8 * len(EXITS) and not rows.duplicated(["image_id", "exit"]).any()
    assert sorted(rows.groupby("image_id").size().unique()) == [len(EXITS)]
    assert pa.Schema.from_pandas(rows, preserve_index=False).remove_metadata().equals(ROWS_SCHEMA)
    assert (rows["schema_version"] == DEPTH_SCHEMA_VERSION).all()
    assert sorted(features["dataset_index"]) == list(range(8)) and len(features["gate_grid"][0]) == 32 * 4
    shard0_ids = set(features.loc[features["dataset_index"] < 3, "image_id"])
    assert (rows.loc[rows["image_id"].isin(shard0_ids), "loss"] > 1000).all()   # not recomputed
    assert (rows.loc[~rows["image_id"].isin(shard0_ids), "loss"] < 1000).all()  # computed once each
    manifest = json.loads(storage.read_text(layout.depth_success))
    assert manifest["num_images"] == 8 and manifest["num_rows"] == 48 and manifest["exits"] == EXITS
    assert manifest["schema_version"] == DEPTH_SCHEMA_VERSION
    table = read_depth_table(depth)  # the typed view holds the same values as the long rows
    assert table.exits.tolist() == EXITS and sorted(table.per_image["dataset_index"]) == list(range(8))
    long = rows.set_index(["image_id", "exit"])
    for name in ("pq", "loss", "encoder_gflops"):
        expected = [[long.loc[(int(i), k), name] for k in EXITS] for i in table.image_ids]
        np.testing.assert_array_equal(table.per_exit[name], np.asarray(expected, np.float32), err_msg=name)
    labels = derive_labels(table, 0.0)
    assert len(labels) == 8 and set(labels["label"]) <= set(EXITS)

    # Complete: a third run does nothing; another configuration refuses to mix with this table.
    assert build_depth_dataset(config) == depth
    other = tiny_config(tiny_data_root, f"{s3_bucket}/runs", "storage.run=depth_job", "depth.shard_size=4",
                        "depth.gate_feature_grid=2", "gate.grid_sizes=[2]")
    with pytest.raises(DepthTableError, match="another configuration"):
        build_depth_dataset(other)
    # A parent retrained into the same run (same path, other weights) is another configuration too.
    _save_random_parent(config, seed=1)
    with pytest.raises(DepthTableError, match="another configuration"):
        build_depth_dataset(config)


def test_verification_catches_gaps_and_duplicates():
    rows = pd.DataFrame({"image_id": [1, 1, 2, 2], "exit": [1, 2, 1, 2]})
    features = pd.DataFrame({"image_id": [1, 2], "dataset_index": [0, 1]})
    verify_depth_table(DepthTable.from_rows(rows, features), 2, [1, 2])
    with pytest.raises(DepthTableError, match=r"1 duplicated \(e\.g\. image 1 at exit 1\)"):
        DepthTable.from_rows(pd.concat([rows, rows.iloc[:1]]), features)
    with pytest.raises(DepthTableError, match=r"1 missing \(e\.g\. image 1 at exit 1\)"):
        DepthTable.from_rows(rows.iloc[1:], features)
    with pytest.raises(DepthTableError, match="2 images for a dataset of 3"):
        verify_depth_table(DepthTable.from_rows(rows, features), 3, [1, 2])
    with pytest.raises(DepthTableError, match=r"exits \[1, 2\], expected \[1, 2, 3\]"):
        verify_depth_table(DepthTable.from_rows(rows, features), 2, [1, 2, 3])
    with pytest.raises(DepthTableError, match=r"dataset positions missing \[1\]"):
        verify_depth_table(DepthTable.from_rows(rows, features.assign(dataset_index=[0, 5])), 2, [1, 2])
    with pytest.raises(DepthTableError, match="rows and features differ"):
        DepthTable.from_rows(rows, features.iloc[:1])


def test_command_without_a_parent_fails_before_ray(tmp_path, tiny_data_root):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    result = subprocess.run(
        [sys.executable, "-m", "ray_jobs.build_depth_dataset", "--config", str(REPO_ROOT / "configs" / "demo_cpu.yaml"),
         "--storage", str(tmp_path), f"data.root={tiny_data_root}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "model_final.pth" in result.stderr and "run step 1 first" in result.stderr
    assert "Ray" not in result.stderr
