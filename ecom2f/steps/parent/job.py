"""Step 1 as a Ray job: checks first, then Ray Train runs :func:`train_parent` on every worker.

What a failure costs (docs/reliability.md): a worker or node lost mid-run restarts the worker group
(``parent.max_failures`` times) from the newest intact checkpoint, so at most
``parent.checkpoint_period`` iterations are computed again; a checkpoint damaged in storage is
skipped for the one before (:func:`~ecom2f.steps.parent.state.restore_newest_intact`). The job
ends by writing ``model_final.pth`` and then its manifest (``RunLayout.parent_success``: the
weights' checksum), which later steps verify the weights against.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass

from ecom2f import storage
from ecom2f.config import Config, save_config, with_absolute_local_paths
from ecom2f.errors import BadInputError
from ecom2f.steps.datasets import ensure_synthetic_data, training_dataset
from ecom2f.steps.parent.init import check_model_fits_classes, check_parent_init
from ecom2f.steps.parent.state import check_resumable
from ecom2f.steps.ray_cluster import init_ray
from ecom2f.steps.runs import worker_config, writing_run
from ecom2f.storage import s3 as storage_s3
from ecom2f.storage.checksums import CHECKSUMS, digest, file_digest, read_verified
from ecom2f.storage.errors import StorageConnectionError, StorageError, StorageNotSharedError
from ecom2f.storage.layout import PARENT_WEIGHTS

log = logging.getLogger(__name__)


@dataclass
class ParentJobResult:
    weights_uri: str
    metrics: dict
    checkpoint_path: str


# What to do when the parent's weights are damaged; the final checkpoint still holds them.
RERUN_STEP1 = ("delete it and its manifest (parent/_SUCCESS.json) and rerun step 1 (`ecom2f train-parent` with the "
               "same --config/--storage): it takes the weights from the final checkpoint again")


def earlier_ray_checkpoints(latest) -> list:
    """The checkpoints beside ``latest`` (a ``ray.train.Checkpoint``) in its run folder that are older
    than it, newest first. Ray Train names them ``checkpoint_<date and time>``, so the names sort by age;
    a folder a failed upload left is checked like any other by the restore."""
    import pyarrow.fs
    from ray.train import Checkpoint

    parent, name = latest.path.rstrip("/").rsplit("/", 1)
    infos = latest.filesystem.get_file_info(pyarrow.fs.FileSelector(parent))
    names = sorted((info.base_name for info in infos if info.type == pyarrow.fs.FileType.Directory
                    and info.base_name.startswith("checkpoint_") and info.base_name < name), reverse=True)
    return [Checkpoint(f"{parent}/{older}", filesystem=latest.filesystem) for older in names]


class _EarlierCheckpoints:
    """Mixed into the Ray Train session: the checkpoints before the latest, fetched only when the
    latest is damaged (``train.checkpoint_candidates`` asks for them lazily)."""

    def earlier_checkpoints(self):
        import ray.train

        latest = ray.train.get_checkpoint()
        for checkpoint in earlier_ray_checkpoints(latest) if latest is not None else []:
            local = tempfile.mkdtemp(prefix="ecom2f-fallback-")
            self._fallbacks = [*getattr(self, "_fallbacks", []), local]
            log.info("rank %d: fetching the earlier checkpoint %s", self.rank, checkpoint.path)
            checkpoint.to_directory(local)
            yield local

    def close(self) -> None:
        super().close()
        for local in getattr(self, "_fallbacks", []):
            shutil.rmtree(local, ignore_errors=True)


def _session(metrics_uri: str, tensorboard_uri: str | None):
    from ecom2f.steps.parent.ray_session import RayTrainSession

    return type("ParentSession", (_EarlierCheckpoints, RayTrainSession), {})(metrics_uri, tensorboard_uri)


def parent_worker(loop_config: dict) -> None:
    """What each Ray Train worker runs (importable, so workers can unpickle it)."""
    from ecom2f.steps.parent.train import train_parent

    config = worker_config(loop_config["config"], source="the job's resolved config")
    layout = config.storage.layout()
    session = _session(layout.parent_metrics, layout.parent_tensorboard if config.parent.tensorboard else None)
    try:
        train_parent(config, session, training_dataset(config), fault=loop_config.get("fault"))
    finally:
        session.close()


def prepare_parent_run(config: Config) -> int:
    """Everything that can fail cheaply, before any Ray or GPU work.

    Storage preflight (bucket, credentials, endpoint), the parent's initial weights (files
    present and fitting the model), synthetic data generated if asked for, the training set
    indexed (a missing or malformed annotation file, or too many bad samples, stop the job
    here) and its classes matched with the model's (count, thing ids), and only then the resolved config saved with the run: a job refused by these checks
    leaves no ``config.yaml`` (so ``ecom2f.cli.fresh_run`` can remove the run folder it made).
    Returns the training set's size.
    """
    with writing_run(config) as layout:
        check_parent_init(config)
        ensure_synthetic_data(config)
        dataset = training_dataset(config)
        check_model_fits_classes(config, dataset.metadata)
        if len(dataset) < config.ray.num_workers * config.batch_size_per_worker:
            raise BadInputError(
                f"the training set {config.data.train!r} has {len(dataset)} images, fewer than one global batch "
                f"({config.ray.num_workers} workers x {config.batch_size_per_worker}); use more data or smaller "
                "batches"
            )
        save_config(config, layout.config)
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
    newest intact checkpoint. The final weights land at ``<run>/parent/model_final.pth`` (then
    their manifest, ``parent/_SUCCESS.json``), the metrics at ``<run>/parent/metrics/`` and
    ``<run>/parent/tensorboard/``. The job holds the run's lease from start to end. ``fault``: a
    callable ``fault(step, rank)`` every worker calls before each step (fault-injection tests).
    """
    config = with_absolute_local_paths(config)  # workers run in folders of their own
    with writing_run(config):
        return _train(config, fault)


