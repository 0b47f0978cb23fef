"""A one-process gloo group, for DeepSpeed outside a launcher (benchmarks, tests, notebooks)."""

from __future__ import annotations

import contextlib
import os
import socket

_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@contextlib.contextmanager
def single_process_group():
    """Initialises torch.distributed (gloo, world size 1, a free loopback port) for the block."""
    import deepspeed

    from ecom2f.engine.deepspeed_config import disable_cpu_shm_comm_build

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    saved = {k: os.environ.get(k) for k in _ENV}
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    disable_cpu_shm_comm_build()
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    try:
        yield
    finally:
        # DeepSpeed's own teardown also drops the groups it cached, so a later block
        # starts clean instead of reusing a destroyed group.
        deepspeed.comm.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
