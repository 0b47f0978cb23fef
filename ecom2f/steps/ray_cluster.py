"""The stages of the Ray Data jobs (step 2, evaluation): where they run, how Ray starts, what
crosses between them, and how a model actor computes and keeps time.

Both jobs chain three ``map_batches`` stages (:func:`staged_dataset`): CPU loaders (decode,
resize), model actors (the network only), CPU scorers (PQ, mIoU, mask AP). Between stages an
image travels as packed cells (:func:`pack`): masks at 1 bit per pixel, label maps in the
smallest unsigned type, never mask logits.

Resource rule (:func:`model_stage_plan`, :func:`cpu_stage_plan`):

- GPU clusters (``ray.use_gpu`` and GPUs in ``ray.cluster_resources()``): one GPU and one CPU per
  model actor; ``num_actors`` None = one actor per GPU. CPU stages get 1 CPU per actor.
- CPU clusters: every actor asks for half a CPU (ENGINEERING.md: two 1-CPU actors plus a read
  task deadlock a 2-CPU node); ``num_actors`` None = 1 model actor.
- An explicit ``num_actors`` always wins. Each CPU stage scales between 1 actor and its share of
  the CPUs the model actors leave free.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FRACTIONAL_CPUS", "PRECISIONS", "StagePlan", "model_stage_plan", "cpu_stage_plan", "stage_plans",
    "init_ray", "network_precision", "DeviceClock", "Stage", "staged_dataset", "pack", "unpack", "pack_masks",
    "unpack_masks", "compact_labels",
]

FRACTIONAL_CPUS = 0.5
GPU_ACTOR_CPUS = 1.0  # the Python thread that feeds the GPU; decoding and scoring run elsewhere
CPU_STAGES = 2  # loaders and scorers share the CPUs the model actors leave
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class StagePlan:
    """An actor pool of ``min_size..max_size`` actors, each asking for ``resources``
    (``map_batches`` keyword arguments: ``num_cpus``, ``num_gpus``)."""

    min_size: int
    max_size: int
    resources: dict[str, float]

    def map_kwargs(self) -> dict:
        """``compute=ActorPoolStrategy(...)`` plus the per-actor resources, for ``map_batches``."""
        import ray.data

        if self.min_size == self.max_size:
            strategy = ray.data.ActorPoolStrategy(size=self.min_size)
        else:
            strategy = ray.data.ActorPoolStrategy(min_size=self.min_size, max_size=self.max_size)
        return {"compute": strategy, **self.resources}


def _gpus(cluster: Mapping[str, float]) -> int:
    return int(cluster.get("GPU", 0))


def model_stage_plan(cluster: Mapping[str, float], use_gpu: bool, num_actors: int | None) -> StagePlan:
    """The model actors' pool for a cluster whose ``ray.cluster_resources()`` is ``cluster``.

    Raises ValueError when GPUs are asked for, none is in the cluster and no count is given
    (the actors would wait forever); with an explicit count the job waits for GPU nodes that
    an autoscaler may still add.
    """
    if num_actors is not None and num_actors < 1:
        raise ValueError(f"num_actors {num_actors} must be >= 1 (or None: one per GPU, 1 on CPU clusters)")
    if not use_gpu:
        size = num_actors or 1
        return StagePlan(size, size, {"num_cpus": FRACTIONAL_CPUS})
    if num_actors is None:
        if _gpus(cluster) < 1:
            raise ValueError(
                f"ray.use_gpu is true but the cluster has no GPU (resources {dict(cluster)}); set ray.use_gpu=false, "
                "or give depth.num_actors / evaluation.num_actors to wait for GPU nodes an autoscaler adds"
            )
        num_actors = _gpus(cluster)
    return StagePlan(num_actors, num_actors, {"num_gpus": 1, "num_cpus": GPU_ACTOR_CPUS})


def cpu_stage_plan(cluster: Mapping[str, float], model: StagePlan) -> StagePlan:
    """One CPU stage's pool (loaders or scorers): 1 actor up to its share of the free CPUs."""
    on_gpus = "num_gpus" in model.resources
    per_actor = 1.0 if on_gpus else FRACTIONAL_CPUS
    free = float(cluster.get("CPU", 0)) - model.max_size * model.resources.get("num_cpus", 0.0)
    most = max(1, math.floor(free / CPU_STAGES / per_actor))
    return StagePlan(1, most, {"num_cpus": per_actor})


