"""The endless stream of training batches one rank reads, from where the run stands."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import torch

from ecom2f.config import Config
from ecom2f.engine.sampler import GlobalStreamSampler


def training_batches(config: Config, dataset, rank: int, world_size: int, device: torch.device,
                     samples_consumed: int) -> Iterator[dict]:
    """Collated batches of ``batch_size_per_worker`` images for ``rank``, starting after
    ``samples_consumed`` images of the global stream (see :class:`GlobalStreamSampler`)."""
    from ecom2f.data import collate_samples

    if config.ray.num_workers != world_size:
        raise ValueError(f"ray.num_workers is {config.ray.num_workers} but this loop runs with {world_size} "
                         "workers: the per-worker batch is derived from it, so set it to the world size")
    per_worker = config.batch_size_per_worker
    sampler = GlobalStreamSampler(len(dataset), rank, world_size, global_batch=per_worker * world_size,
                                  seed=config.seed, start=samples_consumed)
    workers = config.data.loader_workers
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=per_worker, sampler=sampler,
        collate_fn=partial(collate_samples, with_id_maps=False),
        num_workers=workers, persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        # Its own generator, so creating the iterator does not draw from the global RNG that a
        # resumed run restores; seeded by the resume point, so loader workers (which seed their
        # augmentation from it) do not replay the first images' augmentations after a resume.
        generator=torch.Generator().manual_seed(config.seed * 1_000_003 + rank * 7919 + samples_consumed),
    )
    while True:  # the sampler is endless; re-enter only if a loader is exhausted anyway
        yield from loader


def to_device(batch: dict, device: torch.device) -> list[dict]:
    """The batch's targets on the device (asynchronous copies from pinned memory)."""
    return [{key: value.to(device, non_blocking=True) for key, value in target.items()} for target in batch["targets"]]
