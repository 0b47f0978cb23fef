"""Step 1's training on the GPU, through DeepSpeed's engine as in production: fp32 master
weights, bf16 autocast (``solver.precision=bf16``).

- the demo model (``configs/demo_cpu.yaml``'s model) learns a fixed batch in 30 steps, with
  finite losses, and a step reads nothing back from the device but the Hungarian matcher's one
  cost-matrix copy per criterion call (CUDA's own sync detector, C++ included);
- Mask2Former R50 (``configs/coco_panoptic_r50.yaml``'s model, random weights) trains 10 steps
  at 1024x1024, batch 2, with finite losses;
- ``train_parent`` through a :class:`LocalSession` with ZeRO-2 runs 30 steps, and a run resumed
  from its step-15 checkpoint computes the same step-16 loss.

Throughput and peak memory are recorded as test properties (the GPU check's report shows them).
Data: the synthetic panoptic generator (no downloads). The process group is NCCL, world size 1.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import socket
import time

import pytest
import torch

# The project's names this file uses, in one place.
from ecom2f.config import load_config
from ecom2f.steps.datasets import ensure_synthetic_data, training_dataset
from ecom2f.steps.parent.build import build_trainer
from ecom2f.steps.parent.loader import training_batches
from ecom2f.steps.parent.session import LocalSession
from ecom2f.steps.parent.train import train_parent, train_step
from tests.conftest import REPO_ROOT
from tests.gpu.syncs import CudaSyncs

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")
DEMO = REPO_ROOT / "configs" / "demo_cpu.yaml"
R50 = REPO_ROOT / "configs" / "coco_panoptic_r50.yaml"
ONE_WORKER = ["ray.num_workers=1", "solver.precision=bf16", "solver.warmup_iters=0", "solver.lr_schedule.steps=[]",
              "data.loader_workers=0"]
_DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module", autouse=True)
def nccl_group():
    """torch.distributed with NCCL, world size 1, as one GPU worker of a Ray Train job has."""
    deepspeed = pytest.importorskip("deepspeed", reason="deepspeed is not installed: carry gpu_bundle/ (make gpu-bundle)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    saved = {k: os.environ.get(k) for k in _DIST_ENV}
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(0)
    deepspeed.init_distributed(dist_backend="nccl", auto_mpi_discovery=False)
    try:
        yield
    finally:
        deepspeed.comm.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def demo_config(root, *overrides):
    return load_config(DEMO, [*ONE_WORKER, f"data.root={root}/data", f"storage.root={root}/runs",
                              "data.synthetic.num_train=8", "data.synthetic.num_val=2", *overrides])


def r50_config(root, *overrides):
    return load_config(R50, [
        *ONE_WORKER, "model.backbone.weights=null", "parent.init.mode=scratch", f"data.root={root}/data",
        f"storage.root={root}/runs", "data.train=synthetic_panoptic_train", "data.val=synthetic_panoptic_val",
        "data.synthetic.num_train=2", "data.synthetic.num_val=1", "data.synthetic.image_size=1024", *overrides,
    ])


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    ensure_synthetic_data(demo_config(root))
    return root


def host_batches(config, count: int) -> list[dict]:
    """The loader's first batches, collated and pinned on the host as in training."""
    stream = training_batches(config, training_dataset(config), 0, 1, CUDA, samples_consumed=0)
    return [next(stream) for _ in range(count)]


