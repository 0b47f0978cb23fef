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
- ``eval_success`` last: its presence means the evaluation is complete; it records the checksum
  of the three files above, which :func:`load_summary` and :func:`load_per_image` check.

The job holds the run's lease from start to end. Before any actor starts it checks the parent's
weights against step 1's manifest and each chosen gate against step 3's.
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
from ecom2f.steps.runs import writing_run
from ecom2f.storage.checksums import CHECKSUMS, digest, read_manifest, read_verified, recorded
from ecom2f.storage.layout import GATE_METADATA, GATE_WEIGHTS, gate_files

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


RERUN_EVALUATION = ("delete the run's eval/ folder and rerun the evaluation (`ecom2f evaluate` with the same "
                    "--config/--storage)")


def chosen_gate_dirs(config: Config) -> dict[str, str]:
    """Budget name -> ``<run>/gates/<name>``: the gates step 3's manifest lists; without one (step 3 not
    finished, or gates put there by hand) each direct sub-folder holding both gate files
    (``gate_files``); deeper folders, e.g. Ray Tune's trial checkpoints, are not chosen gates."""
    layout = config.storage.layout()
    root = layout.gates
    from ecom2f.steps.gate.store import RERUN_STEP3

    manifest = read_manifest(layout.gates_success, RERUN_STEP3)
    if manifest is not None and isinstance(manifest.get("gates"), dict):
        return {name: layout.gate(name) for name in sorted(manifest["gates"])}
    if not storage.exists(root):
        return {}
    found = {}
    for uri in storage.list_uris(root):
        folder = uri.rstrip("/")
        if all(storage.exists(uri) for uri in gate_files(folder)):
            found[folder.rsplit("/", 1)[-1]] = folder
    if found:
        log.warning("step 3 has not finished (no %s): using the %d gates found under %s, unverified",
                    layout.gates_success, len(found), root)
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


def _gate_estimates(config: Config, gate_dirs: dict[str, str]) -> dict[str, dict]:
    """Name -> :func:`table_estimate` of each chosen gate's metadata, every gate file checked against
    step 3's manifest (when it has one); no gate, no import of step 3."""
    if not gate_dirs:
        return {}
    from ecom2f.steps.gate.store import RERUN_STEP3, load_gate

    manifest_uri = config.storage.layout().gates_success
    listed = recorded(read_manifest(manifest_uri, RERUN_STEP3), manifest_uri) or {}
    estimates = {}
    for name, folder in gate_dirs.items():
        expected = {file: listed[f"{name}/{file}"] for file in (GATE_WEIGHTS, GATE_METADATA)
                    if f"{name}/{file}" in listed}
        estimates[name] = table_estimate(load_gate(folder, expected, where=manifest_uri)[1])
    return estimates


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


def _write(uri: str, data: bytes, written: dict[str, dict]) -> None:
    storage.write_bytes(uri, data)  # one PUT / temp+rename: atomic
    written[uri.rsplit("/", 1)[-1]] = digest(data)


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def evaluate(config: Config, force: bool = False) -> str:
    """Runs the evaluation on the Ray cluster (``ray.address``, ``$RAY_ADDRESS`` or a local one).

    Returns the ``<run>/eval`` URI. Skips the work when ``eval_success`` is there (``force``
    reruns it). Needs the parent's weights (``parent_weights``); uses every chosen gate found under
    ``<run>/gates/`` (none: fixed depths and oracle only).
    """
    config = absolute_local_paths(config)
    with writing_run(config) as layout:
        if evaluation_complete(config) and not force:
            log.info("evaluation is complete (%s); nothing to do", layout.eval_success)
            return layout.eval
        return _evaluate(config, layout)


def _evaluate(config: Config, layout) -> str:
    from ecom2f.steps.datasets import ensure_synthetic_data
    from ecom2f.steps.parent.job import read_parent_weights

    storage.delete(layout.eval_success)  # rerun with force: the old manifest must not vouch for new files
    weights_uri = layout.parent_weights
    require_parent_weights(weights_uri)
    read_parent_weights(layout)  # a damaged file fails here, naming itself, before any actor loads it
    ensure_synthetic_data(config)
    dataset = validation_dataset(config)  # indexes the split: bad annotations fail here, before Ray
    if len(dataset) == 0:
        raise BadInputError(f"the validation split {config.data.val!r} is empty; check data.val and data.root")
    gate_dirs = chosen_gate_dirs(config)
    estimates = _gate_estimates(config, gate_dirs)
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
    written: dict[str, dict] = {}
    _write(layout.eval_per_image, _parquet(rows), written)
    _write(layout.eval_summary, _parquet(summary), written)
    _write(layout.eval_summary_json, summary.to_json(orient="records", indent=2).encode(), written)
    storage.write_text(layout.eval_success, json.dumps(
        {"images": len(dataset), "variants": sorted(rows["variant"].unique().tolist()), "wall_seconds": wall,
         "dataset": dataset_spec(config.data.val), "weights": weights_uri, CHECKSUMS: written}, indent=2))
    log.info("evaluation written to %s in %.1f s", layout.eval, wall)
    return layout.eval


def _read_evaluation(config: Config, uri: str) -> pd.DataFrame:
    """One of the evaluation's tables, checked against the checksum in its manifest."""
    data = read_verified(uri, config.storage.layout().eval_success, RERUN_EVALUATION)
    try:
        return pd.read_parquet(io.BytesIO(data))
    except Exception as error:  # pyarrow's ArrowInvalid and OSError: an unlisted damaged file of an older run
        from ecom2f.storage.errors import CorruptArtifactError

        raise CorruptArtifactError(f"{uri} is not a readable parquet file ({type(error).__name__}); "
                                   f"{RERUN_EVALUATION}") from None


def load_summary(config: Config) -> pd.DataFrame:
    uri = config.storage.layout().eval_summary
    if not storage.exists(uri):
        raise MissingStepError(f"{uri} does not exist; run the evaluation (ecom2f evaluate) first")
    return _read_evaluation(config, uri)


def load_per_image(config: Config) -> pd.DataFrame:
    return _read_evaluation(config, config.storage.layout().eval_per_image)
