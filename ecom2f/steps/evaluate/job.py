"""End-to-end evaluation on the validation split with Ray Data.

Dataset of image indices -> three stages (:mod:`ecom2f.steps.evaluate.stages`, pools from
:mod:`ecom2f.steps.ray_cluster`, the same rule as step 2's): CPU loaders decode the images and ground
truth; model actors (one
per GPU by default) load the parent and every chosen gate once, run every fixed depth and every
gate (real per-image depths, batched) and time it on the device; CPU scorers compute each image's
PQ sums and mIoU / mask-AP accumulators. The driver merges the rows into dataset metrics, derives
the oracle from the fixed-depth rows (:mod:`ecom2f.steps.evaluate.summary`), and writes under
``<run>/eval/`` (names: :class:`ecom2f.storage.RunLayout`):

- ``eval_per_image``: one row per (image, variant) (PQ sums, depth, GFLOPs, time)
- ``eval_summary`` (parquet) and ``eval_summary_json``: one row per variant
- ``eval_success`` last: its presence means the evaluation is complete.
"""

from __future__ import annotations

import io
import json
import logging
import time

import pandas as pd

from ecom2f import storage
from ecom2f.config import Config
from ecom2f.config.data import dataset_spec
from ecom2f.errors import BadInputError, MissingStepError
from ecom2f.evaluation import contiguous_categories
from ecom2f.steps.evaluate.stages import (
    EvalLoader,
    EvalScorer,
    VariantModel,
    eval_scoring,
    fixed_depths,
    validation_dataset,
)
from ecom2f.steps.evaluate.summary import summarize
from ecom2f.steps.inference import require_parent_weights
from ecom2f.steps.ray_cluster import init_ray, load_model_score
from ecom2f.storage.layout import gate_files

log = logging.getLogger(__name__)

__all__ = [
    "ValidationScorer",
    "chosen_gate_dirs",
    "evaluate",
    "evaluation_complete",
    "fixed_depths",
    "table_estimate",
]


def absolute_local_paths(config: Config) -> Config:
    """See :func:`ecom2f.config.with_absolute_local_paths`."""
    from ecom2f.config import with_absolute_local_paths

    return with_absolute_local_paths(config)


def evaluation_complete(config: Config) -> bool:
    return storage.exists(config.storage.layout().eval_success)


def chosen_gate_dirs(config: Config) -> dict[str, str]:
    """Budget name -> ``<run>/gates/<name>`` for each direct sub-folder holding both gate files (``gate_files``)
    (deeper folders, e.g. Ray Tune's trial checkpoints, are not chosen gates)."""
    root = config.storage.layout().gates
    if not storage.exists(root):
        return {}
    found = {}
    for uri in storage.list_uris(root):
        folder = uri.rstrip("/")
        if all(storage.exists(uri) for uri in gate_files(folder)):
            found[folder.rsplit("/", 1)[-1]] = folder
    return dict(sorted(found.items()))


def table_estimate(meta: dict) -> dict:
    """Step 3's table-only validation metrics from a gate's metadata (``load_gate``'s second value).

    Step 3 writes them under ``validation`` as ``val_pq``, ``val_layers``, ``val_gflops``,
    ``val_utility`` (``ecom2f.steps.gate.train.train_gate``); plain names and the sections
    ``val_metrics`` / ``metrics`` are accepted too; returns ``{"pq", "mean_layers", "mean_gflops", "utility"}``
    (those present).
    """
    section = next((meta[k] for k in ("validation", "val_metrics", "metrics") if isinstance(meta.get(k), dict)), meta)
    names = {
        "pq": ("pq", "val_pq", "quality", "mean_q"),
        "mean_layers": ("mean_layers", "val_layers", "val_mean_layers"),
        "mean_gflops": ("mean_gflops", "val_gflops", "mean_encoder_gflops", "val_mean_gflops"),
        "utility": ("utility", "val_utility"),
    }
    found = {}
    for key, options in names.items():
        value = next((section[o] for o in options if o in section), None)
        if isinstance(value, (int, float)):
            found[key] = float(value)
    return found


def _gate_estimates(gate_dirs: dict[str, str]) -> dict[str, dict]:
    """Name -> :func:`table_estimate` of each chosen gate's metadata; no gate, no import of step 3."""
    if not gate_dirs:
        return {}
    from ecom2f.steps.gate.store import load_gate

    return {name: table_estimate(load_gate(folder)[1]) for name, folder in gate_dirs.items()}


