"""Step 3 as a Ray job: ``tune_gates(config) -> <run>/gates``.

Reads the depth table once (:func:`~ecom2f.steps.gate.data.load_gate_table`), splits its images,
runs the search (:mod:`ecom2f.steps.gate.search`), then for every budget in
``gate.compute_budgets`` saves the best-PQ trial within it (:mod:`ecom2f.steps.gate.select`)
under ``RunLayout.gate(<budget-name>)`` (:mod:`ecom2f.steps.gate.store`), with
``RunLayout.gates_results`` (every trial), the reference table (oracle and fixed depths per beta
on the validation images), ``RunLayout.gates_picks`` (each chosen gate's exit per image) and
``RunLayout.gates_success`` last, with the checksum of every file written before it. A rerun
returns at once when that manifest exists, and resumes an interrupted search otherwise (a
finished search is restored as it is, and its gates written again). The job holds the run's
lease from start to end.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time

import numpy as np
import pandas as pd
import torch

from ecom2f import storage
from ecom2f.config import Config
from ecom2f.errors import StaleRunError
from ecom2f.steps.depth.table import require_finished
from ecom2f.steps.gate.data import GateTable, load_gate_table, split_images
from ecom2f.steps.gate.features import gate_inputs
from ecom2f.steps.gate.metrics import realised_metrics, reference_metrics
from ecom2f.steps.gate.search import OBJECTIVE, results_table, run_search
from ecom2f.steps.gate.select import select_for_budgets
from ecom2f.steps.gate.store import load_gate, write_gate
from ecom2f.steps.runs import writing_run
from ecom2f.storage.checksums import CHECKSUMS, digest
from ecom2f.storage.layout import GATE_METADATA, GATE_WEIGHTS

log = logging.getLogger(__name__)

__all__ = ["tune_gates"]



def tune_gates(config: Config) -> str:
    """Run step 3 for ``config``'s run; returns ``<run>/gates`` (see module doc)."""
    with writing_run(config) as layout:
        return _tune(config, layout)


def _tune(config: Config, layout) -> str:
    if storage.exists(layout.gates_success):
        log.info("step 3 is complete (%s exists); nothing to search", layout.gates_success)
        return layout.gates
    start = time.perf_counter()
    table = _gate_table(config)
    train_rows, val_rows = split_images(table.image_ids, config.gate.holdout_fraction, config.seed)
    log.info("gate search on %d images (%d train, %d validation), exits %s",
             len(table), len(train_rows), len(val_rows), table.exits.tolist())
    grid = run_search(config, table, train_rows, val_rows)
    results, by_id = results_table(grid)
    if results.empty or results["val_pq"].isna().all():
        errors = [repr(r.error) for r in grid if r.error][:3]
        raise RuntimeError(f"no gate trial finished an epoch; first errors: {errors}")
    split = {"seed": config.seed, "holdout_fraction": config.gate.holdout_fraction,
             "train_images": len(train_rows), "val_images": len(val_rows)}
    saved, picks, unmet, written = {}, [], [], {}
    for name, choice in _choose(config, results).items():
        if choice["trial"] is None:
            log.warning("no trial fits the budget %s (%s); no gate saved for it", choice["budget"], choice["unit"])
            unmet.append(name)
            continue
        gate, metadata, files = _save_chosen(config, table, val_rows, name, choice,
                                             by_id[choice["trial"]["trial_id"]], split)
        written.update({f"{name}/{file}": checksum for file, checksum in files.items()})
        saved[name] = {"uri": layout.gate(name), "trial_id": metadata["trial_id"], "beta": metadata["beta"],
                       **{key: metadata["validation"][key] for key in ("val_pq", "val_layers", "val_gflops")}}
        picks.append(_picks(name, gate, metadata, table, val_rows))
    written.update(_write_tables(config, table, val_rows, results, picks))
    summary = {"gates": saved, "unmet_budgets": unmet, "budget_unit": config.gate.budget_unit,
               "trials": len(results), "failed_trials": int(results["error"].notna().sum()), "split": split,
               "files": [GATE_WEIGHTS, GATE_METADATA], "seconds": time.perf_counter() - start,
               CHECKSUMS: dict(sorted(written.items()))}
    storage.write_text(layout.gates_success, json.dumps(summary, indent=2, sort_keys=True))
    return layout.gates


