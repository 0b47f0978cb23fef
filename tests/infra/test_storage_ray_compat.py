"""Ray Train's own storage code (no cluster) persists a checkpoint through pyarrow_filesystem().

This is the path ``RunConfig(storage_path=path, storage_filesystem=fs)`` takes on every
``ray.train.report(checkpoint=...)``: if the endpoint override were lost, the objects
would go to AWS instead of the loopback server.
"""

from __future__ import annotations

import pytest

from ecom2f import storage

pytest.importorskip("ray.train")


def test_ray_train_storage_context_writes_checkpoints_to_the_bucket(s3_bucket, tmp_path):
    from ray.train import Checkpoint
    from ray.train.v2._internal.execution.storage import StorageContext

    filesystem, path = storage.pyarrow_filesystem(f"{s3_bucket}/runs/demo")
    context = StorageContext(storage_path=path, experiment_dir_name="parent", storage_filesystem=filesystem)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.pt").write_bytes(b"weights")
    (tmp_path / "ckpt" / "sampler.json").write_text('{"position": 100}')
    persisted = context.persist_current_checkpoint(Checkpoint.from_directory(str(tmp_path / "ckpt")), "checkpoint_000100")
    assert persisted.path == f"{path}/parent/checkpoint_000100"
    listed = storage.list_uris(f"{s3_bucket}/runs/demo/parent", recursive=True)
    assert f"{s3_bucket}/runs/demo/parent/checkpoint_000100/model.pt" in listed
    assert f"{s3_bucket}/runs/demo/parent/checkpoint_000100/sampler.json" in listed
    assert storage.read_bytes(f"{s3_bucket}/runs/demo/parent/checkpoint_000100/model.pt") == b"weights"