def _train(config: Config, fault) -> ParentJobResult:
    import ray

    layout = config.storage.layout()
    weights_uri = layout.parent_weights
    prepare_parent_run(config)
    if storage.exists(weights_uri):
        if not storage.exists(layout.parent_success):  # a run of an older ecom2f, or stopped right after the upload
            write_parent_manifest(layout, digest(storage.read_bytes(weights_uri)), "(adopted: no manifest)")
        log.info("step 1 is complete (%s exists); nothing to train", weights_uri)
        return ParentJobResult(weights_uri, {}, "")
    filesystem, storage_path = storage.pyarrow_filesystem(layout.parent)
    check_resume_compatible(config, filesystem, storage_path)
    init_ray(config.ray.address)
    check_storage_shared(config, [node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]])
    try:
        result = _trainer(config, fault, filesystem, storage_path).fit()
    except Exception as error:
        failure = storage_failure(error, config)
        if failure is None:
            raise
        raise failure from None
    if result.checkpoint is None:
        raise RuntimeError(f"step 1 finished without a checkpoint under {layout.parent}; see the Ray logs")
    with tempfile.TemporaryDirectory(prefix="ecom2f-final-") as local:
        result.checkpoint.to_directory(local)
        weights = os.path.join(local, PARENT_WEIGHTS)
        storage.upload_file(weights, weights_uri)
        write_parent_manifest(layout, file_digest(weights), result.checkpoint.path)
    _remove_orphan_checkpoints(result, filesystem)
    return ParentJobResult(weights_uri, dict(result.metrics or {}), result.checkpoint.path)