def timed_steps(trainer, batches, exits, steps: int) -> tuple[list[float], float, float]:
    """``steps`` optimizer steps -> (losses at exits[-1], images/s, peak GiB)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    images, losses = 0, []
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        losses.append(train_step(trainer, iter([batch]), exits, accumulation=1)[exits[-1]])
        images += batch["images"].shape[0]
    values = torch.stack(losses).float().tolist()  # the one read of the device, after the loop
    seconds = time.perf_counter() - start
    return values, images / seconds, torch.cuda.max_memory_allocated() / 2**30


def test_demo_model_learns_a_fixed_batch_and_steps_without_host_syncs(demo_root, record_property):
    config = demo_config(demo_root, "solver.ims_per_batch=4", "parent.zero_stage=0", "solver.max_iter=100")
    trainer = build_trainer(config, rank=0, device=CUDA)
    fixed = host_batches(config, 1)[0]
    train_step(trainer, iter([fixed]), [6], accumulation=1)  # warm-up: cuDNN, cuBLAS and allocator set-up
    losses, rate, peak = timed_steps(trainer, itertools.repeat(fixed), [6], steps=30)
    record_property("losses_first_last", [round(losses[0], 3), round(losses[-1], 3)])
    record_property("images_per_s", round(rate, 1))
    record_property("peak_gib", round(peak, 2))
    assert all(math.isfinite(x) for x in losses), losses
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, f"the loss on one fixed batch did not fall: first 5 {first:.3f}, last 5 {last:.3f}"

    # A step from the loader's pinned host batches, one exit and several: the only host-device
    # synchronisation is the matcher copying its cost matrix, once per criterion call.
    batches = host_batches(config, 6)
    found = {}
    for exits, three in (([3], batches[:3]), ([2, 4, 6], batches[3:])):
        train_step(trainer, iter(three[:1]), exits, accumulation=1)  # warm-up of this exit set
        with CudaSyncs() as syncs:
            train_step(trainer, iter(three[1:]), exits, accumulation=2)  # 2 micro-batches
        others = syncs.outside("matcher.py")
        found[str(exits)] = {"criterion_calls": 2 * len(exits), "matcher": len(syncs.syncs) - len(others),
                             "other": [str(s) for s in others]}
    record_property("host_syncs", found)
    for exits, counts in found.items():
        assert counts["other"] == [], f"exits {exits}: synchronisations besides the matcher's: {counts['other']}"
        assert counts["matcher"] == counts["criterion_calls"], (exits, counts)


def test_r50_at_1024_trains_ten_steps(tmp_path, record_property):
    config = r50_config(tmp_path, "solver.ims_per_batch=2", "parent.zero_stage=0", "solver.max_iter=100")
    ensure_synthetic_data(config)
    trainer = build_trainer(config, rank=0, device=CUDA)
    batches = host_batches(config, 2)
    assert tuple(batches[0]["images"].shape) == (2, 3, 1024, 1024)
    train_step(trainer, iter(batches[:1]), [6], accumulation=1)  # warm-up
    losses, rate, peak = timed_steps(trainer, itertools.cycle(batches), [6], steps=10)
    record_property("losses_first_last", [round(losses[0], 3), round(losses[-1], 3)])
    record_property("images_per_s", round(rate, 2))
    record_property("peak_gib", round(peak, 2))
    assert all(math.isfinite(x) for x in losses), losses


def test_zero2_bf16_training_resumes_with_the_same_next_loss(demo_root, tmp_path, record_property):
    config = demo_config(demo_root, "solver.ims_per_batch=2", "parent.zero_stage=2", "solver.max_iter=30",
                         "parent.checkpoint_period=15", "parent.log_period=1")
    dataset = training_dataset(config)
    straight = LocalSession(tmp_path / "straight", device=CUDA)
    start = time.perf_counter()
    train_parent(config, straight, dataset)
    record_property("seconds_for_30_steps", round(time.perf_counter() - start, 1))
    assert [r["step"] for r in straight.reported] == list(range(1, 31))
    assert all(r["zero_stage"] == 2 and r["precision"] == "bf16" for r in straight.reported)

    resumed_root = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight" / "checkpoint_000000015", resumed_root / "checkpoint_000000015")
    resumed = LocalSession(resumed_root, device=CUDA)
    train_parent(config, resumed, dataset)
    assert [r["step"] for r in resumed.reported] == list(range(16, 31))
    assert all(r["resumed_from"] == 15 for r in resumed.reported)

    def losses(report):
        return {k: v for k, v in report.items() if k.startswith("loss_exit_")}

    before, after = losses(straight.reported[15]), losses(resumed.reported[0])
    record_property("step_16_losses", {"straight": before, "resumed": after})
    assert before.keys() == after.keys() and before
    assert all(math.isfinite(v) for r in straight.reported for v in losses(r).values())
    # Same weights, optimizer state, RNG and batch: the forward is deterministic (only the
    # backward's atomics are not), so the first loss after the resume is the same number.
    for key in before:
        assert after[key] == pytest.approx(before[key], rel=1e-5), key
    assert resumed.reported[0]["lr"] == pytest.approx(straight.reported[15]["lr"])
