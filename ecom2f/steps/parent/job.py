"""Step 1 as a Ray job: checks first, then Ray Train runs :func:`train_parent` on every worker."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass

from ecom2f import storage
from ecom2f.config import Config, save_config, with_absolute_local_paths
from ecom2f.steps.datasets import ensure_synthetic_data, training_dataset
from ecom2f.steps.parent.init import check_parent_init
from ecom2f.steps.parent.state import check_resumable
from ecom2f.steps.ray_cluster import init_ray
from ecom2f.steps.runs import open_run, worker_config
from ecom2f.storage.errors import StorageNotSharedError
from ecom2f.storage.layout import PARENT_WEIGHTS

log = logging.getLogger(__name__)


@dataclass
class ParentJobResult:
    weights_uri: str
    metrics: dict
    checkpoint_path: str


def parent_worker(loop_config: dict) -> None:
    """What each Ray Train worker runs (importable, so workers can unpickle it)."""
    from ecom2f.steps.parent.ray_session import RayTrainSession
    from ecom2f.steps.parent.train import train_parent

    config = worker_config(loop_config["config"], source="the job's resolved config")
    layout = config.storage.layout()
    session = RayTrainSession(layout.parent_metrics, layout.parent_tensorboard if config.parent.tensorboard else None)
    try:
        train_parent(config, session, training_dataset(config), fault=loop_config.get("fault"))
    finally:
        session.close()


def prepare_parent_run(config: Config) -> int:
    """Everything that can fail cheaply, before any Ray or GPU work.

    Storage preflight (bucket, credentials, endpoint), the parent's initial weights (files
    present and fitting the model), the resolved config saved with the run, synthetic data
    generated if asked for, and the training set indexed (a missing or malformed annotation
    file, or too many bad samples, stop the job here). Returns the training set's size.
    """
    layout = open_run(config)
    check_parent_init(config)
    save_config(config, layout.config)
    ensure_synthetic_data(config)
    dataset = training_dataset(config)
    if len(dataset) < config.ray.num_workers * config.batch_size_per_worker:
        raise ValueError(
            f"the training set {config.data.train!r} has {len(dataset)} images, fewer than one global batch "
            f"({config.ray.num_workers} workers x {config.batch_size_per_worker}); use more data or smaller batches"
        )
    return len(dataset)


def check_storage_shared(config: Config, node_ips: list[str]) -> None:
    """Every rank writes its checkpoint shards where ``storage.root`` points: on a cluster of
    several machines a local folder would scatter them over the machines' own disks."""
    if len(node_ips) > 1 and not storage.is_s3(config.storage.root) and not config.storage.shared_filesystem:
        raise StorageNotSharedError(
            f"storage.root {config.storage.root!r} is a local folder but the Ray cluster has {len(node_ips)} nodes "
            f"({', '.join(sorted(node_ips))}): each worker would write its checkpoints to its own disk. Use an "
            "s3:// root, "
            "or, if that folder is a filesystem shared by every node (NFS, EFS, Lustre), set "
            "storage.shared_filesystem=true"
        )


def check_resume_compatible(config: Config, filesystem, storage_path: str) -> None:
    """Refuses, before any worker starts, to resume a checkpoint this run's workers cannot load."""
    import pyarrow.fs
    from ray.train import Result

    run_path = f"{storage_path.rstrip('/')}/{config.storage.layout().parent_train_name}"
    if filesystem.get_file_info(run_path).type == pyarrow.fs.FileType.NotFound:
        return
    try:
        latest = Result.from_path(run_path, storage_filesystem=filesystem)
    except RuntimeError:
        return  # no checkpoint was ever reported: nothing to resume
    metrics = latest.metrics or {}
    if latest.checkpoint is None or "world_size" not in metrics:
        return
    check_resumable(int(metrics["world_size"]), int(metrics["zero_stage"]), config.ray.num_workers,
                    config.parent.zero_stage, f"the newest step-1 checkpoint ({latest.checkpoint.path})")


def launch_parent_training(config: Config, fault=None) -> ParentJobResult:
    """Runs step 1 on the Ray cluster (``ray.address``, ``$RAY_ADDRESS`` or a local one).

    Running it again with the same ``storage.root`` and ``storage.run`` resumes from the
    newest checkpoint. The final weights land at ``<run>/parent/model_final.pth``, the
    metrics at ``<run>/parent/metrics/`` and ``<run>/parent/tensorboard/``. ``fault``: a
    callable ``fault(step, rank)`` every worker calls before each step (fault-injection tests).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    config = with_absolute_local_paths(config)  # workers run in folders of their own
    layout = config.storage.layout()
    weights_uri = layout.parent_weights
    prepare_parent_run(config)
    if storage.exists(weights_uri):
        log.info("step 1 is complete (%s exists); nothing to train", weights_uri)
        return ParentJobResult(weights_uri, {}, "")
    filesystem, storage_path = storage.pyarrow_filesystem(layout.parent)
    check_resume_compatible(config, filesystem, storage_path)
    init_ray(config.ray.address)
    check_storage_shared(config, [node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]])
    resources = {"CPU": config.ray.cpus_per_worker, **config.ray.resources}
    if config.ray.num_gpus_per_worker:
        resources["GPU"] = config.ray.num_gpus_per_worker
    trainer = TorchTrainer(
        parent_worker,
        train_loop_config={"config": config.model_dump(mode="json"), "fault": fault},
        scaling_config=ScalingConfig(
            num_workers=config.ray.num_workers, use_gpu=config.ray.use_gpu, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend="nccl" if config.ray.use_gpu else "gloo"),
        run_config=RunConfig(
            name=layout.parent_train_name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=config.parent.keep_last),
            failure_config=FailureConfig(max_failures=config.parent.max_failures),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"step 1 finished without a checkpoint under {layout.parent}; see the Ray logs")
    with tempfile.TemporaryDirectory(prefix="ecom2f-final-") as local:
        result.checkpoint.to_directory(local)
        storage.upload_file(os.path.join(local, PARENT_WEIGHTS), weights_uri)
    log.info("parent weights: %s", weights_uri)
    return ParentJobResult(weights_uri, dict(result.metrics or {}), result.checkpoint.path)
