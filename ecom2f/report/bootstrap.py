"""Paired bootstrap over validation images: how sure the report can be of a PQ difference.

Every variant (fixed depths, gates, the oracle) was run on the same images, so a comparison
resamples *images* (with replacement) and recomputes every variant's COCO dataset PQ on the same
resample: the pairing cancels what the images share. The interval is ``scipy.stats.bootstrap``'s
(BCa; percentile where BCa is undefined, e.g. a difference that is the same on every resample),
seeded, 1,000 resamples.

A resample is a weight per image (how many times it was drawn), so a variant's PQ sums on 1,000
resamples are one matrix product ``weights [R, n] @ sums [n, C*4]``; dataset PQ is then COCO's
average over categories of ``iou / (tp + fp/2 + fn/2)`` (categories with ``tp + fp + fn > 0``), as
:meth:`ecom2f.evaluation.PQStat.summary` computes it.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.stats

__all__ = ["CONFIDENCE", "RESAMPLES", "SEED", "ImageStats", "dataset_pq", "paired_bootstrap"]

RESAMPLES = 1000
CONFIDENCE = 0.95
SEED = 0
_FIELDS = ("iou", "tp", "fp", "fn")
TIE = 1e-9  # statistics closer to zero than this are zero (float noise of a tie)


def dataset_pq(sums: np.ndarray) -> np.ndarray:
    """COCO dataset PQ (a fraction) from PQ sums ``[..., C, 4]`` (iou, tp, fp, fn per category) -> ``[...]``;
    NaN where no category has a segment."""
    iou, tp, fp, fn = np.moveaxis(np.asarray(sums, np.float64), -1, 0)
    counted = (tp + fp + fn) > 0
    per_class = np.divide(iou, tp + 0.5 * fp + 0.5 * fn, out=np.zeros_like(iou), where=counted)
    classes = counted.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(classes > 0, per_class.sum(axis=-1) / classes, np.nan)


def _stat_array(texts: Sequence[str], categories: list[int]) -> np.ndarray:
    """``[n, C, 4]`` from per-image ``pq_stat`` JSON texts (``PQStat.to_dict``)."""
    column = {c: i for i, c in enumerate(categories)}
    out = np.zeros((len(texts), len(categories), 4))
    for row, text in enumerate(texts):
        for category, stat in json.loads(text).items():
            out[row, column[int(category)]] = [stat[f] for f in _FIELDS]
    return out


@dataclasses.dataclass(frozen=True)
class ImageStats:
    """Every variant's per-image PQ sums and costs, aligned by image (ascending id).

    ``image_ids [n]``, ``variants [V]``, ``sums [V, n, C, 4]``, ``encoder_gflops``, ``total_gflops``,
    ``depth`` ``[V, n]``.
    """

    image_ids: np.ndarray
    variants: list[str]
    sums: np.ndarray
    encoder_gflops: np.ndarray
    total_gflops: np.ndarray
    depth: np.ndarray

    @classmethod
    def from_rows(cls, rows: pd.DataFrame) -> ImageStats:
        """From the evaluation's per-image rows (``image_id, variant, pq_stat, encoder_gflops,
        total_gflops, depth``); every variant must hold every image once."""
        names = list(dict.fromkeys(rows["variant"]))
        image_ids = np.sort(rows["image_id"].unique())
        categories = sorted({int(c) for text in rows["pq_stat"] for c in json.loads(text)})
        frames = []
        for name in names:
            frame = rows[rows["variant"] == name].set_index("image_id")
            if len(frame) != len(image_ids) or not frame.index.is_unique or set(frame.index) != set(image_ids):
                raise ValueError(f"variant {name!r} has {len(frame)} rows for {len(image_ids)} images: every variant "
                                 "must score every image once; rerun the evaluation (ecom2f evaluate --force)")
            frames.append(frame.loc[image_ids])
        return cls(image_ids=image_ids, variants=names,
                   sums=np.stack([_stat_array(f["pq_stat"].tolist(), categories) for f in frames]),
                   encoder_gflops=np.stack([f["encoder_gflops"].to_numpy(np.float64) for f in frames]),
                   total_gflops=np.stack([f["total_gflops"].to_numpy(np.float64) for f in frames]),
                   depth=np.stack([f["depth"].to_numpy(np.float64) for f in frames]))

    def __len__(self) -> int:
        return len(self.image_ids)

    def _rows(self, names: Sequence[str]) -> list[int]:
        missing = [n for n in names if n not in self.variants]
        if missing:
            raise KeyError(f"variants {missing} are not in the evaluation (it has {self.variants})")
        return [self.variants.index(n) for n in names]

    def pq(self, weights: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """``[R, len(names)]`` dataset PQ in % of each variant on each weighting ``weights [R, n]``."""
        rows = self._rows(names)
        sums = np.einsum("rn,vnk->rvk", weights, self.sums[rows].reshape(len(rows), len(self), -1))
        return 100 * dataset_pq(sums.reshape(*sums.shape[:2], -1, 4))

    def mean_encoder_gflops(self, weights: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """``[R, len(names)]`` weighted mean encoder GFLOPs per image."""
        return weights @ self.encoder_gflops[self._rows(names)].T / weights.sum(axis=1, keepdims=True)


def _weights(indices: np.ndarray, n: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Resampled image positions ``[..., m]`` -> draw counts ``[R, n]`` (R = prod of the leading shape)."""
    indices = np.asarray(indices).astype(np.int64)
    lead, flat = indices.shape[:-1], indices.reshape(-1, indices.shape[-1])
    weights = np.zeros((len(flat), n))
    np.add.at(weights, (np.repeat(np.arange(len(flat)), flat.shape[1]), flat.ravel()), 1.0)
    return weights, lead