class ValidationScorer:
    """Loader, model and scorer in this process: ``{"index": [B]}`` -> per-(image, variant) rows.

    For tests and benchmarks; the job runs the three as separate actor pools. Arguments as
    :class:`~ecom2f.steps.evaluate.stages.VariantModel`.
    """

    def __init__(self, config: dict, weights_uri: str, gate_dirs: dict[str, str], device: str | None = None,
                 clock=None) -> None:
        self.loader = EvalLoader(config)
        self.network = VariantModel(config, weights_uri, gate_dirs, device=device, clock=clock)
        self.scorer = EvalScorer(self.loader.scoring)

    def __call__(self, batch: dict) -> pd.DataFrame:
        return self.scorer(self.network(self.loader(batch)))


def _pipeline(config: Config, weights_uri: str, gate_dirs: dict[str, str], scoring: dict, num_images: int):
    """Image positions -> loaders (CPU) -> every variant (model actors) -> scorers (CPU)."""
    config_dict = config.model_dump(mode="json")
    return load_model_score(
        [{"index": i} for i in range(num_images)],
        loader=(EvalLoader, {"config": config_dict}),
        model=(VariantModel, {"config": config_dict, "weights_uri": weights_uri, "gate_dirs": gate_dirs}),
        scorer=(EvalScorer, {"scoring": scoring}),
        use_gpu=config.ray.use_gpu, num_actors=config.evaluation.num_actors,
        batch_size=config.evaluation.batch_size, job="evaluation",
    )


def _write_parquet(frame: pd.DataFrame, uri: str) -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    storage.write_bytes(uri, buffer.getvalue())  # one PUT / temp+rename: atomic


def evaluate(config: Config, force: bool = False) -> str:
    """Runs the evaluation on the Ray cluster (``ray.address``, ``$RAY_ADDRESS`` or a local one).

    Returns the ``<run>/eval`` URI. Skips the work when ``eval_success`` is there (``force``
    reruns it). Needs the parent's weights (``parent_weights``); uses every chosen gate found under
    ``<run>/gates/`` (none: fixed depths and oracle only).
    """
    from ecom2f.steps.datasets import ensure_synthetic_data

    config = absolute_local_paths(config)
    layout = config.storage.layout()
    if evaluation_complete(config) and not force:
        log.info("evaluation is complete (%s); nothing to do", layout.eval_success)
        return layout.eval
    weights_uri = layout.parent_weights
    require_parent_weights(weights_uri)
    ensure_synthetic_data(config)
    dataset = validation_dataset(config)  # indexes the split: bad annotations fail here, before Ray
    if len(dataset) == 0:
        raise BadInputError(f"the validation split {config.data.val!r} is empty; check data.val and data.root")
    gate_dirs = chosen_gate_dirs(config)
    estimates = _gate_estimates(gate_dirs)
    log.info("evaluating %d images: depths %s, gates %s", len(dataset), fixed_depths(config), list(gate_dirs))

    init_ray(config.ray.address)
    start = time.perf_counter()
    scoring = eval_scoring(dataset.metadata, config.evaluation.tasks)
    rows = _pipeline(config, weights_uri, gate_dirs, scoring, len(dataset)).to_pandas()
    wall = time.perf_counter() - start
    expected = len(dataset) * (len(fixed_depths(config)) + len(gate_dirs))
    if len(rows) != expected:
        raise RuntimeError(f"evaluation produced {len(rows)} rows, expected {expected} (images x variants)")

    summary = summarize(rows, contiguous_categories(dataset.metadata.categories), config.evaluation.tasks,
                        config.model.num_things, estimates, oracle=config.evaluation.oracle)
    _write_parquet(rows, layout.eval_per_image)
    _write_parquet(summary, layout.eval_summary)
    storage.write_text(layout.eval_summary_json, summary.to_json(orient="records", indent=2))
    storage.write_text(layout.eval_success, json.dumps(
        {"images": len(dataset), "variants": sorted(rows["variant"].unique().tolist()), "wall_seconds": wall,
         "dataset": dataset_spec(config.data.val), "weights": weights_uri}, indent=2))
    log.info("evaluation written to %s in %.1f s", layout.eval, wall)
    return layout.eval


def load_summary(config: Config) -> pd.DataFrame:
    uri = config.storage.layout().eval_summary
    if not storage.exists(uri):
        raise MissingStepError(f"{uri} does not exist; run the evaluation (ecom2f evaluate) first")
    return pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))


def load_per_image(config: Config) -> pd.DataFrame:
    uri = config.storage.layout().eval_per_image
    return pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))
