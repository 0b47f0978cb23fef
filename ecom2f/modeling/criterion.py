"""Mask2Former's training loss: class cross-entropy plus point-sampled mask BCE and dice.

Every prediction (the final one and each auxiliary one) is matched to the targets on its
own, then scored. Mask losses are sums over matched masks divided by the number of target
masks in the whole (distributed) batch, as Mask2Former does.

On a GPU, a loss call waits on the device once: all cost matrices of all predictions reach
the host in one copy for the Hungarian matching (see ``HungarianMatcher.match_all``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ecom2f.config.model import ModelConfig
from ecom2f.modeling.matcher import HungarianMatcher
from ecom2f.modeling.point_sampling import point_sample, uncertain_point_coords_with_randomness

__all__ = [
    "DEFAULT_WEIGHT_DICT",
    "MatchedPairs",
    "SetCriterion",
    "build_criterion",
    "check_targets",
    "dice_loss",
    "matched_pairs_on_device",
    "pad_target_masks",
    "sigmoid_ce_loss",
]

DEFAULT_WEIGHT_DICT = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float | torch.Tensor) -> torch.Tensor:
    """Sum over masks of the mean BCE over points, divided by ``num_masks``.

    Args:
        logits: ``[M, P]`` mask logits at points.
        targets: ``[M, P]`` target values in ``[0, 1]``.
    """
    per_point = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return per_point.mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float | torch.Tensor) -> torch.Tensor:
    """Sum over masks of ``1 - (2|p.t| + 1) / (|p| + |t| + 1)``, divided by ``num_masks``.

    Args:
        logits: ``[M, P]`` mask logits at points.
        targets: ``[M, P]`` target values in ``[0, 1]``.
    """
    probs = logits.sigmoid()
    numerator = 2.0 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1.0 - (numerator + 1.0) / (denominator + 1.0)).sum() / num_masks


def pad_target_masks(targets: list[dict]) -> list[torch.Tensor]:
    """Pad every image's masks bottom-right with zeros to the largest ``H, W`` of the batch.

    Mask2Former compares predictions and targets in the padded batch frame, so point
    coordinates mean the same place for both.

    Args:
        targets: dicts with ``masks [T_i, H_i, W_i]``.

    Returns:
        list of float32 ``[T_i, H_max, W_max]`` (views of one ``[sum T_i, H_max, W_max]`` tensor).
    """
    joined = _joined_target_masks(targets)
    return list(torch.split(joined, [int(t["masks"].shape[0]) for t in targets]))


def _joined_target_masks(targets: list[dict]) -> torch.Tensor:
    """All images' masks, padded to the batch frame and stacked: float32 ``[sum T_i, H_max, W_max]``."""
    height = max(int(t["masks"].shape[-2]) for t in targets)
    width = max(int(t["masks"].shape[-1]) for t in targets)
    count = sum(int(t["masks"].shape[0]) for t in targets)
    joined = torch.zeros(count, height, width, device=targets[0]["masks"].device)
    start = 0
    for target in targets:
        masks = target["masks"]
        joined[start : start + masks.shape[0], : masks.shape[-2], : masks.shape[-1]] = masks
        start += masks.shape[0]
    return joined


