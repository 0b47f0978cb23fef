"""ECO-M2F step 2 on Ray Data: the parent at every exit on every training image -> parquet.

``build_depth_dataset(config)`` streams the dataset positions of the shards not yet complete
through three Ray Data stages (``ecom2f.steps.depth.stages``): CPU loaders, model actors
(weights loaded once per actor; one per GPU by default) and CPU scorers, and writes each shard
as soon as all its images are back. Rerunning skips complete shards; a
batch that fails leaves its shard incomplete, the others are still written, and the job
fails loudly at the end (rerun to finish). The table is then checked to hold exactly one
row per (image, exit) and the manifest (``RunLayout.depth_success``, with the checksum of every
shard file) is written last. The job holds the run's lease from start to end; it reads the
parent's weights checked against step 1's manifest.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
from collections import defaultdict

import numpy as np

from ecom2f import storage
from ecom2f.config import Config
from ecom2f.config.data import dataset_spec
from ecom2f.errors import MissingStepError
from ecom2f.steps.depth.labels import derive_labels, format_labels_summary, label_histogram, labels_summary
from ecom2f.steps.depth.stages import (
    AllExitsEvaluator,
    AllExitsModel,
    DepthLoader,
    DepthScorer,
    Fault,
    depth_dataset,
    depth_scoring,
)
from ecom2f.steps.depth.table import (
    DEPTH_SCHEMA_VERSION,
    RERUN_STEP2,
    DepthTable,
    DepthTableError,
    completed_shards,
    depth_config_hash,
    load_depth_table,
    read_depth_table,
    shard_tables,
    verify_depth_table,
    write_shard,
)
from ecom2f.steps.ray_cluster import init_ray, load_model_score
from ecom2f.steps.runs import writing_run
from ecom2f.storage.checksums import CHECKSUMS, read_manifest

log = logging.getLogger(__name__)

__all__ = [
    "DEPTH_SCHEMA_VERSION",
    "AllExitsEvaluator",
    "DepthTable",
    "DepthTableError",
    "build_depth_dataset",
    "depth_dataset",
    "derive_labels",
    "format_labels_summary",
    "label_histogram",
    "labels_summary",
    "load_depth_table",
    "read_depth_table",
]


def _shard_positions(shard: int, shard_size: int, num_images: int) -> range:
    return range(shard * shard_size, min((shard + 1) * shard_size, num_images))


def _prepare(config: Config, layout):
    """``(weights_uri, the weights' SHA-256, number of images, scoring)``; the weights are checked
    against step 1's manifest."""
    from ecom2f.steps.datasets import ensure_synthetic_data
    from ecom2f.steps.parent.job import read_parent_weights

    weights_uri = layout.parent_weights
    if not storage.exists(weights_uri):
        raise MissingStepError(f"step 2 needs the parent weights at {weights_uri}; run step 1 first "
                                f"(`ecom2f train-parent` with the same --config/--storage)")
    weights_sha256 = hashlib.sha256(read_parent_weights(layout)).hexdigest()
    ensure_synthetic_data(config)
    dataset = depth_dataset(config)
    return weights_uri, weights_sha256, len(dataset), depth_scoring(dataset.metadata)


def build_depth_dataset(config: Config, fault: Fault | None = None) -> str:
    """Step 2; returns the table's URI (``<run>/depth``). ``fault``: a callable the model actors run
    on each batch's dataset positions before the network (fault-injection tests)."""
    with writing_run(config) as layout:
        return _build(config, layout, fault)


def _build(config: Config, layout, fault: Fault | None) -> str:
    weights_uri, weights_sha256, num_images, scoring = _prepare(config, layout)
    depth_uri = layout.depth
    # The weights' contents, not only their path: a parent retrained into the same run must not
    # pass for the one an existing table was computed with.
    config_hash = depth_config_hash(config, weights_uri, weights_sha256)
    manifest = read_manifest(layout.depth_success, RERUN_STEP2)
    if manifest is not None:
        if manifest.get("config_hash") == config_hash:
            log.info("step 2 is complete (%s); nothing to compute", layout.depth_success)
            return depth_uri
        raise DepthTableError(f"{depth_uri} holds a depth table of another configuration (hash "
                              f"{manifest.get('config_hash')}, now {config_hash}); delete it or use another storage.run")
    exits, shard_size = config.depth_exits, config.depth.shard_size
    num_shards = math.ceil(num_images / shard_size)
    done = completed_shards(depth_uri, config_hash)
    todo = [s for s in range(num_shards) if s not in done]
    log.info("step 2: %d images, %d shards of %d, %d complete, %d to compute, exits %s",
             num_images, num_shards, shard_size, len(done), len(todo), exits)
    if todo:
        _run_shards(config, weights_uri, depth_uri, config_hash, todo, num_images, scoring, fault)
    digests: dict[str, dict] = {}  # the checksums of exactly the bytes verified here
    table = read_depth_table(depth_uri, digests=digests)
    verify_depth_table(table, num_images, exits)
    _write_manifest(config, layout.depth_success, config_hash, weights_uri, table, num_shards, digests)
    print(format_labels_summary(labels_summary(table, config.gate.betas, exits=config.model.gate.exits)))
    return depth_uri


def _write_manifest(config: Config, uri: str, config_hash: str, weights_uri: str, table: DepthTable,
                    num_shards: int, digests: dict[str, dict]) -> None:
    """The manifest (``RunLayout.depth_success``), written last: what the table holds and what it was computed from."""
    manifest = {
        "schema_version": DEPTH_SCHEMA_VERSION, "config_hash": config_hash, "num_images": len(table),
        "num_rows": len(table) * len(table.exits), "exits": config.depth_exits, "num_shards": num_shards,
        "shard_size": config.depth.shard_size, "gate_feature_grid": config.depth.gate_feature_grid,
        "channels": config.model.pixel_decoder.conv_dim, "weights_uri": weights_uri,
        "dataset": dataset_spec(config.depth.dataset or config.data.train), "precision": config.depth.precision,
        "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        CHECKSUMS: dict(sorted(digests.items())),
    }
    storage.write_text(uri, json.dumps(manifest, indent=2))


def _pipeline(config: Config, weights_uri: str, items: list[dict], scoring: dict, fault: Fault | None):
    """Dataset positions -> loaders (CPU) -> the network (model actors) -> scorers (CPU)."""
    config_dict = config.model_dump(mode="json")
    return load_model_score(
        items,
        loader=(DepthLoader, {"config_dict": config_dict}),
        model=(AllExitsModel, {"config_dict": config_dict, "weights_uri": weights_uri,
                               "semantic": scoring["semantic"], "fault": fault}),
        scorer=(DepthScorer, {"config_dict": config_dict, "scoring": scoring}),
        use_gpu=config.ray.use_gpu, num_actors=config.depth.num_actors, batch_size=config.depth.batch_size,
        job="step 2",
    )


def _run_shards(config: Config, weights_uri: str, depth_uri: str, config_hash: str, todo: list[int],
                num_images: int, scoring: dict, fault: Fault | None) -> None:
    # Progress: Ray Data's own bars (per stage), and one line per shard written.
    init_ray(config.ray.address)
    shard_size, exits = config.depth.shard_size, config.depth_exits
    expected = {s: len(_shard_positions(s, shard_size, num_images)) for s in todo}
    items = [{"index": i} for s in todo for i in _shard_positions(s, shard_size, num_images)]
    dataset = _pipeline(config, weights_uri, items, scoring, fault)
    pending: dict[int, dict[int, dict]] = defaultdict(dict)  # shard -> dataset position -> that image's values
    failed: dict[int, str] = {}
    finished: set[int] = set()
    written = 0
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for i, position in enumerate(batch["index"].tolist()):
            if batch["error"][i]:
                failed[position] = str(batch["error"][i])
                continue
            shard = position // shard_size
            if shard in finished:  # a repeated delivery (a retried task): already written
                continue
            pending[shard][position] = {name: values[i] for name, values in batch.items()}
            if len(pending[shard]) == expected[shard]:
                images = {name: np.stack([image[name] for image in pending[shard].values()])
                          for name in batch if name != "error"}
                rows, features = shard_tables(images, exits)
                write_shard(depth_uri, shard, rows, features, config_hash)
                del pending[shard]
                finished.add(shard)
                written += 1
                log.info("step 2: shard %d written (%d images); %d/%d shards of this run done", shard,
                         expected[shard], written, len(todo))
    if failed or pending:
        incomplete = sorted(set(pending) | {p // shard_size for p in failed})
        first = next(iter(failed.values()), "images went missing without an error")
        raise RuntimeError(
            f"step 2: {len(failed)} images failed; shards {incomplete[:20]} are incomplete (first error: {first}). "
            f"The {written} shards finished in this run are saved under {depth_uri}: rerun the same command "
            "to compute only the missing shards"
        )
