"""ECO-M2F step 2 on Ray Data: the parent at every exit on every training image -> parquet.

``build_depth_dataset(config)`` streams the dataset positions of the shards not yet complete
through an actor pool of :class:`AllExitsEvaluator` (weights loaded once per actor) and
writes each shard as soon as all its images are back. Rerunning skips complete shards; a
batch that fails leaves its shard incomplete, the others are still written, and the job
fails loudly at the end (rerun to finish). The table is then checked to hold exactly one
row per (image, exit) and ``_SUCCESS.json`` is written last.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import os
from collections import defaultdict

import numpy as np

from ecom2f import storage
from ecom2f.config import Config
from ecom2f.config_sections import dataset_spec
from ecom2f.steps.depth_evaluator import AllExitsEvaluator, depth_dataset
from ecom2f.steps.depth_labels import derive_labels, format_labels_summary, label_histogram, labels_summary
from ecom2f.steps.depth_store import (
    DEPTH_SCHEMA_VERSION,
    MANIFEST,
    DepthTableError,
    completed_shards,
    depth_config_hash,
    load_depth_table,
    shard_tables,
    verify_depth_table,
    write_shard,
)

log = logging.getLogger(__name__)

__all__ = [
    "DEPTH_SCHEMA_VERSION", "AllExitsEvaluator", "DepthTableError", "build_depth_dataset", "derive_labels",
    "format_labels_summary", "label_histogram", "labels_summary", "load_depth_table", "depth_dataset",
]

# Ray Data actors on CPU clusters ask for half a CPU: two actors at 1 CPU plus the read task
# deadlock a 2-CPU node (ENGINEERING.md). Torch still uses the node's threads.
CPU_ACTOR_CPUS = 0.5
# Blocks of dataset positions fed to the actors: about one per batch on small runs (results
# stream back early), at most this many on COCO-sized ones (each block is a tiny object).
MAX_BLOCKS = 1000


def _shard_positions(shard: int, shard_size: int, num_images: int) -> range:
    return range(shard * shard_size, min((shard + 1) * shard_size, num_images))


def _prepare(config: Config):
    from ecom2f.steps.datasets import ensure_synthetic_data
    from ecom2f.steps.parent import WEIGHTS_FILE

    layout = config.storage.layout()
    storage.preflight(layout.run_uri)
    weights_uri = storage.join(layout.parent, WEIGHTS_FILE)
    if not storage.exists(weights_uri):
        raise FileNotFoundError(f"step 2 needs the parent weights at {weights_uri}; run step 1 first "
                                f"(`ecom2f train-parent` with the same --config/--storage)")
    layout.create()
    ensure_synthetic_data(config)
    return layout, weights_uri, len(depth_dataset(config))


def build_depth_dataset(config: Config, fail_once: dict | None = None) -> str:
    """Step 2; returns the table's URI (``<run>/depth``). ``fail_once``: tests only, see ``FailOnceAtIndex``."""
    layout, weights_uri, num_images = _prepare(config)
    depth_uri = layout.depth
    # The weights' contents, not only their path: a parent retrained into the same run must not
    # pass for the one an existing table was computed with.
    config_hash = depth_config_hash(config, weights_uri, hashlib.sha256(storage.read_bytes(weights_uri)).hexdigest())
    manifest_uri = storage.join(depth_uri, MANIFEST)
    if storage.exists(manifest_uri):
        manifest = json.loads(storage.read_text(manifest_uri))
        if manifest.get("config_hash") == config_hash:
            log.info("step 2 is complete (%s); nothing to compute", manifest_uri)
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
        _run_shards(config, weights_uri, depth_uri, config_hash, todo, num_images, fail_once)
    rows, features = load_depth_table(depth_uri)
    verify_depth_table(rows, features, num_images, exits)
    manifest = {
        "schema_version": DEPTH_SCHEMA_VERSION, "config_hash": config_hash, "num_images": num_images,
        "num_rows": len(rows), "exits": exits, "num_shards": num_shards, "shard_size": shard_size,
        "gate_feature_grid": config.depth.gate_feature_grid, "channels": config.model.pixel_decoder.conv_dim,
        "weights_uri": weights_uri, "dataset": dataset_spec(config.depth.dataset or config.data.train),
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    storage.write_text(manifest_uri, json.dumps(manifest, indent=2))
    print(format_labels_summary(labels_summary(rows, config.gate.betas, exits=config.model.gate.exits)))
    return depth_uri


def _run_shards(config: Config, weights_uri: str, depth_uri: str, config_hash: str, todo: list[int],
                num_images: int, fail_once: dict | None) -> None:
    import ray
    from tqdm import tqdm

    if not ray.is_initialized():
        ray.init(address=config.ray.address or os.environ.get("RAY_ADDRESS"))
    shard_size, exits, batch_size = config.depth.shard_size, config.depth_exits, config.depth.batch_size
    expected = {s: len(_shard_positions(s, shard_size, num_images)) for s in todo}
    items = [{"index": i} for s in todo for i in _shard_positions(s, shard_size, num_images)]
    resources = ({"num_gpus": 1, "num_cpus": config.ray.cpus_per_worker} if config.ray.use_gpu
                 else {"num_cpus": CPU_ACTOR_CPUS})
    blocks = min(MAX_BLOCKS, max(1, math.ceil(len(items) / batch_size)))
    dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        AllExitsEvaluator,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=config.depth.num_actors),
        fn_constructor_kwargs={"config_dict": config.model_dump(mode="json"), "weights_uri": weights_uri,
                               "fail_once": fail_once},
        **resources,
    )
    pending: dict[int, dict[int, dict]] = defaultdict(dict)  # shard -> dataset position -> that image's values
    failed: dict[int, str] = {}
    finished: set[int] = set()
    written = 0
    with tqdm(total=len(items), desc="step 2 images", unit="img") as progress:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for i, position in enumerate(batch["index"].tolist()):
                progress.update(1)
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
                    progress.set_postfix(shards=f"{written}/{len(todo)}")
    if failed or pending:
        incomplete = sorted(set(pending) | {p // shard_size for p in failed})
        first = next(iter(failed.values()), "images went missing without an error")
        raise RuntimeError(
            f"step 2: {len(failed)} images failed; shards {incomplete[:20]} are incomplete (first error: {first}). "
            f"The {written} shards finished in this run are saved under {depth_uri}: rerun the same command "
            "to compute only the missing shards"
        )
