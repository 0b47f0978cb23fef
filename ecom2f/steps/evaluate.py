"""End-to-end evaluation on the validation split with Ray Data.

Dataset of image indices -> ``map_batches(ValidationScorer, compute=ActorPoolStrategy(...))``:
each actor loads the parent (and every chosen gate) once, then per batch runs
``model.predict`` at every fixed depth and with every gate (real per-image depths, batched)
and scores each image (:mod:`ecom2f.steps.evaluate_images`). The driver merges the rows into
dataset metrics, derives the oracle from the fixed-depth rows
(:mod:`ecom2f.steps.evaluate_summary`), and writes under ``<run>/eval/``:

- ``per_image.parquet``: one row per (image, variant) (PQ sums, depth, GFLOPs, time)
- ``summary.parquet`` and ``summary.json``: one row per variant
- ``_SUCCESS.json`` last: its presence means the evaluation is complete.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time

import pandas as pd

from ecom2f import storage
from ecom2f.config import Config, config_from_dict
from ecom2f.config_sections import dataset_spec
from ecom2f.steps.evaluate_images import (
    categories_of,
    load_chosen_gate,
    load_parent,
    score_batch,
    validation_dataset,
)
from ecom2f.steps.evaluate_summary import summarize

log = logging.getLogger(__name__)

__all__ = ["evaluate", "evaluation_complete", "chosen_gate_dirs", "table_estimate", "ValidationScorer", "SUCCESS"]

SUCCESS = "_SUCCESS.json"
WEIGHTS_FILE = "model_final.pth"


def absolute_local_paths(config: Config) -> Config:
    """See :func:`ecom2f.config.with_absolute_local_paths`."""
    from ecom2f.config import with_absolute_local_paths

    return with_absolute_local_paths(config)


def evaluation_complete(config: Config) -> bool:
    return storage.exists(storage.join(config.storage.layout().eval, SUCCESS))


def fixed_depths(config: Config) -> list[int]:
    depths = config.evaluation.depths or list(range(1, config.model.pixel_decoder.encoder_layers + 1))
    bad = [d for d in depths if not 0 <= d <= config.model.pixel_decoder.encoder_layers]
    if bad:
        raise ValueError(f"evaluation.depths {depths}: {bad} outside 0..{config.model.pixel_decoder.encoder_layers}")
    return list(depths)


def chosen_gate_dirs(config: Config) -> dict[str, str]:
    """Budget name -> ``<run>/gates/<name>`` for each direct sub-folder holding ``gate.pt`` and ``gate.json``
    (deeper folders, e.g. Ray Tune's trial checkpoints, are not chosen gates)."""
    root = config.storage.layout().gates
    if not storage.exists(root):
        return {}
    found = {}
    for uri in storage.list_uris(root):
        folder = uri.rstrip("/")
        if all(storage.exists(storage.join(folder, name)) for name in ("gate.json", "gate.pt")):
            found[folder.rsplit("/", 1)[-1]] = folder
    return dict(sorted(found.items()))


def table_estimate(meta: dict) -> dict:
    """Step 3's table-only validation metrics from a gate's ``gate.json``.

    Step 3 writes them under ``validation`` as ``val_pq``, ``val_layers``, ``val_gflops``,
    ``val_utility`` (``ecom2f.steps.gate_search.train_gate``); plain names and the sections
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


class ValidationScorer:
    """Ray Data UDF: ``{"index": [B]}`` -> per-(image, variant) rows (see ``score_batch``).

    Loads the parent weights and every chosen gate once per actor. Gates are swapped into
    ``model.gate`` one at a time (a gate module is tiny; the network is shared).
    """

    def __init__(self, config: dict, weights_uri: str, gate_dirs: dict[str, str]) -> None:
        import torch

        torch.set_num_threads(max(1, int(os.environ.get("ECOM2F_EVAL_THREADS", "1"))))
        self.config = config_from_dict(config, source="the evaluation job")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_parent(self.config, weights_uri).to(self.device)
        channels = self.config.model.pixel_decoder.conv_dim
        self.gates = {name: load_chosen_gate(folder, channels)[0].to(self.device) for name, folder in gate_dirs.items()}
        self.dataset = validation_dataset(self.config)
        self.depths = fixed_depths(self.config)

    def __call__(self, batch: dict) -> dict:
        samples = [self.dataset[int(i)] for i in batch["index"]]
        metadata, tasks = self.dataset.metadata, self.config.evaluation.tasks
        parent_gate = self.model.gate
        rows = score_batch(self.model, samples, [("fixed", f"depth_{d}", d) for d in self.depths], metadata, tasks)
        try:
            for name, gate in self.gates.items():
                self.model.gate = gate
                rows += score_batch(self.model, samples, [("gate", name, "gate")], metadata, tasks)
        finally:
            self.model.gate = parent_gate
        return pd.DataFrame.from_records(rows)


def _write_parquet(frame: pd.DataFrame, uri: str) -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    storage.write_bytes(uri, buffer.getvalue())  # one PUT / temp+rename: atomic


def evaluate(config: Config, force: bool = False) -> str:
    """Runs the evaluation on the Ray cluster (``ray.address``, ``$RAY_ADDRESS`` or a local one).

    Returns the ``<run>/eval`` URI. Skips the work when ``_SUCCESS.json`` is there (``force``
    reruns it). Needs ``<run>/parent/model_final.pth``; uses every chosen gate found under
    ``<run>/gates/`` (none: fixed depths and oracle only).
    """
    import ray

    from ecom2f.steps.datasets import ensure_synthetic_data

    config = absolute_local_paths(config)
    layout = config.storage.layout()
    if evaluation_complete(config) and not force:
        log.info("evaluation is complete (%s); nothing to do", storage.join(layout.eval, SUCCESS))
        return layout.eval
    weights_uri = storage.join(layout.parent, WEIGHTS_FILE)
    if not storage.exists(weights_uri):
        raise FileNotFoundError(f"parent weights {weights_uri} do not exist; run step 1 (ecom2f train-parent) first")
    ensure_synthetic_data(config)
    dataset = validation_dataset(config)  # indexes the split: bad annotations fail here, before Ray
    if len(dataset) == 0:
        raise ValueError(f"the validation split {config.data.val!r} is empty; check data.val and data.root")
    gate_dirs = chosen_gate_dirs(config)
    estimates = {}
    for name, folder in gate_dirs.items():
        _, meta = load_chosen_gate(folder, config.model.pixel_decoder.conv_dim)
        estimates[name] = table_estimate(meta)
    log.info("evaluating %d images: depths %s, gates %s", len(dataset), fixed_depths(config), list(gate_dirs))

    if not ray.is_initialized():
        ray.init(address=config.ray.address or os.environ.get("RAY_ADDRESS"))
    # CPU clusters: fractional CPUs, else an actor pool plus the read task can deadlock on 2 cores.
    resources = {"num_gpus": 1} if config.ray.use_gpu else {"num_cpus": 0.5}
    start = time.perf_counter()
    scored = ray.data.from_items([{"index": i} for i in range(len(dataset))]).map_batches(
        ValidationScorer,
        fn_constructor_kwargs={"config": config.model_dump(mode="json"), "weights_uri": weights_uri,
                               "gate_dirs": gate_dirs},
        batch_size=config.evaluation.batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=config.evaluation.num_actors),
        **resources,
    )
    rows = scored.to_pandas()
    wall = time.perf_counter() - start
    expected = len(dataset) * (len(fixed_depths(config)) + len(gate_dirs))
    if len(rows) != expected:
        raise RuntimeError(f"evaluation produced {len(rows)} rows, expected {expected} (images x variants)")

    summary = summarize(rows, categories_of(dataset.metadata), config.evaluation.tasks,
                        config.model.num_things, estimates, oracle=config.evaluation.oracle)
    _write_parquet(rows, storage.join(layout.eval, "per_image.parquet"))
    _write_parquet(summary, storage.join(layout.eval, "summary.parquet"))
    storage.write_text(storage.join(layout.eval, "summary.json"),
                       summary.to_json(orient="records", indent=2))
    storage.write_text(storage.join(layout.eval, SUCCESS), json.dumps(
        {"images": len(dataset), "variants": sorted(rows["variant"].unique().tolist()), "wall_seconds": wall,
         "dataset": dataset_spec(config.data.val), "weights": weights_uri}, indent=2))
    log.info("evaluation written to %s in %.1f s", layout.eval, wall)
    return layout.eval


def load_summary(config: Config) -> pd.DataFrame:
    uri = storage.join(config.storage.layout().eval, "summary.parquet")
    if not storage.exists(uri):
        raise FileNotFoundError(f"{uri} does not exist; run the evaluation (ecom2f evaluate) first")
    return pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))


def load_per_image(config: Config) -> pd.DataFrame:
    uri = storage.join(config.storage.layout().eval, "per_image.parquet")
    return pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))
