"""A gate's files: ``gate.pt`` (state_dict of :class:`ecom2f.modeling.gate.Gate`) and ``gate.json``.

``gate.json`` holds everything needed to rebuild and judge the gate: ``channels`` (the
model's ``pixel_decoder.conv_dim``), ``gate_config`` (a :class:`GateConfig`), ``beta``,
``cost``, the ``trial`` settings, its ``validation`` metrics (what it realises on the
held-out images of the depth table) and, once chosen for a budget, ``budget``/``budget_unit``.

To gate a model with it: ``gate, meta = load_gate(uri); model.gate = gate`` (the model calls
``self.gate.pool``, ``self.gate(...)`` and ``self.gate.depths``, all configured by the gate's
own config), or set ``config.model.gate = GateConfig(**meta["gate_config"])`` before
``build_model`` and ``model.gate.load_state_dict(gate.state_dict())``.
"""

from __future__ import annotations

import io
import json
import os

import torch

from ecom2f import storage
from ecom2f.config.model import GateConfig
from ecom2f.modeling.gate import Gate

__all__ = ["GATE_JSON", "GATE_WEIGHTS", "gate_bytes", "load_gate", "write_gate"]

GATE_WEIGHTS = "gate.pt"
GATE_JSON = "gate.json"


def gate_bytes(gate: Gate) -> bytes:
    buffer = io.BytesIO()
    torch.save({key: value.detach().cpu() for key, value in gate.state_dict().items()}, buffer)
    return buffer.getvalue()


def write_gate(uri: str, gate: Gate, metadata: dict) -> None:
    """Write ``gate.pt`` then ``gate.json`` under ``uri`` (each one atomic write)."""
    document = {"gate_config": gate.config.model_dump(mode="json"), **metadata}
    storage.write_bytes(storage.join(uri, GATE_WEIGHTS), gate_bytes(gate))
    storage.write_text(storage.join(uri, GATE_JSON), json.dumps(document, indent=2, sort_keys=True, default=float))


def load_gate(uri: str | os.PathLike) -> tuple[Gate, dict]:
    """``(Gate in eval mode, metadata)`` from a gate folder (``<run>/gates/<budget>``, local or s3://)."""
    uri = os.fspath(uri)
    try:
        metadata = json.loads(storage.read_text(storage.join(uri, GATE_JSON)))
    except storage.StorageNotFoundError:
        raise storage.StorageNotFoundError(
            f"no gate at {uri}: {GATE_JSON} is missing; list <run>/gates/ for the chosen gates (step 3, tune-gate)"
        ) from None
    for key in ("channels", "gate_config"):
        if key not in metadata:
            raise ValueError(f"{storage.join(uri, GATE_JSON)} lacks {key!r}; it was not written by ecom2f tune-gate")
    gate = Gate(int(metadata["channels"]), GateConfig(**metadata["gate_config"]))
    state = torch.load(io.BytesIO(storage.read_bytes(storage.join(uri, GATE_WEIGHTS))), weights_only=True,
                       map_location="cpu")
    gate.load_state_dict(state, strict=True)
    return gate.eval(), metadata
