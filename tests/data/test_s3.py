"""Datasets under an ``s3://`` root, served by moto's S3 server on loopback."""

import multiprocessing
import os

import boto3
import numpy as np
import pytest
import torch

from ecom2f.data import build_dataset, check_dataset, fileio
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
    client = boto3.client("s3")
    client.create_bucket(Bucket="data")
    local = tmp_path / "datasets"
    make_panoptic(local / "synthetic" / "train", num_images=3)
    for path in local.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "data", f"sets/{path.relative_to(local).as_posix()}")
    yield local
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


def test_loader_workers_forked_after_the_parent_read_s3_get_their_own_connections(s3_root):
    # Building the dataset reads its JSON and listing from S3 in this process, so its S3
    # filesystem exists before the DataLoader forks; each worker must build its own (the AWS
    # SDK's connections and threads do not survive a fork) and read the same samples.
    remote = build_dataset("synthetic_panoptic_train", root="s3://data/sets")
    assert multiprocessing.get_start_method() == "fork"
    collate = lambda samples: samples  # noqa: E731 - the samples as they come
    forked = [s for batch in torch.utils.data.DataLoader(remote, batch_size=1, num_workers=2, collate_fn=collate)
              for s in batch]
    local = build_dataset("synthetic_panoptic_train", root=str(s3_root))
    assert len(forked) == 3
    owners = [tuple(row.tolist()) for batch in torch.utils.data.DataLoader(_FilesystemOwner(remote), num_workers=2)
              for row in batch]
    assert len(owners) == 3 and all(owner == worker != os.getpid() for owner, worker in owners)
    for ours, theirs in zip(forked, local):
        assert np.array_equal(ours["image"].numpy(), theirs["image"].numpy())
        assert np.array_equal(ours["id_map"].numpy(), theirs["id_map"].numpy())


class _FilesystemOwner(torch.utils.data.Dataset):
    """Reads a sample, then says which process its S3 filesystem was built in, and its own pid."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.dataset[index]
        (owner, *_), = fileio._filesystems
        return torch.tensor([owner, os.getpid()])
