"""A gate's files (``storage.layout.gate_files``): the weights (state_dict of
:class:`ecom2f.modeling.gate.Gate`) and the metadata (JSON).

The metadata holds everything needed to rebuild and judge the gate: ``channels`` (the
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
from ecom2f.storage.layout import gate_files

__all__ = ["gate_bytes", "load_gate", "write_gate"]


def gate_bytes(gate: Gate) -> bytes:
    buffer = io.BytesIO()
    torch.save({key: value.detach().cpu() for key, value in gate.state_dict().items()}, buffer)
    return buffer.getvalue()


def write_gate(uri: str, gate: Gate, metadata: dict) -> None:
    """Write the weights then the metadata under the folder ``uri`` (each one atomic write)."""
    weights, metadata_uri = gate_files(uri)
    document = {"gate_config": gate.config.model_dump(mode="json"), **metadata}
    storage.write_bytes(weights, gate_bytes(gate))
    storage.write_text(metadata_uri, json.dumps(document, indent=2, sort_keys=True, default=float))


def load_gate(uri: str | os.PathLike) -> tuple[Gate, dict]:
    """``(Gate in eval mode, metadata)`` from a gate folder (``RunLayout.gate(name)``, local or s3://)."""
    weights, metadata_uri = gate_files(os.fspath(uri))
    try:
        metadata = json.loads(storage.read_text(metadata_uri))
    except storage.StorageNotFoundError:
        raise storage.StorageNotFoundError(
            f"no gate at {os.fspath(uri)}: {metadata_uri} is missing; list <run>/gates/ for the chosen gates "
            "(step 3, tune-gate)"
        ) from None
    for key in ("channels", "gate_config"):
        if key not in metadata:
            raise ValueError(f"{metadata_uri} lacks {key!r}; it was not written by ecom2f tune-gate")
    gate = Gate(int(metadata["channels"]), GateConfig(**metadata["gate_config"]))
    state = torch.load(io.BytesIO(storage.read_bytes(weights)), weights_only=True, map_location="cpu")
    gate.load_state_dict(state, strict=True)
    return gate.eval(), metadata
