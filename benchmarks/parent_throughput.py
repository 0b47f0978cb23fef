"""Step 1 training throughput: ``python -m benchmarks.parent_throughput --config C [--workers N]``.

Runs the real job (Ray Train + DeepSpeed, or the bare loop with ``--workers 0``) for a
few iterations into a temporary storage root and prints images/s, the first iterations
(warm-up) excluded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import torch

from benchmarks.machine import cpu_description


def _machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} x{torch.cuda.device_count()}"
    return f"{cpu_description()} (CPU only)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo_cpu.yaml")
    parser.add_argument("--iters", type=int, default=20, help="iterations to run; the first 5 are warm-up, images/s is measured over windows of 5")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers; 0 runs the loop without Ray")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.iters <= 6:
        parser.error(f"--iters must exceed 6 (5 warm-up iterations), got {args.iters}")

    from ecom2f.config import load_config
    from ecom2f.steps.parent.metrics_log import read_metrics

    with tempfile.TemporaryDirectory(prefix="ecom2f-bench-") as root:
        overrides = [
            f"storage.root={root}", f"solver.max_iter={args.iters}", "parent.log_period=5",
            f"parent.checkpoint_period={args.iters}", f"solver.lr_schedule.steps=[{args.iters - 1}]",
            f"ray.num_workers={max(args.workers, 1)}", *args.overrides,
        ]
        config = load_config(args.config, overrides)
        if args.workers == 0:
            from ecom2f.engine.distributed import single_process_group
            from ecom2f.steps.datasets import ensure_synthetic_data, training_dataset
            from ecom2f.steps.parent import train_parent
            from ecom2f.steps.parent.session import LocalSession

            ensure_synthetic_data(config)
            session = LocalSession(os.path.join(root, "session"))
            with single_process_group():
                train_parent(config, session, training_dataset(config))
            reports = session.reported
        else:
            from ecom2f.steps.parent import launch_parent_training

            launch_parent_training(config)
            reports = read_metrics(config.storage.layout().parent_metrics)
    rates = [r["images_per_s"] for r in reports if r["step"] > 5]  # windows of 5 iterations
    mode = "bare loop, 1 process" if args.workers == 0 else f"Ray Train, {args.workers} workers"
    print(f"Machine: {_machine()}; config {args.config} {' '.join(args.overrides)}")
    print("| mode | global batch | images/s (median) | images/s (min-max) |")
    print("|---|---:|---:|---:|")
    print(f"| {mode} | {config.solver.ims_per_batch} | {statistics.median(rates):.2f} | "
          f"{min(rates):.2f}-{max(rates):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
