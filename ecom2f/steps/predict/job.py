"""``ecom2f predict``: a trained run's parent and gate over a user's images, as a resumable batch job.

The driver checks everything a user can get wrong before any image is read (the parent exists, the
budget names a gate or a fixed depth is given, the input lists images, the categories fit the
model, the output is writable), splits the images into shards of ``serving.predict.shard_size``,
and runs the shards that are not already written with the same settings: in this process
(small inputs) or on Ray Data (``--ray``, and always for s3:// inputs above
``serving.predict.ray_threshold`` images) with the three stages of :mod:`.stages`. A shard's
record is written after its images' files; at the end the records are merged into the COCO files
and the table (:class:`~ecom2f.steps.predict.layout.PredictLayout`), and ``_SUCCESS.json`` last.

The job reads the run and never writes it, so it takes no lease on it: it may run beside the
run's own steps, or beside ``ecom2f serve``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pandas as pd

from ecom2f import storage
from ecom2f.config import Config
from ecom2f.errors import BadInputError
from ecom2f.steps.predict.categories import resolve_categories
from ecom2f.steps.predict.layout import PredictLayout
from ecom2f.steps.predict.sources import ImageSource, list_inputs
from ecom2f.storage.layout import gate_files

log = logging.getLogger(__name__)

__all__ = ["PredictOptions", "PredictSummary", "run_predict"]

TABLE_COLUMNS = ("index", "image_id", "name", "source", "status", "problem", "notes", "height", "width", "depth",
                 "budget", "encoder_gflops", "total_gflops", "seconds")


@dataclass
class PredictOptions:
    """One ``ecom2f predict`` call: ``input`` (folder, list file, s3:// prefix, image or COCO JSON),
    ``output`` (folder or s3:// prefix), and the choices of the command line."""

    input: str
    output: str
    image_root: str | None = None  # the images of a COCO JSON input
    categories: str | None = None  # a COCO category file
    budget: str | None = None
    depth: int | None = None
    vis: bool = False
    use_ray: bool = False  # s3:// inputs above serving.predict.ray_threshold use Ray regardless
    device: str | None = None


@dataclass
class PredictSummary:
    output: str
    images: int
    predicted: int
    skipped: int
    shards_run: int
    shards_skipped: int
    on_ray: bool
    problems: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Shard:
    index: int
    sources: tuple[ImageSource, ...]
    first: int  # position of its first image in the input list


def run_predict(config: Config, options: PredictOptions) -> PredictSummary:
    """Runs the job (see the module docstring); returns its counts. Raises a UserError for bad input
    before any image is processed."""
    storage.configure(config.storage.s3_options())
    choice = _check_choice(config, options)
    found = list_inputs(options.input, options.image_root)
    categories = resolve_categories(config, options.categories, found.categories)
    storage.preflight(options.output, check_pyarrow=False)
    layout = PredictLayout(options.output)
    settings = _settings(config, choice, options, categories)
    shards = _shards(found.sources, config.serving.predict.shard_size)
    todo = [shard for shard in shards if not _shard_done(layout, shard, settings["fingerprint"])]
    on_ray = options.use_ray or (found.kind == "s3" and len(found.sources) > config.serving.predict.ray_threshold)
    log.info("predict: %d images in %d shards (%d already written), budget %s, depth %s, %s", len(found.sources),
             len(shards), len(shards) - len(todo), choice[0], options.depth, "on Ray" if on_ray else "in process")
    stages = _stage_arguments(config, choice, options, categories)
    progress = _Progress(sum(len(shard.sources) for shard in todo))
    runner = _run_on_ray if on_ray else _run_in_process
    for shard, records in runner(config, todo, stages):
        _write_shard(layout, shard, settings["fingerprint"], records)
        progress.update(records)
    summary = _merge(layout, shards, categories, settings)
    return PredictSummary(options.output, len(found.sources), summary["predicted"], summary["skipped"], len(todo),
                          len(shards) - len(todo), on_ray, summary["problems"])


def _check_choice(config: Config, options: PredictOptions) -> tuple[str | None, object]:
    """The parent's weights exist and the budget / depth is a valid choice (no model loaded)."""
    from ecom2f.steps.evaluate.job import chosen_gate_dirs
    from ecom2f.steps.inference import require_parent_weights
    from ecom2f.steps.predict.predictor import choose

    require_parent_weights(config.storage.layout().parent_weights)
    return choose(list(chosen_gate_dirs(config)), options.budget, options.depth, config.serving.budget,
                  config.encoder_layers, config.storage.layout().gates)


def _settings(config: Config, choice, options: PredictOptions, categories: list[dict]) -> dict:
    """What the outputs depend on, and its fingerprint: a shard written under other settings is redone."""
    budget = choice[0]
    gate_metadata = ""
    if budget is not None:
        gate_metadata = storage.read_text(gate_files(config.storage.layout().gate(budget))[1])
    settings = {"run": config.storage.layout().run_uri, "budget": budget, "depth": options.depth,
                "tasks": sorted(config.serving.tasks), "precision": config.serving.precision,
                "test": config.model.test.model_dump(mode="json"),
                "test_size": [config.data.test_min_size, config.data.test_max_size], "vis": options.vis,
                "categories": categories, "gate": hashlib.sha256(gate_metadata.encode()).hexdigest()}
    settings["fingerprint"] = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return settings


def _shards(sources: list[ImageSource], size: int) -> list[Shard]:
    return [Shard(i // size, tuple(sources[i:i + size]), i) for i in range(0, len(sources), size)]


def _shard_done(layout: PredictLayout, shard: Shard, fingerprint: str) -> bool:
    """Its record exists, for the same images and settings."""
    uri = layout.shard(shard.index)
    if not storage.exists(uri):
        return False
    try:
        record = json.loads(storage.read_text(uri))
    except (json.JSONDecodeError, storage.StorageError):
        return False
    return record.get("fingerprint") == fingerprint and record.get("sources") == [s.uri for s in shard.sources]


def _write_shard(layout: PredictLayout, shard: Shard, fingerprint: str, records: list[dict]) -> None:
    records = sorted(records, key=lambda r: r["index"])
    if [r["index"] for r in records] != list(range(shard.first, shard.first + len(shard.sources))):
        raise RuntimeError(f"shard {shard.index}: got records for {[r['index'] for r in records]}")
    storage.write_text(layout.shard(shard.index), json.dumps(
        {"shard": shard.index, "fingerprint": fingerprint, "sources": [s.uri for s in shard.sources],
         "records": records}))


def _stage_arguments(config: Config, choice, options: PredictOptions, categories: list[dict]) -> dict:
    from ecom2f.steps.predict.stages import PredictLoader, PredictModel, PredictWriter
    from ecom2f.steps.runs import run_environment

    environment = run_environment(config)
    return {
        "loader": (PredictLoader, {"max_pixels": config.serving.max_pixels, "storage_environment": environment}),
        "model": (PredictModel, {"config": config.model_dump(mode="json"), "budget": choice[0],
                                 "depth": options.depth, "device": options.device}),
        "writer": (PredictWriter, {"output": options.output, "categories": categories, "tasks": config.serving.tasks,
                                   "vis": options.vis, "vis_quality": config.serving.predict.vis_quality,
                                   "layers": config.encoder_layers, "storage_environment": environment}),
    }


def _rows(shard: Shard) -> list[dict]:
    return [{"index": shard.first + i, "shard": shard.index, "source": s.uri, "name": s.name,
             "image_id": json.dumps(s.image_id)} for i, s in enumerate(shard.sources)]


def _columns(rows: list[dict]) -> dict:
    import numpy as np

    return {key: np.array([row[key] for row in rows], dtype=object) for key in rows[0]}


def _run_in_process(config: Config, shards: list[Shard], stages: dict) -> Iterator[tuple[Shard, list[dict]]]:
    """The three stages in this process, batch by batch; one shard at a time."""
    if not shards:
        return
    loader, model, writer = (cls(**kwargs) for cls, kwargs in (stages["loader"], stages["model"], stages["writer"]))
    batch_size = config.serving.predict.batch_size
    for shard in shards:
        rows, records = _rows(shard), []
        for start in range(0, len(rows), batch_size):
            written = writer(model(loader(_columns(rows[start:start + batch_size]))))
            records += [json.loads(text) for text in written["record"]]
        yield shard, records


def _run_on_ray(config: Config, shards: list[Shard], stages: dict) -> Iterator[tuple[Shard, list[dict]]]:
    """Ray Data: loaders (CPU) -> model actors (a GPU each on GPU clusters) -> writers (CPU); each shard
    is yielded as soon as all of its records have come back."""
    if not shards:
        return
    from ecom2f.steps.ray_cluster import init_ray, load_model_score

    init_ray(config.ray.address)
    items = [row for shard in shards for row in _rows(shard)]
    dataset = load_model_score(items, stages["loader"], stages["model"], stages["writer"],
                               use_gpu=_use_gpus(config), num_actors=config.serving.predict.num_actors,
                               batch_size=config.serving.predict.batch_size, job="predict")
    by_index = {shard.index: shard for shard in shards}
    pending: dict[int, list[dict]] = {shard.index: [] for shard in shards}
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for shard_index, text in zip(batch["shard"], batch["record"]):
            pending[int(shard_index)].append(json.loads(text))
            shard = by_index[int(shard_index)]
            if len(pending[shard.index]) == len(shard.sources):
                yield shard, pending.pop(shard.index)
    if pending:
        raise RuntimeError(f"Ray Data returned no records for shards {sorted(pending)}")


def _use_gpus(config: Config) -> bool:
    """GPU model actors when ``ray.use_gpu`` and the cluster has GPUs (or a count of actors is given, for
    GPU nodes an autoscaler adds); else CPU actors, with a warning when GPUs were asked for."""
    import ray

    if not config.ray.use_gpu:
        return False
    if ray.cluster_resources().get("GPU", 0) >= 1 or config.serving.predict.num_actors is not None:
        return True
    log.warning("ray.use_gpu is true but the cluster has no GPU: the model actors run on CPUs")
    return False


class _Progress:
    """A log line at most every 10 s: images done of those to do, skips, images per second."""

    def __init__(self, total: int, every_s: float = 10.0) -> None:
        self.total, self.every_s = total, every_s
        self.done = self.skipped = 0
        self.start = self.last = time.monotonic()

    def update(self, records: list[dict]) -> None:
        self.done += len(records)
        self.skipped += sum(record["status"] != "ok" for record in records)
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            log.info("predict: %d/%d images (%d skipped), %.2f images/s", self.done, self.total, self.skipped, rate)


def _merge(layout: PredictLayout, shards: list[Shard], categories: list[dict], settings: dict) -> dict:
    """The shard records -> panoptic.json, instances.json, images.parquet, categories.json, then _SUCCESS.json."""
    records = [r for shard in shards for r in json.loads(storage.read_text(layout.shard(shard.index)))["records"]]
    predicted = [r for r in records if r["status"] == "ok"]
    if not predicted:
        raise BadInputError(f"no image could be used ({len(records)} skipped; see {layout.table}): "
                            f"first problem: {records[0]['problem']}")
    coco_categories = [dict(c) for c in categories]
    if "panoptic" in settings["tasks"]:
        storage.write_text(layout.panoptic_json, json.dumps(
            {"annotations": [r["panoptic"] for r in predicted], "categories": coco_categories}))
    if "instance" in settings["tasks"]:
        storage.write_text(layout.instances_json, json.dumps([d for r in predicted for d in r["instances"]]))
    storage.write_text(layout.categories, json.dumps(
        [{"contiguous_id": i, **c} for i, c in enumerate(categories)], indent=1))
    table = pd.DataFrame([{key: r.get(key) for key in TABLE_COLUMNS} for r in records], columns=list(TABLE_COLUMNS))
    table["image_id"] = table["image_id"].astype(str)
    table["notes"] = table["notes"].map(lambda notes: "; ".join(notes or []))
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    storage.write_bytes(layout.table, buffer.getvalue())
    problems = table.loc[table["status"] != "ok", "problem"].map(lambda p: p.split(":", 1)[0]).value_counts()
    summary = {"images": len(records), "predicted": len(predicted), "skipped": len(records) - len(predicted),
               "problems": {str(k): int(v) for k, v in problems.items()},
               "settings": {k: v for k, v in settings.items() if k != "categories"}}
    storage.write_text(layout.success, json.dumps(summary, indent=2, default=str))
    return summary