def stage_plans(use_gpu: bool, num_actors: int | None) -> tuple[StagePlan, StagePlan]:
    """(model stage, each CPU stage) for the connected Ray cluster."""
    import ray

    cluster = ray.cluster_resources()
    model = model_stage_plan(cluster, use_gpu, num_actors)
    return model, cpu_stage_plan(cluster, model)


def init_ray(address: str | None) -> None:
    """Connects to ``address``, else ``$RAY_ADDRESS``, else starts a local cluster (once per process)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS"))


# ----------------------------------------------------------------------------- inside a model actor


def network_precision(precision: str, device) -> contextlib.AbstractContextManager:
    """The network's autocast: bf16 under ``torch.autocast(device.type, torch.bfloat16)``, fp32 none.

    Only the forward pass goes under it; callers cast outputs to fp32 before post-processing
    and losses.
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {PRECISIONS}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class DeviceClock:
    """``clock()`` after the device's queued work is done: on CUDA it synchronises first, so a
    difference of two readings is the time the device took, not the time to queue kernels.

    ``clock`` is the time source (``time.perf_counter``); tests give a counter instead.
    """

    def __init__(self, device, clock: Callable[[], float] = time.perf_counter) -> None:
        self.device = device
        self.clock = clock

    def __call__(self) -> float:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self.clock()


# ----------------------------------------------------------------------------- the pipeline and its payloads

MAX_BLOCKS = 1000  # input blocks: about one per batch on small runs, at most this many on COCO-sized ones


@dataclass(frozen=True)
class Stage:
    """One ``map_batches`` stage: the callable class, its constructor's keyword arguments, its pool."""

    udf: type
    kwargs: dict
    plan: StagePlan


def staged_dataset(items: list[dict], stages: list[Stage], batch_size: int):
    """``ray.data.from_items(items)`` through ``stages`` in order, ``batch_size`` rows per call.

    Blocks of about one batch keep the batches of every stage aligned with the input order
    (a batch holds consecutive items), and let results stream back early.
    """
    import ray.data

    blocks = min(MAX_BLOCKS, max(1, math.ceil(len(items) / batch_size)))
    dataset = ray.data.from_items(items, override_num_blocks=blocks)
    for stage in stages:
        dataset = dataset.map_batches(stage.udf, batch_size=batch_size, batch_format="numpy",
                                      fn_constructor_kwargs=stage.kwargs, **stage.plan.map_kwargs())
    return dataset


def pack(value) -> bytes:
    """One image's payload between stages (numpy arrays, lists, dicts) as one binary cell."""
    return pickle.dumps(value, protocol=5)


def unpack(cell: bytes):
    return pickle.loads(cell)


def pack_masks(masks) -> dict:
    """bool ``[K, H, W]`` -> 1 bit per pixel (exact; ``unpack_masks`` inverts it)."""
    masks = np.asarray(masks, dtype=bool)
    return {"bits": np.packbits(masks.reshape(-1)), "shape": tuple(masks.shape)}


def unpack_masks(packed: dict) -> np.ndarray:
    shape = packed["shape"]
    return np.unpackbits(packed["bits"], count=math.prod(shape)).reshape(shape).astype(bool)


def compact_labels(labels) -> np.ndarray:
    """A non-negative integer map (ids, classes) in the smallest unsigned dtype that holds it."""
    labels = np.asarray(labels)
    if not labels.size or labels.min() < 0:
        return labels
    top = int(labels.max())
    dtype = next((d for d in (np.uint8, np.uint16, np.uint32) if top <= np.iinfo(d).max), np.int64)
    return labels.astype(dtype)
