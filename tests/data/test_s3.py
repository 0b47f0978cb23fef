"""Datasets under an ``s3://`` root, served by moto's S3 server on loopback."""

import boto3
import numpy as np
import pytest

from ecom2f.data import build_dataset, check_dataset
from ecom2f.data import fileio
from tests.data.helpers import make_panoptic

pytest.importorskip("moto.server")


@pytest.fixture
def s3_root(tmp_path, monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    fileio._s3_filesystem.cache_clear()
    client = boto3.client("s3")
    client.create_bucket(Bucket="data")
    local = tmp_path / "datasets"
    make_panoptic(local / "synthetic" / "train", num_images=3)
    for path in local.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "data", f"sets/{path.relative_to(local).as_posix()}")
    yield local
    fileio._s3_filesystem.cache_clear()
    server.stop()


def test_dataset_under_s3_root_equals_the_local_one(s3_root):
    remote = build_dataset("synthetic_panoptic_train", root="s3://data/sets")
    local = build_dataset("synthetic_panoptic_train", root=str(s3_root))
    assert len(remote) == len(local) == 3
    for ours, theirs in zip(remote, local):
        assert np.array_equal(ours["image"].numpy(), theirs["image"].numpy())
        assert np.array_equal(ours["id_map"].numpy(), theirs["id_map"].numpy())
        assert ours["segment_ids"].tolist() == theirs["segment_ids"].tolist()
    assert check_dataset("synthetic_panoptic_train", root="s3://data/sets").ok


def test_missing_object_under_s3_is_a_missing_image(s3_root):
    boto3.client("s3").delete_object(Bucket="data", Key="sets/synthetic/train/images/000002.jpg")
    report = check_dataset("synthetic_panoptic_train", root="s3://data/sets")
    assert report.log.counts["missing_image"] == 1 and not report.ok
    assert len(build_dataset("synthetic_panoptic_train", root="s3://data/sets", strict=False, max_bad_fraction=0.5)) == 2
