"""The Ray glue of the Ray Data jobs (step 2, the evaluation): how Ray starts, what each stage
asks of the cluster, and the staged pipeline.

Both jobs chain three ``map_batches`` stages (:func:`load_model_score`): CPU loaders (decode,
resize), model actors (the network only: :mod:`ecom2f.steps.inference`), CPU scorers (PQ,
mIoU, mask AP). Between stages an image travels as packed cells (:mod:`ecom2f.steps.packing`).

Resource rule (:func:`model_stage_plan`, :func:`cpu_stage_plan`), the same for both jobs:

- GPU clusters (``ray.use_gpu`` and GPUs in ``ray.cluster_resources()``): one GPU and one CPU per
  model actor; ``num_actors`` None = one actor per GPU. CPU stages get 1 CPU per actor.
- CPU clusters: every actor asks for half a CPU (ENGINEERING.md: two 1-CPU actors plus a read
  task deadlock a 2-CPU node); ``num_actors`` None = 1 model actor.
- An explicit ``num_actors`` always wins. Each CPU stage scales between 1 actor and its share of
  the CPUs the model actors leave free.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

__all__ = [
    "FRACTIONAL_CPUS",
    "Stage",
    "StagePlan",
    "cpu_stage_plan",
    "init_ray",
    "load_model_score",
    "load_model_score_stages",
    "model_stage_plan",
    "stage_plans",
    "staged_dataset",
]

FRACTIONAL_CPUS = 0.5
GPU_ACTOR_CPUS = 1.0  # the Python thread that feeds the GPU; decoding and scoring run elsewhere
CPU_STAGES = 2  # loaders and scorers share the CPUs the model actors leave


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


# ----------------------------------------------------------------------------- the pipeline

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


# A stage's work: the callable class Ray Data builds per actor, and its constructor's keyword arguments.
Work = tuple[type, dict]


def load_model_score_stages(loader: Work, model: Work, scorer: Work, use_gpu: bool,
                            num_actors: int | None) -> list[Stage]:
    """The three stages of both jobs with their pools: loaders and scorers on the CPU stage plan,
    the model on the model stage plan (:func:`stage_plans` of the connected cluster)."""
    model_plan, cpu_plan = stage_plans(use_gpu, num_actors)
    return [Stage(*loader, cpu_plan), Stage(*model, model_plan), Stage(*scorer, cpu_plan)]


def load_model_score(items: list[dict], loader: Work, model: Work, scorer: Work, *, use_gpu: bool,
                     num_actors: int | None, batch_size: int, job: str):
    """``items`` (``{"index": position}`` rows) through loaders (CPU) -> model actors -> scorers
    (CPU), lazily: a Ray Dataset of the scorers' rows. ``job`` names the job in the log."""
    stages = load_model_score_stages(loader, model, scorer, use_gpu, num_actors)
    cpu, net = stages[0].plan, stages[1].plan
    log.info("%s stages: %d-%d loaders %s, %d model actors %s, %d-%d scorers", job, cpu.min_size, cpu.max_size,
             cpu.resources, net.max_size, net.resources, cpu.min_size, cpu.max_size)
    return staged_dataset(items, stages, batch_size)