def paired_bootstrap(n: int, statistic: Callable[[np.ndarray], np.ndarray], resamples: int = RESAMPLES,
                     seed: int = SEED, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(estimate [K], low [K], high [K])`` of ``statistic`` over ``n`` paired images.

    ``statistic(weights [R, n]) -> [K, R]``: K numbers per weighting of the images (all ones = the
    sample itself). The same seed draws the same resamples, so two calls are paired with each other too.
    """
    if n < 2:
        raise ValueError(f"a bootstrap needs at least 2 images, got {n}")

    def vectorized(indices, axis=-1):
        weights, lead = _weights(indices, n)
        values = np.asarray(statistic(weights), np.float64)
        return values.reshape(values.shape[0], *lead)

    estimate = np.asarray(statistic(np.ones((1, n))), np.float64)[:, 0]
    with warnings.catch_warnings():  # a degenerate BCa interval is handled below
        warnings.simplefilter("ignore", category=scipy.stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", category=RuntimeWarning)
        result = scipy.stats.bootstrap((np.arange(n),), vectorized, n_resamples=resamples, vectorized=True,
                                       confidence_level=confidence, method="BCa", rng=np.random.default_rng(seed))
        low, high = (np.atleast_1d(np.asarray(v, np.float64)).copy() for v in result.confidence_interval)
        undefined = ~(np.isfinite(low) & np.isfinite(high))
        if undefined.any():
            fallback = scipy.stats.bootstrap((np.arange(n),), vectorized, n_resamples=0, vectorized=True,
                                             confidence_level=confidence, method="percentile",
                                             bootstrap_result=result, rng=np.random.default_rng(seed))
            low[undefined] = np.atleast_1d(fallback.confidence_interval.low)[undefined]
            high[undefined] = np.atleast_1d(fallback.confidence_interval.high)[undefined]
    # A difference that is exactly zero in exact arithmetic (a gate that is a fixed depth) comes out of
    # the sums as +-1e-14: snap it, so that "above" / "below" is never decided by rounding noise.
    snap = lambda v: np.where(np.abs(v) < TIE, 0.0, v)
    return snap(estimate), snap(low), snap(high)
