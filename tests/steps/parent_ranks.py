"""Step 1's loop on several ranks without Ray: one process per rank, gloo on loopback.

Used by the world-size tests: ``run_ranks`` spawns ``world_size`` processes that each run
``train_parent`` with a :class:`SharedFolderSession` (every rank copies its part of a
checkpoint into one folder, as Ray Train merges them) on a dataset that records, per rank,
which indices it read.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import torch

CHECKPOINT_PREFIX = "checkpoint_"


class SharedFolderSession:
    """Rank ``rank`` of ``world_size``; checkpoints merged under ``root/checkpoint_<step>``."""

    def __init__(self, root, rank: int = 0, world_size: int = 1):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.rank, self.world_size = rank, world_size
        self.device = torch.device("cpu")
        self.reported: list[dict] = []

    def latest_checkpoint(self) -> str | None:
        found = sorted(p for p in self.root.glob(CHECKPOINT_PREFIX + "*") if p.is_dir())
        return str(found[-1]) if found else None

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        self.reported.append(dict(metrics))
        if checkpoint_dir is not None:
            shutil.copytree(checkpoint_dir, self.root / f"{CHECKPOINT_PREFIX}{int(metrics['step']):09d}",
                            dirs_exist_ok=True)


class RecordingDataset(torch.utils.data.Dataset):
    """The wrapped dataset, appending every index it serves to ``log`` (read with num_workers=0)."""

    def __init__(self, dataset, log: str):
        self.dataset, self.log = dataset, log

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        with open(self.log, "a") as f:
            f.write(f"{index}\n")
        return self.dataset[index]


def read_indices(log) -> list[int]:
    return [int(line) for line in Path(log).read_text().split()] if Path(log).exists() else []


class StopHere(Exception):
    pass


def stop_at(step_to_stop: int | None):
    def fault(step, rank):
        if step == step_to_stop:
            raise StopHere
    return fault


def _rank_main(rank: int, world_size: int, port: int, config_dict: dict, session_root: str, log_dir: str,
               stop_step: int | None) -> None:
    import deepspeed

    from ecom2f.config import config_from_dict
    from ecom2f.engine.deepspeed_config import disable_cpu_shm_comm_build
    from ecom2f.steps.datasets import training_dataset
    from ecom2f.steps.parent import train_parent

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    disable_cpu_shm_comm_build()
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    config = config_from_dict(config_dict)
    dataset = RecordingDataset(training_dataset(config), os.path.join(log_dir, f"rank_{rank}.txt"))
    try:
        train_parent(config, SharedFolderSession(session_root, rank, world_size), dataset, fault=stop_at(stop_step))
    except StopHere:
        pass
    finally:
        deepspeed.comm.destroy_process_group()


def run_ranks(world_size: int, config_dict: dict, session_root: str, log_dir: str, stop_step: int | None) -> None:
    os.makedirs(log_dir, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_rank_main, args=(world_size, port, config_dict, session_root, log_dir, stop_step),
                                nprocs=world_size, join=True)