def check_targets(targets: list[dict], num_classes: int, batch: int | None = None) -> None:
    """Raise ValueError naming the first malformed target.

    Shapes are always checked. Label values are read only from labels on the CPU: reading
    them on a GPU would stall it, so check the batch as the data loader delivers it (on the
    host), before it moves to the device; the criterion repeats the check only for CPU labels.

    Args:
        targets: dicts with ``labels [T_i]`` int64 in ``[0, num_classes)`` and ``masks [T_i, H, W]``.
        num_classes: K, the number of real classes.
        batch: the number of images the targets must cover, if known.
    """
    if batch is not None and len(targets) != batch:
        raise ValueError(f"got {len(targets)} target dicts for a batch of {batch} predictions; pass one per image")
    for image, target in enumerate(targets):
        if "labels" not in target or "masks" not in target:
            raise ValueError(f"target {image} needs 'labels' [K] int64 and 'masks' [K, H, W]; got keys {sorted(target)}")
        labels, masks = target["labels"], target["masks"]
        if labels.dim() != 1 or masks.dim() != 3 or labels.shape[0] != masks.shape[0]:
            raise ValueError(
                f"target {image}: labels {tuple(labels.shape)} and masks {tuple(masks.shape)} must be [K] and [K, H, W]"
            )
        if labels.device.type != "cpu" or not labels.numel():
            continue
        values = labels.tolist()
        low, high = min(values), max(values)
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"target {image}: labels must be in [0, {num_classes - 1}] (contiguous ids), got min {low} max {high}"
            )


@dataclass(frozen=True)
class MatchedPairs:
    """The matched (query, target) pairs of one prediction over the batch, on the device.

    image, query, target: ``[M]`` int64: the pair's image, its query, and its target's row
    in the batch's concatenated targets. count: ``M``, known on the host.
    """

    image: torch.Tensor
    query: torch.Tensor
    target: torch.Tensor
    count: int


def matched_pairs_on_device(
    indices: list[list[tuple[torch.Tensor, torch.Tensor]]], targets_per_image: list[int], device: torch.device
) -> list[MatchedPairs]:
    """The matcher's host indices (per prediction, per image) as :class:`MatchedPairs` on
    ``device``, in one asynchronous host-to-device copy."""
    offsets = [0]
    for count in targets_per_image[:-1]:
        offsets.append(offsets[-1] + count)
    columns, counts = [], []
    for per_image in indices:
        count = 0
        for image, (pred_idx, tgt_idx) in enumerate(per_image):
            columns.append(torch.stack((torch.full_like(pred_idx, image), pred_idx, tgt_idx + offsets[image])))
            count += pred_idx.shape[0]
        counts.append(count)
    host = torch.cat(columns, 1) if columns else torch.zeros(3, 0, dtype=torch.int64)
    if torch.device(device).type == "cuda":
        host = host.pin_memory()
    joined = host.to(device, non_blocking=True)
    return [MatchedPairs(part[0], part[1], part[2], count) for part, count in zip(joined.split(counts, 1), counts)]