def _gate_table(config: Config) -> GateTable:
    layout = config.storage.layout()
    require_finished(layout)
    table = load_gate_table(layout.depth, config.model.gate.exits)
    if table.channels != config.model.pixel_decoder.conv_dim:
        raise StaleRunError(
            f"the depth table's gate features have {table.channels} channels but model.pixel_decoder.conv_dim is "
            f"{config.model.pixel_decoder.conv_dim}; the table was built with another model: rebuild step 2"
        )
    return table


def _choose(config: Config, results: pd.DataFrame) -> dict[str, dict]:
    """``{name: {"budget", "unit", "trial": row or None}}``: one trial per budget, or with no
    budgets one per beta (the trial closest to that beta's oracle)."""
    unit = config.gate.budget_unit
    if config.gate.compute_budgets:
        return select_for_budgets(results, list(config.gate.compute_budgets), unit)
    chosen = {}
    for beta, trials in results.dropna(subset=[OBJECTIVE]).groupby("beta"):
        best = trials.sort_values([OBJECTIVE, "trial_id"]).iloc[0].to_dict()
        chosen[f"beta_{beta:g}"] = {"budget": None, "unit": unit, "trial": best}
    return chosen


def _save_chosen(config: Config, table: GateTable, val_rows: np.ndarray, name: str, choice: dict, result,
                 split: dict):
    """Copy the chosen trial's checkpointed gate to ``RunLayout.gate(name)`` with its full metadata;
    returns the gate, its metadata and the checksums of its two files."""
    layout = config.storage.layout()
    with tempfile.TemporaryDirectory(prefix="ecom2f-chosen-") as local:
        result.checkpoint.to_directory(local)
        gate, metadata = load_gate(local)
    metadata.update(budget=choice["budget"], budget_unit=choice["unit"], name=name,
                    trial_id=choice["trial"]["trial_id"], depth_table=layout.depth, split=split,
                    reference=reference_metrics(table, val_rows, metadata["beta"], metadata["cost"]))
    files = write_gate(layout.gate(name), gate, metadata)
    return gate, metadata, files


def _picks(name: str, gate, metadata: dict, table: GateTable, val_rows: np.ndarray) -> pd.DataFrame:
    """The saved gate's exit for every image of the table (``split``: train or val), for the report."""
    with torch.no_grad():
        features = torch.from_numpy(np.ascontiguousarray(gate_inputs(table, gate.config.pooling,
                                                                     gate.config.grid_size)))
        chosen = gate(features).argmax(-1).numpy()
    validation = np.zeros(len(table), dtype=bool)
    validation[val_rows] = True
    check = realised_metrics(table, val_rows, chosen[val_rows], metadata["beta"], metadata["cost"])
    measured = metadata["validation"]
    log.info("gate %s: trial %s, beta %g, validation PQ %.4f at %.2f layers (%.3f GFLOPs); table says %.4f",
             name, metadata["trial_id"], metadata["beta"], measured["val_pq"], measured["val_layers"],
             measured["val_gflops"], check["pq"])
    return pd.DataFrame({
        "gate": name, "image_id": table.image_ids, "split": np.where(validation, "val", "train"),
        "exit": table.exits[chosen].astype(np.int16), "difficulty": table.difficulty,
    })


def _write_tables(config: Config, table: GateTable, val_rows: np.ndarray, results: pd.DataFrame,
                  picks: list[pd.DataFrame]) -> dict[str, dict]:
    """Writes the search's tables; returns their checksums by name (relative to ``<run>/gates``)."""
    layout = config.storage.layout()
    reference = pd.DataFrame([
        {"beta": beta, "policy": policy, **metrics}
        for beta in config.gate.betas
        for policy, metrics in reference_metrics(table, val_rows, beta, config.gate.budget_unit).items()
    ])
    tables = {layout.gates_results: results, layout.gates_reference: reference}
    if picks:
        tables[layout.gates_picks] = pd.concat(picks, ignore_index=True)
    written = {}
    for uri, frame in tables.items():
        data = frame.to_parquet(index=False)
        storage.write_bytes(uri, data)
        written[uri.rsplit("/", 1)[-1]] = digest(data)
    return written
