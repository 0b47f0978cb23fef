"""What crosses between the stages of step 2 and the evaluation: one binary cell per image.

A model stage never ships mask logits: masks travel at 1 bit per pixel (:func:`pack_masks`) and
label maps (panoptic ids, classes) in the smallest unsigned type that holds them
(:func:`compact_labels`), inside one pickled cell per image (:func:`pack`).

Pickle is safe here for the reason Ray's own object transfer (which pickles too) is: a cell is
made and read by this code inside one job and never stored; artifacts a later step or a user
reads (parquet rows, JSON accumulators, weights) hold no pickles.
"""

from __future__ import annotations

import math
import pickle

import numpy as np

__all__ = ["compact_labels", "pack", "pack_masks", "unpack", "unpack_masks"]


def pack(value) -> bytes:
    """One image's payload between stages (numpy arrays, lists, dicts) as one binary cell."""
    return pickle.dumps(value, protocol=5)


def unpack(cell: bytes):
    """Inverse of :func:`pack`."""
    return pickle.loads(cell)


def pack_masks(masks) -> dict:
    """bool ``[K, H, W]`` -> 1 bit per pixel (exact; :func:`unpack_masks` inverts it)."""
    masks = np.asarray(masks, dtype=bool)
    return {"bits": np.packbits(masks.reshape(-1)), "shape": tuple(masks.shape)}


def unpack_masks(packed: dict) -> np.ndarray:
    """:func:`pack_masks`' cell -> bool ``[K, H, W]``."""
    shape = packed["shape"]
    return np.unpackbits(packed["bits"], count=math.prod(shape)).reshape(shape).astype(bool)


def compact_labels(labels) -> np.ndarray:
    """A non-negative integer map (ids, classes), any shape, in the smallest unsigned dtype that
    holds it; maps with negative values are returned unchanged."""
    labels = np.asarray(labels)
    if not labels.size or labels.min() < 0:
        return labels
    top = int(labels.max())
    dtype = next((d for d in (np.uint8, np.uint16, np.uint32) if top <= np.iinfo(d).max), np.int64)
    return labels.astype(dtype)
