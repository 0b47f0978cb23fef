"""Mask2Former's training loss: class cross-entropy plus point-sampled mask BCE and dice.

Every prediction (the final one and each auxiliary one) is matched to the targets on its
own, then scored. Mask losses are sums over matched masks divided by the number of target
masks in the whole (distributed) batch, as Mask2Former does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ecom2f.modeling.matcher import HungarianMatcher
from ecom2f.modeling.point_sampling import point_sample, uncertain_point_coords_with_randomness

__all__ = ["SetCriterion", "pad_target_masks", "sigmoid_ce_loss", "dice_loss", "DEFAULT_WEIGHT_DICT"]

DEFAULT_WEIGHT_DICT = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Sum over masks of the mean BCE over points, divided by ``num_masks``.

    Args:
        logits: ``[M, P]`` mask logits at points.
        targets: ``[M, P]`` target values in ``[0, 1]``.
    """
    per_point = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return per_point.mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
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
        list of float32 ``[T_i, H_max, W_max]``.
    """
    height = max(int(t["masks"].shape[-2]) for t in targets)
    width = max(int(t["masks"].shape[-1]) for t in targets)
    padded = []
    for target in targets:
        masks = target["masks"].float()
        padded.append(F.pad(masks, (0, width - masks.shape[-1], 0, height - masks.shape[-2])))
    return padded


def _check_targets(targets: list[dict], batch: int, num_classes: int) -> None:
    if len(targets) != batch:
        raise ValueError(f"got {len(targets)} target dicts for a batch of {batch} predictions; pass one per image")
    for image, target in enumerate(targets):
        if "labels" not in target or "masks" not in target:
            raise ValueError(f"target {image} needs 'labels' [K] int64 and 'masks' [K, H, W]; got keys {sorted(target)}")
        labels, masks = target["labels"], target["masks"]
        if labels.dim() != 1 or masks.dim() != 3 or labels.shape[0] != masks.shape[0]:
            raise ValueError(
                f"target {image}: labels {tuple(labels.shape)} and masks {tuple(masks.shape)} must be [K] and [K, H, W]"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(
                f"target {image}: labels must be in [0, {num_classes - 1}] (contiguous ids), "
                f"got min {int(labels.min())} max {int(labels.max())}"
            )


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

    def loss_labels(self, pred_logits: torch.Tensor, targets: list[dict], indices) -> torch.Tensor:
        """Weighted cross-entropy over all queries; unmatched queries target no-object.

        Args:
            pred_logits: ``[N, Q, K+1]``.
        """
        if pred_logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"pred_logits has {pred_logits.shape[-1]} classes; expected num_classes + 1 = {self.num_classes + 1}"
            )
        logits = pred_logits.float()
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        for image, (pred_idx, tgt_idx) in enumerate(indices):
            target_classes[image, pred_idx.to(logits.device)] = targets[image]["labels"].to(logits.device)[tgt_idx]
        # Built per call, not held as a buffer (Mask2Former's ``empty_weight``): DeepSpeed's bf16
        # engine would cast a buffer, and 0.1 in bf16 is 0.10009765625. ecom2f.checkpoint writes
        # ``criterion.empty_weight`` itself when exporting to Mask2Former.
        class_weight = torch.ones(self.num_classes + 1, device=logits.device)
        class_weight[-1] = self.eos_coef
        return F.cross_entropy(logits.transpose(1, 2), target_classes, class_weight)

    def loss_masks(
        self,
        pred_masks: torch.Tensor,
        target_masks: list[torch.Tensor],
        indices,
        num_masks: float,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask BCE and dice of matched pairs on uncertainty-chosen points.

        Args:
            pred_masks: ``[N, Q, h, w]`` logits.
            target_masks: per image ``[T_i, H, W]`` float, padded to one frame.

        Returns:
            ``(loss_mask, loss_dice)`` scalars.
        """
        matched_pred = torch.cat([pred_masks[i, src.to(pred_masks.device)] for i, (src, _) in enumerate(indices)])
        if matched_pred.shape[0] == 0:
            # Keep the graph connected so every rank back-propagates through pred_masks.
            zero = pred_masks.sum() * 0.0
            return zero, zero.clone()
        matched_target = torch.cat([target_masks[i][tgt.to(target_masks[i].device)] for i, (_, tgt) in enumerate(indices)])
        pred = matched_pred[:, None].float()  # [M, 1, h, w]
        target = matched_target[:, None].to(pred)  # [M, 1, H, W]
        with torch.no_grad():
            coords = uncertain_point_coords_with_randomness(
                pred, self.num_points, self.oversample_ratio, self.importance_sample_ratio, generator
            )
            point_targets = point_sample(target, coords)[:, 0]
        point_logits = point_sample(pred, coords)[:, 0]
        return sigmoid_ce_loss(point_logits, point_targets, num_masks), dice_loss(point_logits, point_targets, num_masks)

    def _num_masks(self, targets: list[dict], device: torch.device) -> float:
        count = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        world_size = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            world_size = dist.get_world_size()
        return max(count.item() / world_size, 1.0)

    def _losses_of(self, prediction: dict, targets, target_masks, num_masks, generator) -> dict[str, torch.Tensor]:
        indices = self.matcher(
            {"pred_logits": prediction["pred_logits"], "pred_masks": prediction["pred_masks"]},
            [{"labels": t["labels"], "masks": m} for t, m in zip(targets, target_masks)],
            generator=generator,
        )
        loss_mask, loss_dice = self.loss_masks(prediction["pred_masks"], target_masks, indices, num_masks, generator)
        return {
            "loss_ce": self.loss_labels(prediction["pred_logits"], targets, indices),
            "loss_mask": loss_mask,
            "loss_dice": loss_dice,
        }

    def forward(
        self,
        outputs: dict,
        targets: list[dict],
        exit_weight: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Weighted losses of the final and every auxiliary prediction.

        Args:
            outputs: ``pred_logits [N, Q, K+1]``, ``pred_masks [N, Q, h, w]`` and optionally
                ``aux_outputs``: a list of dicts with the same two keys.
            targets: N dicts: ``labels [K_i]`` int64 in ``[0, K)``, ``masks [K_i, H, W]``
                bool/float in the padded image frame (``K_i`` may be 0).
            exit_weight: multiplies every loss (ECO-M2F step 1's alpha_k for the sampled exit).
            generator: optional RNG for all point draws (reproducible tests).

        Returns:
            ``loss_ce``, ``loss_mask``, ``loss_dice``, their ``_i`` copies for aux output ``i``,
            each already multiplied by its weight and ``exit_weight``, and ``total`` (their sum).
        """
        pred_logits = outputs["pred_logits"]
        _check_targets(targets, pred_logits.shape[0], self.num_classes)
        device = pred_logits.device
        # Move the (usually bool) masks before padding turns them into 4x larger floats.
        targets = [{"labels": t["labels"].to(device), "masks": t["masks"].to(device)} for t in targets]
        target_masks = pad_target_masks(targets)
        num_masks = self._num_masks(targets, device)

        raw = self._losses_of(outputs, targets, target_masks, num_masks, generator)
        for aux_index, aux in enumerate(outputs.get("aux_outputs", []) or []):
            for name, value in self._losses_of(aux, targets, target_masks, num_masks, generator).items():
                raw[f"{name}_{aux_index}"] = value

        losses = {}
        for name, value in raw.items():
            base = name if name in self.weight_dict else name.rsplit("_", 1)[0]
            losses[name] = value * (self.weight_dict[base] * float(exit_weight))
        losses["total"] = torch.stack(list(losses.values())).sum()
        return losses
