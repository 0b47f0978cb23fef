"""``ecom2f.modeling.build_criterion``: the model section's criterion settings reach the loss."""

from __future__ import annotations

from ecom2f.modeling import build_criterion
from tests.modeling.tiny import tiny_config


def test_every_criterion_setting_of_the_model_section_is_used():
    config = tiny_config(num_classes=7, num_things=4, criterion={
        "class_weight": 1.5, "mask_weight": 4.0, "dice_weight": 3.0, "no_object_weight": 0.2, "num_points": 99,
        "oversample_ratio": 2.0, "importance_sample_ratio": 0.5})
    criterion = build_criterion(config)
    assert criterion.num_classes == 7
    assert criterion.weight_dict == {"loss_ce": 1.5, "loss_mask": 4.0, "loss_dice": 3.0}
    assert (criterion.eos_coef, criterion.num_points) == (0.2, 99)
    assert (criterion.oversample_ratio, criterion.importance_sample_ratio) == (2.0, 0.5)
    matcher = criterion.matcher  # Mask2Former matches with the loss weights as costs
    assert (matcher.cost_class, matcher.cost_mask, matcher.cost_dice, matcher.num_points) == (1.5, 4.0, 3.0, 99)
