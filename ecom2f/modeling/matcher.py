"""Hungarian matching of predicted masks to target masks (Mask2Former's matcher).

The cost of pairing query ``q`` with target ``t`` is
``cost_class * (-p_q[label_t]) + cost_mask * BCE(q, t) + cost_dice * dice(q, t)``, with
BCE and dice computed on the same uniformly random points for every pair of one image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ecom2f.modeling.point_sampling import point_sample

__all__ = ["HungarianMatcher", "pairwise_sigmoid_ce_cost", "pairwise_dice_cost"]


def pairwise_sigmoid_ce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of every prediction against every target.

    Args:
        logits: ``[Q, P]`` mask logits at P points.
        targets: ``[T, P]`` target values in ``[0, 1]`` at the same points.

    Returns:
        ``[Q, T]`` mean BCE over the points.
    """
    num_points = logits.shape[1]
    # BCE(x, 1) = softplus(-x) and BCE(x, 0) = softplus(x), whose difference is -x, so
    # sum_p t*BCE(x, 1) + (1 - t)*BCE(x, 0) = -x.t + sum_p softplus(x): one matmul, no BCE calls.
    cost = -(logits @ targets.T) + F.softplus(logits).sum(-1, keepdim=True)
    return cost / num_points


def pairwise_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft dice loss ``1 - (2|p.t| + 1) / (|p| + |t| + 1)`` of every prediction/target pair.

    Args:
        logits: ``[Q, P]`` mask logits at P points.
        targets: ``[T, P]`` target values in ``[0, 1]``.

    Returns:
        ``[Q, T]`` dice costs.
    """
    probs = logits.sigmoid()
    numerator = 2.0 * (probs @ targets.T)
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


class HungarianMatcher(torch.nn.Module):
    """One-to-one assignment of queries to targets, per image, minimising the total cost.

    Args:
        cost_class: weight of ``-softmax(logits)[target class]``.
        cost_mask: weight of the mean sigmoid BCE over the sampled points.
        cost_dice: weight of the dice cost over the sampled points.
        num_points: uniformly random points per image shared by all predictions and targets.
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int = 12544,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("all matcher costs are 0: set at least one of cost_class, cost_mask, cost_dice")
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self.cost_class = float(cost_class)
        self.cost_mask = float(cost_mask)
        self.cost_dice = float(cost_dice)
        self.num_points = int(num_points)

    @torch.no_grad()
    def cost_matrix(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        labels: torch.Tensor,
        masks: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Matching cost of one image, on the CPU (see :meth:`device_cost_matrix`)."""
        return self.device_cost_matrix(pred_logits, pred_masks, labels, masks, generator).cpu()

    @torch.no_grad()
    def device_cost_matrix(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        labels: torch.Tensor,
        masks: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Matching cost of one image, left on the predictions' device.

        Args:
            pred_logits: ``[Q, K+1]`` class logits (last = no object).
            pred_masks: ``[Q, h, w]`` mask logits.
            labels: ``[T]`` int64 target classes.
            masks: ``[T, H, W]`` target masks (bool or float) in the same frame as ``pred_masks``.
            generator: optional RNG for the points (drawn only when ``T > 0``).

        Returns:
            ``[Q, T]`` float32 cost.
        """
        device = pred_masks.device
        num_queries = pred_logits.shape[0]
        num_targets = labels.shape[0]
        if num_targets == 0:
            return torch.zeros(num_queries, 0, device=device)
        # Costs in float32 even inside an autocast region: bf16 matmuls would reorder close matches.
        with torch.autocast(device_type=device.type, enabled=False):
            probs = pred_logits.float().softmax(-1)
            cost_class = -probs[:, labels.to(probs.device, non_blocking=True)]  # [Q, T]

            points = torch.rand(1, self.num_points, 2, device=device, generator=generator)
            # The points are shared, so masks ride as channels of one map: [1, Q or T, P].
            pred_points = point_sample(pred_masks[None].float(), points)[0]
            target_points = point_sample(masks[None].to(pred_points), points)[0]
            return (
                self.cost_class * cost_class
                + self.cost_mask * pairwise_sigmoid_ce_cost(pred_points, target_points)
                + self.cost_dice * pairwise_dice_cost(pred_points, target_points)
            )

    @torch.no_grad()
    def match_all(
        self,
        predictions: Sequence[dict],
        targets: list[dict],
        generator: torch.Generator | None = None,
    ) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Match several predictions of one batch (the final one and each auxiliary one).

        Every cost matrix is computed on the device; all of them then reach the host in one
        copy (the only device-to-host transfer, and the only wait on the device), where
        scipy's ``linear_sum_assignment`` solves each. Points are drawn prediction after
        prediction, image after image, as separate :meth:`forward` calls would draw them, so
        the assignments are those calls' assignments.

        Args:
            predictions: dicts with ``pred_logits [N, Q, K+1]`` and ``pred_masks [N, Q, h, w]``.
            targets: N dicts with ``labels [T_i]`` int64 and ``masks [T_i, H, W]`` (on the
                predictions' device, as the criterion passes them).
            generator: optional RNG for the points.

        Returns:
            per prediction, N pairs ``(pred_idx [M_i], tgt_idx [M_i])`` int64 on the CPU,
            ``M_i = min(Q, T_i)``, sorted by ``pred_idx``.
        """
        costs = []
        for prediction in predictions:
            pred_logits, pred_masks = prediction["pred_logits"], prediction["pred_masks"]
            if len(targets) != pred_logits.shape[0]:
                raise ValueError(
                    f"got {len(targets)} target dicts for a batch of {pred_logits.shape[0]} predictions; "
                    "pass one per image"
                )
            for image, target in enumerate(targets):
                costs.append(
                    self.device_cost_matrix(
                        pred_logits[image], pred_masks[image], target["labels"], target["masks"], generator
                    )
                )
        host = _to_host([cost.reshape(-1) for cost in costs])
        indices: list[list] = [[] for _ in predictions]
        offset = 0
        for number, cost in enumerate(costs):
            size = cost.numel()
            matrix = host[offset : offset + size].reshape(cost.shape)
            offset += size
            prediction, image = divmod(number, len(targets))
            if not np.isfinite(matrix).all():
                raise ValueError(
                    f"matching cost of image {image} (prediction {prediction}) has NaN/inf entries: "
                    "check the predictions"
                )
            pred_idx, tgt_idx = linear_sum_assignment(matrix)
            indices[prediction].append(
                (torch.as_tensor(pred_idx, dtype=torch.int64), torch.as_tensor(tgt_idx, dtype=torch.int64))
            )
        return indices

    @torch.no_grad()
    def forward(
        self,
        outputs: dict,
        targets: list[dict],
        generator: torch.Generator | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match every image of the batch (one prediction; see :meth:`match_all`).

        Args:
            outputs: ``pred_logits [N, Q, K+1]`` and ``pred_masks [N, Q, h, w]``.
            targets: N dicts with ``labels [T_i]`` int64 and ``masks [T_i, H, W]``.
            generator: optional RNG for the points.

        Returns:
            N pairs ``(pred_idx [M_i], tgt_idx [M_i])`` int64, ``M_i = min(Q, T_i)``,
            sorted by ``pred_idx``.
        """
        return self.match_all([outputs], targets, generator)[0]


def _to_host(flat_costs: list[torch.Tensor]) -> np.ndarray:
    """The concatenated float32 costs as one host array: one copy, whatever their number."""
    if not flat_costs:
        return np.zeros(0, np.float32)
    joined = torch.cat(flat_costs)
    if joined.numel() == 0:
        return np.zeros(0, np.float32)
    return joined.cpu().numpy()
