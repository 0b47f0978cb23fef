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

The metadata also records the weights' size and SHA-256 (``weights_checksum``), and step 3's
manifest (``RunLayout.gates_success``) those of both files: :func:`load_gate` checks them, so a
truncated or altered gate fails with :class:`~ecom2f.storage.errors.CorruptArtifactError`.
"""

from __future__ import annotations

import io
import json
import os

import torch

from ecom2f import storage
from ecom2f.config.model import GateConfig
from ecom2f.modeling.gate import Gate
from ecom2f.storage.checksums import digest, verify
from ecom2f.storage.errors import CorruptArtifactError
from ecom2f.storage.layout import GATE_METADATA, GATE_WEIGHTS, gate_files

__all__ = ["RERUN_STEP3", "gate_bytes", "load_gate", "write_gate"]

WEIGHTS_CHECKSUM = "weights_checksum"
RERUN_STEP3 = ("delete the run's gates/_SUCCESS.json and rerun step 3 (`ecom2f tune-gate` with the same "
               "--config/--storage): the finished search is restored and its gates are written again")


def gate_bytes(gate: Gate) -> bytes:
    buffer = io.BytesIO()
    torch.save({key: value.detach().cpu() for key, value in gate.state_dict().items()}, buffer)
    return buffer.getvalue()


def write_gate(uri: str, gate: Gate, metadata: dict) -> dict[str, dict]:
    """Write the weights then the metadata (with the weights' checksum) under the folder ``uri``, each
    in one atomic write; returns the checksums of both files by name (for step 3's manifest)."""
    weights, metadata_uri = gate_files(uri)
    data = gate_bytes(gate)
    document = {"gate_config": gate.config.model_dump(mode="json"), **metadata, WEIGHTS_CHECKSUM: digest(data)}
    text = json.dumps(document, indent=2, sort_keys=True, default=float)
    storage.write_bytes(weights, data)
    storage.write_text(metadata_uri, text)
    return {GATE_WEIGHTS: digest(data), GATE_METADATA: digest(text.encode())}


def load_gate(uri: str | os.PathLike, expected: dict[str, dict] | None = None,
              where: str = "step 3's manifest") -> tuple[Gate, dict]:
    """``(Gate in eval mode, metadata)`` from a gate folder (``RunLayout.gate(name)``, local or s3://).

    The weights are checked against the checksum in the metadata; with ``expected`` (file name ->
    checksum, from step 3's manifest ``where``) both files are checked against it too.
    """
    weights, metadata_uri = gate_files(os.fspath(uri))
    expected = expected or {}
    try:
        raw = storage.read_bytes(metadata_uri)
    except storage.StorageNotFoundError:
        raise storage.StorageNotFoundError(
            f"no gate at {os.fspath(uri)}: {metadata_uri} is missing; list <run>/gates/ for the chosen gates "
            "(step 3, tune-gate)"
        ) from None
    verify(metadata_uri, raw, expected.get(GATE_METADATA), where, RERUN_STEP3)
    try:
        metadata = json.loads(raw)
    except ValueError:
        raise CorruptArtifactError(f"{metadata_uri} is corrupt (not JSON); {RERUN_STEP3}") from None
    for key in ("channels", "gate_config"):
        if key not in metadata:
            raise ValueError(f"{metadata_uri} lacks {key!r}; it was not written by ecom2f tune-gate")
    gate = Gate(int(metadata["channels"]), GateConfig(**metadata["gate_config"]))
    data = storage.read_bytes(weights)
    verify(weights, data, metadata.get(WEIGHTS_CHECKSUM), metadata_uri, RERUN_STEP3)
    verify(weights, data, expected.get(GATE_WEIGHTS), where, RERUN_STEP3)
    try:
        state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except (RuntimeError, EOFError, ValueError) as error:
        raise CorruptArtifactError(f"{weights} is not a readable gate state dict ({type(error).__name__}); "
                                   f"{RERUN_STEP3}") from None
    gate.load_state_dict(state, strict=True)
    return gate.eval(), metadata
