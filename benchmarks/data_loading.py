"""Data-loading benchmark: images/s per DataLoader worker, COCO LSJ recipe at 1024.

    python -m benchmarks.data_loading [--num-images 64] [--image-size 160] [--workers 0 1 2]

Generates a synthetic panoptic set in a temporary folder, then times full passes of
a DataLoader (decode + LSJ augmentation + padded collate) after one warm-up batch.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch

from benchmarks.machine import cpu_description


def _machine() -> str:
    return f"{cpu_description()}, torch {torch.__version__}, Python {platform.python_version()}"


def measure(dataset, workers: int, batch_size: int, batches: int) -> float:
    """images/s of a DataLoader over ``batches`` batches after one warm-up batch."""
    from functools import partial

    from ecom2f.data.collate import collate_samples

    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=partial(collate_samples, with_id_maps=False),  # what a training loop ships
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),
    )
    iterator = iter(loader)
    next(iterator)  # warm-up: worker start-up is not throughput
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        images += batch["images"].shape[0]
    return images / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=64, help="synthetic images to generate")
    parser.add_argument("--image-size", type=int, default=160, help="synthetic image side")
    parser.add_argument("--target-size", type=int, default=1024, help="LSJ output side")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--batches", type=int, default=16, help="timed batches per setting")
    args = parser.parse_args(argv)

    from ecom2f.data.registry import build_dataset
    from ecom2f.data.synthetic import generate
    from ecom2f.data.transforms import coco_lsj

    torch.set_num_threads(1)  # the main process counts as one worker when workers=0
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="ecom2f_data_bench_") as tmp:
        generate(tmp, args.num_images, args.image_size, seed=0)
        dataset = build_dataset(
            {
                "format": "coco_panoptic",
                "image_root": os.path.join(tmp, "images"),
                "json": os.path.join(tmp, "panoptic.json"),
                "png_root": os.path.join(tmp, "panoptic"),
            },
            transform=coco_lsj(args.target_size),
        )
        print(f"machine: {_machine()}")
        print(
            f"COCO LSJ recipe at {args.target_size}, synthetic {args.image_size}px images, "
            f"batch {args.batch_size}, {args.batches} timed batches"
        )
        print(f"{'workers':>8} {'images/s':>10} {'images/s per worker':>20}")
        for workers in args.workers:
            rate = measure(dataset, workers, args.batch_size, args.batches)
            print(f"{workers:>8} {rate:>10.1f} {rate / max(workers, 1):>20.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
