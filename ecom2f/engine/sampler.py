"""One global, endless, resumable stream of dataset indices, split among training ranks."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def epoch_order(dataset_size: int, epoch: int, seed: int, shuffle: bool = True) -> list[int]:
    """The dataset's order in one epoch: a permutation drawn from ``seed + epoch`` (or 0..n-1)."""
    if not shuffle:
        return list(range(dataset_size))
    return torch.randperm(dataset_size, generator=torch.Generator().manual_seed(seed + epoch)).tolist()


class GlobalStreamSampler(Sampler[int]):
    """This rank's indices of a global stream that does not depend on the number of ranks.

    The stream is epoch after epoch of :func:`epoch_order`, never padded. It is consumed in
    global micro-batches of ``global_batch`` indices (one per micro-step of all ranks
    together); rank ``r`` takes the ``r``-th contiguous slice of ``global_batch //
    world_size`` of each. Where the run stands is one number, the global count of samples
    consumed, which a checkpoint stores (counted by the training loop, because DataLoader
    workers prefetch ahead of what was trained on). A run resumed with another number of
    workers, and the same ``global_batch``, continues the same stream: no sample is skipped
    or repeated.
    """

    def __init__(self, dataset_size: int, rank: int, world_size: int, global_batch: int, seed: int = 0,
                 shuffle: bool = True, start: int = 0):
        if dataset_size <= 0:
            raise ValueError(f"GlobalStreamSampler: dataset_size must be positive, got {dataset_size}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"GlobalStreamSampler: need 0 <= rank < world_size, got rank={rank}, "
                             f"world_size={world_size}")
        if global_batch <= 0 or global_batch % world_size:
            raise ValueError(f"GlobalStreamSampler: global_batch {global_batch} must be a positive multiple of "
                             f"world_size {world_size}")
        if start < 0 or start % global_batch:
            raise ValueError(f"GlobalStreamSampler: start {start} must be a non-negative multiple of the global "
                             f"batch {global_batch} (a checkpoint is taken between micro-steps)")
        self.dataset_size, self.rank, self.world_size = dataset_size, rank, world_size
        self.global_batch, self.seed, self.shuffle, self.start = global_batch, seed, shuffle, start
        self.per_rank = global_batch // world_size

    def positions(self, micro_step: int) -> range:
        """Positions in the global stream this rank reads at a micro-step (0-based, from the run's start)."""
        first = micro_step * self.global_batch + self.rank * self.per_rank
        return range(first, first + self.per_rank)

    def __iter__(self) -> Iterator[int]:
        micro_step = self.start // self.global_batch
        cached_epoch, order = -1, []
        while True:
            for position in self.positions(micro_step):
                epoch, offset = divmod(position, self.dataset_size)
                if epoch != cached_epoch:
                    cached_epoch, order = epoch, epoch_order(self.dataset_size, epoch, self.seed, self.shuffle)
                yield order[offset]
            micro_step += 1
