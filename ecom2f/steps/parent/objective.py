"""What one training micro-step computes: the model at the step's exit(s), and its weighted loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ecom2f.config import Config
from ecom2f.engine.exits import AlphaKind, exit_loss_weight
from ecom2f.modeling import EarlyExitMask2Former
from ecom2f.modeling.criterion import SetCriterion
from ecom2f.modeling.matcher import HungarianMatcher


def build_criterion(config: Config) -> SetCriterion:
    criterion = config.model.criterion
    matcher = HungarianMatcher(
        cost_class=criterion.class_weight, cost_mask=criterion.mask_weight, cost_dice=criterion.dice_weight,
        num_points=criterion.num_points,
    )
    return SetCriterion(
        config.model.num_classes,
        matcher,
        weight_dict={"loss_ce": criterion.class_weight, "loss_mask": criterion.mask_weight,
                     "loss_dice": criterion.dice_weight},
        eos_coef=criterion.no_object_weight,
        num_points=criterion.num_points,
        oversample_ratio=criterion.oversample_ratio,
        importance_sample_ratio=criterion.importance_sample_ratio,
    )


def normalize_batch(images: torch.Tensor, padding_mask: torch.Tensor, model: EarlyExitMask2Former) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` padded by the collate -> normalised pixels with zero padding.

    The uint8 batch crosses to the device first (4x fewer bytes than floats; asynchronous
    from pinned memory) and becomes float there. Mask2Former pads with 0 after normalising
    (detectron2's ImageList); the collate pads the uint8 images, so the padding is reset here.
    """
    device = model.device
    pixels = images.to(device, non_blocking=True).float()
    pixels = (pixels - model.pixel_mean) / model.pixel_std
    return pixels.masked_fill(padding_mask.to(device, non_blocking=True)[:, None], 0.0)


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