class SetCriterion(torch.nn.Module):
    """Mask2Former's set loss with ECO-M2F's per-exit weight.

    Args:
        num_classes: K, number of real classes; logits have K+1 entries (last = no object).
        matcher: the Hungarian matcher.
        weight_dict: weights of ``loss_ce``, ``loss_mask``, ``loss_dice`` (applied to the
            auxiliary copies ``loss_ce_i``... too).
        eos_coef: cross-entropy weight of the no-object class.
        num_points: uncertainty-sampled points per mask.
        oversample_ratio, importance_sample_ratio: see
            :func:`~ecom2f.modeling.point_sampling.uncertain_point_coords_with_randomness`.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher | None = None,
        weight_dict: dict[str, float] | None = None,
        eos_coef: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        weights = dict(DEFAULT_WEIGHT_DICT if weight_dict is None else weight_dict)
        unknown = set(weights) - set(DEFAULT_WEIGHT_DICT)
        if unknown:
            raise ValueError(f"unknown loss names in weight_dict: {sorted(unknown)}; use {sorted(DEFAULT_WEIGHT_DICT)}")
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.weight_dict = {name: float(weights.get(name, 0.0)) for name in DEFAULT_WEIGHT_DICT}
        self.eos_coef = float(eos_coef)
        self.num_points = int(num_points)
        self.oversample_ratio = float(oversample_ratio)
        self.importance_sample_ratio = float(importance_sample_ratio)

    def check_targets(self, targets: list[dict], batch: int | None = None) -> None:
        """:func:`check_targets` with this criterion's classes: call it on the host batch
        (before it moves to the device), where reading the labels costs no device sync."""
        check_targets(targets, self.num_classes, batch)

    def loss_labels(self, pred_logits: torch.Tensor, labels: torch.Tensor, matched: MatchedPairs) -> torch.Tensor:
        """Weighted cross-entropy over all queries; unmatched queries target no-object.

        Args:
            pred_logits: ``[N, Q, K+1]``.
            labels: ``[sum T_i]`` int64, all images' labels concatenated (on the device).
            matched: the prediction's matched pairs.
        """
        if pred_logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"pred_logits has {pred_logits.shape[-1]} classes; expected num_classes + 1 = {self.num_classes + 1}"
            )
        logits = pred_logits.float()
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[matched.image, matched.query] = labels[matched.target]
        # Built per call, not held as a buffer (Mask2Former's ``empty_weight``): DeepSpeed's bf16
        # engine would cast a buffer, and 0.1 in bf16 is 0.10009765625. ecom2f.modeling.mask2former_checkpoint writes
        # ``criterion.empty_weight`` itself when exporting to Mask2Former.
        class_weight = torch.ones(self.num_classes + 1, device=logits.device)
        class_weight[-1] = self.eos_coef
        return F.cross_entropy(logits.transpose(1, 2), target_classes, class_weight)

    def loss_masks(
        self,
        pred_masks: torch.Tensor,
        target_masks: torch.Tensor,
        matched: MatchedPairs,
        num_masks: float | torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask BCE and dice of matched pairs on uncertainty-chosen points.

        Args:
            pred_masks: ``[N, Q, h, w]`` logits.
            target_masks: ``[sum T_i, H, W]`` float, all images' masks padded to one frame.
            matched: the prediction's matched pairs.
            num_masks: the divisor (see :meth:`_num_masks`).

        Returns:
            ``(loss_mask, loss_dice)`` float32 scalars.
        """
        if matched.count == 0:
            # Keep the graph connected so every rank back-propagates through pred_masks.
            zero = pred_masks.float().sum() * 0.0
            return zero, zero.clone()
        pred = pred_masks[matched.image, matched.query][:, None].float()  # [M, 1, h, w]
        target = target_masks[matched.target][:, None].to(pred)  # [M, 1, H, W]
        with torch.no_grad():
            coords = uncertain_point_coords_with_randomness(
                pred, self.num_points, self.oversample_ratio, self.importance_sample_ratio, generator
            )
            point_targets = point_sample(target, coords)[:, 0]
        point_logits = point_sample(pred, coords)[:, 0]
        return sigmoid_ce_loss(point_logits, point_targets, num_masks), dice_loss(point_logits, point_targets, num_masks)

    def _num_masks(self, targets_per_image: list[int], device: torch.device) -> float | torch.Tensor:
        """Target masks per rank, averaged over ranks, at least 1.

        The count is known on the host. Alone it stays a float; across ranks it is summed on
        the device and stays there (a ``[]`` tensor), so no rank waits on its device for it.
        """
        count = float(sum(targets_per_image))
        if not (dist.is_available() and dist.is_initialized()):
            return max(count, 1.0)
        total = torch.full((1,), count, dtype=torch.float32, device=device)
        dist.all_reduce(total)
        return (total[0] / dist.get_world_size()).clamp_min(1.0)

    def forward(
        self,
        outputs: dict,
        targets: list[dict],
        exit_weight: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Weighted losses of the final and every auxiliary prediction, in float32.

        The losses are computed with autocast off, on float32 copies of the predictions (as
        Mask2Former does). One device-to-host copy (the matcher's costs) is the only wait on
        the device; targets may arrive on the host or already on the device (moved with
        ``non_blocking=True``). Point draws: first the matcher's for every prediction, then
        the loss points of every prediction.

        Args:
            outputs: ``pred_logits [N, Q, K+1]``, ``pred_masks [N, Q, h, w]`` and optionally
                ``aux_outputs``: a list of dicts with the same two keys.
            targets: N dicts: ``labels [K_i]`` int64 in ``[0, K)``, ``masks [K_i, H, W]``
                bool/float in the padded image frame (``K_i`` may be 0). Label values are
                checked here only when on the CPU: see :func:`check_targets`.
            exit_weight: a host float multiplying every loss (ECO-M2F step 1's alpha_k).
            generator: optional RNG for all point draws (reproducible tests).

        Returns:
            ``loss_ce``, ``loss_mask``, ``loss_dice``, their ``_i`` copies for aux output ``i``,
            each already multiplied by its weight and ``exit_weight``, and ``total`` (their sum).
        """
        pred_logits = outputs["pred_logits"]
        check_targets(targets, self.num_classes, pred_logits.shape[0])
        device = pred_logits.device
        with torch.autocast(device_type=device.type, enabled=False):
            raw = self._raw_losses(outputs, targets, device, generator)
        losses = {}
        for name, value in raw.items():
            base = name if name in self.weight_dict else name.rsplit("_", 1)[0]
            losses[name] = value * (self.weight_dict[base] * float(exit_weight))
        losses["total"] = torch.stack(list(losses.values())).sum()
        return losses

    def _raw_losses(self, outputs: dict, targets: list[dict], device, generator) -> dict[str, torch.Tensor]:
        """Unweighted losses of every prediction, keyed ``loss_*`` (final) and ``loss_*_i`` (aux ``i``)."""
        # Move the (usually bool) masks before padding turns them into 4x larger floats.
        targets = [
            {"labels": t["labels"].to(device, non_blocking=True), "masks": t["masks"].to(device, non_blocking=True)}
            for t in targets
        ]
        counts = [int(t["labels"].shape[0]) for t in targets]
        target_masks = _joined_target_masks(targets)
        labels = torch.cat([t["labels"] for t in targets])
        num_masks = self._num_masks(counts, device)
        predictions = [outputs, *(outputs.get("aux_outputs") or [])]
        per_image_masks = torch.split(target_masks, counts)
        indices = self.matcher.match_all(
            predictions,
            [{"labels": t["labels"], "masks": m} for t, m in zip(targets, per_image_masks)],
            generator=generator,
        )
        raw = {}
        pairs = matched_pairs_on_device(indices, counts, device)
        for number, (prediction, matched) in enumerate(zip(predictions, pairs)):
            suffix = "" if number == 0 else f"_{number - 1}"
            loss_mask, loss_dice = self.loss_masks(
                prediction["pred_masks"], target_masks, matched, num_masks, generator
            )
            raw[f"loss_ce{suffix}"] = self.loss_labels(prediction["pred_logits"], labels, matched)
            raw[f"loss_mask{suffix}"] = loss_mask
            raw[f"loss_dice{suffix}"] = loss_dice
        return raw


def build_criterion(config: ModelConfig) -> SetCriterion:
    """The criterion of a model section: ``config.criterion``'s weights, used both as the matcher's
    costs and as the loss weights (as Mask2Former's CLASS/MASK/DICE_WEIGHT), for
    ``config.num_classes`` classes."""
    criterion = config.criterion
    matcher = HungarianMatcher(
        cost_class=criterion.class_weight, cost_mask=criterion.mask_weight, cost_dice=criterion.dice_weight,
        num_points=criterion.num_points,
    )
    return SetCriterion(
        config.num_classes,
        matcher,
        weight_dict={"loss_ce": criterion.class_weight, "loss_mask": criterion.mask_weight,
                     "loss_dice": criterion.dice_weight},
        eos_coef=criterion.no_object_weight,
        num_points=criterion.num_points,
        oversample_ratio=criterion.oversample_ratio,
        importance_sample_ratio=criterion.importance_sample_ratio,
    )
