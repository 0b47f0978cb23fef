"""Shared test fixtures and markers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.infra.s3_server import s3_bucket, s3_server  # noqa: F401  (available to every test folder)

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (the developers' machines and CI); absent elsewhere.
SHARED_DIR = Path(os.environ.get("ECOM2F_SHARED_DIR", REPO_ROOT.parent / "shared"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is available on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED_DIR


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """One local Ray cluster for the whole test run (2 CPUs, loopback only, no dashboard).

    It starts after the loopback S3 server, so its workers inherit that endpoint and its
    credentials from the environment, as they would an instance role on a cloud cluster.
    """
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


LEAKED_LEASES_LOG = os.environ.get("ECOM2F_LEAKED_LEASES_LOG")


@pytest.fixture(autouse=True)
def _no_lease_outlives_its_test(request):
    """A test that opens a run (``open_run``) without closing it would leave the lease's heartbeat
    thread renewing into a storage the test has already torn down; the CLI's process exit
    releases it in real use (atexit). Released here, after each test, and named in the log."""
    yield
    from ecom2f.storage import lease

    with lease._held_lock:
        leaked = list(lease._held)
    if leaked:
        try:
            lease._release_all()
        except Exception as error:  # noqa: BLE001 - the storage may be gone with the test: expiry covers it
            print(f"leaked lease of {request.node.nodeid} not released: {error}")
        if LEAKED_LEASES_LOG:
            with open(LEAKED_LEASES_LOG, "a") as log:
                log.write(f"{request.node.nodeid}: {leaked}\n")
