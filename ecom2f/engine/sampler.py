"""A sharded, endless, resumable stream of dataset indices for one training rank."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableShardedSampler(Sampler[int]):
    """Endless indices for ``rank`` of ``world_size``, resumable at any sample.

    Epoch ``e`` is a permutation of the dataset drawn from ``seed + e`` (the same on
    every rank), padded by wrapping so it divides evenly, and rank ``r`` takes positions
    ``r, r + world_size, ...``. Which sample comes next depends only on how many this rank
    has consumed, so a checkpoint stores ``samples_consumed`` (counted by the training
    loop, because DataLoader workers prefetch ahead of what was trained on) and a resumed
    run passes it back as ``start``.
    """

    def __init__(self, dataset_size: int, rank: int, world_size: int, seed: int = 0, shuffle: bool = True,
                 start: int = 0):
        if dataset_size <= 0:
            raise ValueError(f"ResumableShardedSampler: dataset_size must be positive, got {dataset_size}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"ResumableShardedSampler: need 0 <= rank < world_size, got rank={rank}, "
                             f"world_size={world_size}")
        if start < 0:
            raise ValueError(f"ResumableShardedSampler: start must be >= 0, got {start}")
        self.dataset_size = dataset_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.start = start
        self.per_rank = math.ceil(dataset_size / world_size)

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's indices of one epoch, ``per_rank`` of them."""
        if self.shuffle:
            order = torch.randperm(self.dataset_size, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(self.dataset_size)
        padded = order.repeat(math.ceil(self.per_rank * self.world_size / self.dataset_size))
        return padded[: self.per_rank * self.world_size][self.rank :: self.world_size].tolist()

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            yield from self.epoch_indices(epoch)[offset:]
            epoch, offset = epoch + 1, 0

    def state_dict(self, samples_consumed: int) -> dict:
        return {"seed": self.seed, "samples_consumed": samples_consumed, "dataset_size": self.dataset_size,
                "world_size": self.world_size, "shuffle": self.shuffle}

    @classmethod
    def from_state_dict(cls, state: dict, dataset_size: int, rank: int, world_size: int) -> ResumableShardedSampler:
        """Rebuilds the sampler of a checkpoint; refuses a changed dataset or world size."""
        if state["dataset_size"] != dataset_size or state["world_size"] != world_size:
            raise ValueError(
                f"cannot resume the data order: the checkpoint was taken with dataset_size={state['dataset_size']} "
                f"and world_size={state['world_size']}, this run has dataset_size={dataset_size} and "
                f"world_size={world_size}. Resume with the same data and number of workers, or start a new run."
            )
        return cls(dataset_size, rank, world_size, seed=state["seed"], shuffle=state["shuffle"],
                   start=state["samples_consumed"])
