"""What one training micro-step computes: the model at the step's exit(s), and its weighted loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ecom2f.engine.exits import AlphaKind, exit_loss_weight
from ecom2f.modeling import EarlyExitMask2Former
from ecom2f.modeling.criterion import SetCriterion

__all__ = ["ParentObjective"]


class ParentObjective(nn.Module):
    """Model + criterion as one module, so DeepSpeed's engine runs (and hooks, and autocasts) both.

    ``forward(pixels [N, 3, H, W], targets, exits) -> {"total": scalar, k: loss at exit k}``:
    one exit runs the encoder to that depth; several run the backbone and encoder once and
    decode after each exit. The loss at exit k is scaled by alpha_k.
    """

    def __init__(self, model: EarlyExitMask2Former, criterion: SetCriterion, alpha: AlphaKind):
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.alpha = alpha

    def forward(self, pixels: torch.Tensor, targets: list[dict], exits: Sequence[int]) -> dict:
        if len(exits) == 1:
            outputs = {exits[0]: self.model.forward_raw(pixels, depth=exits[0])}
        else:
            outputs = self.model.forward_exits(pixels, list(exits), aux=True)
        losses = {
            k: self.criterion(outputs[k], targets, exit_weight=exit_loss_weight(k, self.alpha))["total"] for k in exits
        }
        losses["total"] = torch.stack([losses[k] for k in exits]).sum()
        return losses