def _trainer(config: Config, fault, filesystem, storage_path: str):
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    resources = {"CPU": config.ray.cpus_per_worker, **config.ray.resources}
    if config.ray.num_gpus_per_worker:
        resources["GPU"] = config.ray.num_gpus_per_worker
    return TorchTrainer(
        parent_worker,
        train_loop_config={"config": config.model_dump(mode="json"), "fault": fault},
        scaling_config=ScalingConfig(
            num_workers=config.ray.num_workers, use_gpu=config.ray.use_gpu, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend="nccl" if config.ray.use_gpu else "gloo"),
        run_config=RunConfig(
            name=config.storage.layout().parent_train_name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=config.parent.keep_last),
            failure_config=FailureConfig(max_failures=config.parent.max_failures),
            # Ray Train's own INFO lines (worker group started, checkpoint registered) drown the progress line.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


def write_parent_manifest(layout, checksum: dict, checkpoint: str) -> None:
    """``parent/_SUCCESS.json``, after the weights: their checksum, and the checkpoint they came from."""
    manifest = {CHECKSUMS: {PARENT_WEIGHTS: checksum}, "checkpoint": checkpoint,
                "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    storage.write_text(layout.parent_success, json.dumps(manifest, indent=2))


def read_parent_weights(layout) -> bytes:
    """The parent's weights, checked against step 1's manifest (a damaged file names itself and the step to rerun)."""
    return read_verified(layout.parent_weights, layout.parent_success, RERUN_STEP1)


def _remove_orphan_checkpoints(result, filesystem) -> None:
    """Checkpoint folders Ray Train no longer tracks (a failed upload left them, or a kill before their
    report landed) go: nothing half-written stays in the run."""
    import pyarrow.fs

    kept = {checkpoint.path.rstrip("/") for checkpoint, _ in (result.best_checkpoints or [])}
    kept.add(result.checkpoint.path.rstrip("/"))
    parent = result.checkpoint.path.rstrip("/").rsplit("/", 1)[0]
    for info in filesystem.get_file_info(pyarrow.fs.FileSelector(parent)):
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_") \
                and info.path.rstrip("/") not in kept:
            log.info("removing %s: no complete checkpoint Ray Train tracks", info.path)
            filesystem.delete_dir(info.path)


# pyarrow's S3 errors (Ray Train's checkpoint uploads and downloads) name the key, the bucket and the cause.
_PYARROW_S3 = re.compile(r"key '(?P<key>[^']*)' in bucket '(?P<bucket>[^']+)': AWS Error (?P<code>\w+)")
RAY_TRAIN_MARKER = ".validate_storage_marker"  # ray.train.v2._internal.constants.VALIDATE_STORAGE_MARKER_FILENAME
_OURS = re.compile(r"Storage\w*Error: (?P<message>cannot [a-z ]+ s3://\S+: [^\n]*)")


def storage_failure(error: BaseException, config: Config) -> StorageError | None:
    """A Ray Train failure whose cause was S3 (a checkpoint's upload or download, a metrics write) as
    one line naming the object, the endpoint and what to do; None for any other failure."""
    text = str(error)
    log.debug("step 1 failed; Ray Train's error: %s", text)
    options = config.storage.s3_options()
    endpoint = storage_s3.describe_endpoint(options)
    attempts = (f"after {options.max_attempts} attempts per request (storage.max_attempts) and "
                f"{config.parent.max_failures} restarts of the workers (parent.max_failures)")
    resume = ("rerun the same command once S3 answers: training resumes from the newest complete checkpoint "
              "(at most parent.checkpoint_period iterations are repeated)")
    # Ray Train cuts the middle out of a worker's traceback, so the text may name the checkpoint file
    # whose upload failed, or only the storage marker Ray Train checks before each upload
    # (``<run>/parent/train/.validate_storage_marker``): then the checkpoints' folder is named.
    matches = list(_PYARROW_S3.finditer(text))
    found = next((m for m in matches if "/checkpoint_" in m["key"]), matches[0] if matches else None)
    if found:
        cause = "is unreachable" if found["code"] == "NETWORK_CONNECTION" else f"failed ({found['code']})"
        folder, name = found["key"].rsplit("/", 1) if "/" in found["key"] else ("", found["key"])
        what = (f"a checkpoint under s3://{found['bucket']}/{folder}/ (Ray Train's check of its {name})"
                if name == RAY_TRAIN_MARKER else f"s3://{found['bucket']}/{found['key']}")
        return StorageConnectionError(f"step 1 could not transfer {what}: the S3 endpoint {endpoint} {cause} "
                                      f"{attempts}; {resume}")
    found = _OURS.search(text)
    if found:
        return StorageConnectionError(f"step 1 failed: {found['message'].rstrip('.')} ({attempts}); {resume}")
    return None
