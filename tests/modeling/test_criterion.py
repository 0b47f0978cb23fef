"""SetCriterion: hand-computed values, monotonicity, gradients, exit weight, empty images."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ecom2f.modeling.criterion import SetCriterion, dice_loss, pad_target_masks, sigmoid_ce_loss
from ecom2f.modeling.matcher import HungarianMatcher

NUM_POINTS = 256


def _criterion(num_classes: int = 3, **kwargs) -> SetCriterion:
    return SetCriterion(num_classes, HungarianMatcher(num_points=NUM_POINTS), num_points=NUM_POINTS, **kwargs)


def test_point_losses_hand_computed():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), -math.log(3.0)]])  # sigmoid: .5 .5 / .75 .25
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # BCE per point: ln2, ln2 | -ln .75, -ln .25.
    expected_bce = (math.log(2) + (-math.log(0.75) - math.log(0.25)) / 2) / 4.0
    torch.testing.assert_close(sigmoid_ce_loss(logits, targets, 4.0), torch.tensor(expected_bce))
    # Dice: 1 - (2*.5 + 1)/(1 + 1 + 1) and 1 - (2*1 + 1)/(1 + 2 + 1).
    expected_dice = ((1 - 2 / 3) + (1 - 3 / 4)) / 4.0
    torch.testing.assert_close(dice_loss(logits, targets, 4.0), torch.tensor(expected_dice))


def test_crafted_batch_matches_hand_computed_losses():
    """Mask logits of 0 make BCE ln2 at every point whatever the target: no sampling noise."""
    num_classes = 3
    logits = torch.zeros(1, 3, num_classes + 1)
    logits[0, 0, 0] = math.log(4.0)  # p(class 0) = 4/7
    logits[0, 1, 2] = math.log(5.0)  # p(class 2) = 5/8
    logits[0, 2, 3] = math.log(9.0)  # p(no object) = 9/12
    aux_logits = torch.zeros(1, 3, num_classes + 1)  # uniform: each CE is ln 4
    pred_masks = torch.zeros(1, 3, 8, 8)
    targets = [{"labels": torch.tensor([2, 0]), "masks": torch.zeros(2, 32, 32, dtype=torch.bool)}]
    outputs = {
        "pred_logits": logits,
        "pred_masks": pred_masks,
        "aux_outputs": [{"pred_logits": aux_logits, "pred_masks": pred_masks}],
    }
    losses = _criterion(num_classes)(outputs, targets)

    ce = (-math.log(4 / 7) - math.log(5 / 8) - 0.1 * math.log(9 / 12)) / 2.1
    aux_ce = math.log(4.0)  # (1 + 1 + 0.1) ln4 / 2.1
    bce = 2 * math.log(2) / 2  # two matched masks, num_masks = 2
    dice = 2 * (1 - 1 / (0.5 * NUM_POINTS + 1)) / 2  # empty target: numerator 0
    expected = {
        "loss_ce": 2.0 * ce,
        "loss_mask": 5.0 * bce,
        "loss_dice": 5.0 * dice,
        "loss_ce_0": 2.0 * aux_ce,
        "loss_mask_0": 5.0 * bce,
        "loss_dice_0": 5.0 * dice,
    }
    assert set(losses) == set(expected) | {"total"}
    for name, value in expected.items():
        assert losses[name].item() == pytest.approx(value, rel=1e-5), name
    assert losses["total"].item() == pytest.approx(sum(expected.values()), rel=1e-5)


def _batch(gen: torch.Generator, sharpness: float, num_aux: int = 2):
    """Targets of random rectangles and predictions ``sharpness`` * (+-1) on them."""
    num_queries, num_classes, size = 6, 4, 32
    targets, logits, masks = [], torch.zeros(2, num_queries, num_classes + 1), torch.zeros(2, num_queries, 8, 8)
    for image, count in enumerate([3, 2]):
        target_masks = torch.zeros(count, size, size, dtype=torch.bool)
        for t in range(count):
            y0, x0 = 4 * t + 2, 6 * t + 1
            target_masks[t, y0 : y0 + 12, x0 : x0 + 10] = True
        labels = torch.arange(count) % num_classes
        targets.append({"labels": labels, "masks": target_masks})
        logits[image, :, num_classes] = sharpness
        for t in range(count):
            logits[image, t] = 0.0
            logits[image, t, labels[t]] = sharpness
            small = F.interpolate(target_masks[t][None, None].float(), size=(8, 8), mode="area")[0, 0]
            masks[image, t] = sharpness * (2 * small - 1)
    noise = torch.randn(masks.shape, generator=gen)
    outputs = {"pred_logits": logits.clone(), "pred_masks": masks + noise}
    outputs["aux_outputs"] = [
        {"pred_logits": logits.clone(), "pred_masks": masks + noise} for _ in range(num_aux)
    ]
    return outputs, targets


def test_losses_decrease_as_predictions_approach_targets():
    totals = []
    for sharpness in [0.0, 1.0, 3.0, 8.0]:
        outputs, targets = _batch(torch.Generator().manual_seed(5), sharpness)
        losses = _criterion(4)(outputs, targets, generator=torch.Generator().manual_seed(6))
        totals.append({k: losses[k].item() for k in ("loss_ce", "loss_mask", "loss_dice", "total")})
    for name in ("loss_ce", "loss_mask", "loss_dice", "total"):
        series = [t[name] for t in totals]
        assert all(a > b for a, b in zip(series, series[1:])), (name, series)


def test_gradients_reach_final_and_aux_predictions():
    outputs, targets = _batch(torch.Generator().manual_seed(7), 1.0)
    leaves = [outputs["pred_logits"], outputs["pred_masks"]]
    for aux in outputs["aux_outputs"]:
        leaves += [aux["pred_logits"], aux["pred_masks"]]
    for leaf in leaves:
        leaf.requires_grad_(True)
    losses = _criterion(4)(outputs, targets)
    losses["total"].backward()
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
        assert leaf.grad.abs().sum() > 0


def test_exit_weight_scales_every_loss_exactly():
    outputs, targets = _batch(torch.Generator().manual_seed(8), 2.0)
    criterion = _criterion(4)
    plain = criterion(outputs, targets, generator=torch.Generator().manual_seed(9))
    scaled = criterion(outputs, targets, exit_weight=0.37, generator=torch.Generator().manual_seed(9))
    assert set(plain) == set(scaled)
    for name in plain:
        torch.testing.assert_close(scaled[name], plain[name] * 0.37, rtol=1e-6, atol=0)


def test_image_without_targets_trains_towards_no_object():
    outputs, targets = _batch(torch.Generator().manual_seed(10), 1.0, num_aux=1)
    targets[1] = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32, dtype=torch.bool)}
    losses = _criterion(4)(outputs, targets)
    assert all(torch.isfinite(v) for v in losses.values())

    # A batch with no target at all: CE is plain no-object CE, mask losses are 0 but attached.
    logits = torch.randn(2, 5, 5, requires_grad=True)
    masks = torch.randn(2, 5, 8, 8, requires_grad=True)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32)}
    losses = _criterion(4)({"pred_logits": logits, "pred_masks": masks}, [empty, empty])
    expected_ce = F.cross_entropy(logits.detach().reshape(-1, 5), torch.full((10,), 4))
    torch.testing.assert_close(losses["loss_ce"], 2.0 * expected_ce)
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    losses["total"].backward()
    assert masks.grad is not None and (masks.grad == 0).all()
    assert logits.grad.abs().sum() > 0


def test_target_masks_are_padded_bottom_right_to_the_batch_frame():
    a = {"labels": torch.tensor([0]), "masks": torch.ones(1, 4, 6, dtype=torch.bool)}
    b = {"labels": torch.tensor([1]), "masks": torch.ones(1, 5, 3, dtype=torch.bool)}
    padded_a, padded_b = pad_target_masks([a, b])
    assert padded_a.shape == padded_b.shape == (1, 5, 6)
    assert padded_a[0, :4, :6].all() and padded_a[0, 4].sum() == 0
    assert padded_b[0, :, :3].all() and padded_b[0, :, 3:].sum() == 0


def test_bad_inputs_are_rejected_with_clear_errors():
    criterion = _criterion(3)
    outputs = {"pred_logits": torch.randn(1, 4, 4), "pred_masks": torch.randn(1, 4, 8, 8)}
    with pytest.raises(ValueError, match="labels must be in"):
        criterion(outputs, [{"labels": torch.tensor([3]), "masks": torch.ones(1, 8, 8)}])
    with pytest.raises(ValueError, match="one per image"):
        criterion(outputs, [])
    with pytest.raises(ValueError, match="num_classes \\+ 1"):
        _criterion(5)(outputs, [{"labels": torch.tensor([1]), "masks": torch.ones(1, 8, 8)}])
    with pytest.raises(ValueError, match="unknown loss names"):
        SetCriterion(3, weight_dict={"loss_bbox": 1.0})


def test_default_configuration_is_mask2formers():
    criterion = SetCriterion(133)
    assert criterion.weight_dict == {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    assert criterion.num_points == 12544 and criterion.oversample_ratio == 3.0
    assert criterion.importance_sample_ratio == 0.75
    assert criterion.eos_coef == 0.1
    assert list(criterion.state_dict()) == []  # no state: nothing to checkpoint or cast
    matcher = criterion.matcher
    assert (matcher.cost_class, matcher.cost_mask, matcher.cost_dice, matcher.num_points) == (2.0, 5.0, 5.0, 12544)


def test_uniform_points_approach_the_dense_loss():
    """With uniform points only, the point losses estimate the losses on the upsampled masks."""
    gen = torch.Generator().manual_seed(11)
    target = torch.zeros(1, 64, 64)
    target[0, 10:40, 20:60] = 1.0
    pred_masks = torch.randn(1, 1, 16, 16, generator=gen) * 2
    criterion = SetCriterion(
        1, HungarianMatcher(num_points=64), num_points=200_000, oversample_ratio=1.0, importance_sample_ratio=0.0
    )
    outputs = {"pred_logits": torch.zeros(1, 1, 2), "pred_masks": pred_masks}
    losses = criterion(outputs, [{"labels": torch.tensor([0]), "masks": target}], generator=gen)
    dense = F.interpolate(pred_masks, size=(64, 64), mode="bilinear", align_corners=False)[0]
    expected_bce = F.binary_cross_entropy_with_logits(dense, target)
    probs = dense.sigmoid()
    # Point counts scale the dice sums; the ratio is what the dense masks fix.
    expected_dice = 1 - 2 * (probs * target).sum() / (probs.sum() + target.sum())
    assert losses["loss_mask"].item() / 5.0 == pytest.approx(expected_bce.item(), rel=0.02)
    assert losses["loss_dice"].item() / 5.0 == pytest.approx(expected_dice.item(), rel=0.02)


def _distributed_rank(rank: int, store: str, result_dir: str) -> None:
    import torch.distributed as dist

    # A forked child must not enter the parent's OpenMP pool (it would hang): stay serial.
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        count = 3 if rank == 0 else 1
        targets = [{"labels": torch.zeros(count, dtype=torch.int64), "masks": torch.zeros(count, 16, 16)}]
        outputs = {"pred_logits": torch.zeros(1, 4, 2), "pred_masks": torch.zeros(1, 4, 8, 8)}
        losses = SetCriterion(1, HungarianMatcher(num_points=32), num_points=32)(outputs, targets)
        torch.save(losses["loss_mask"], f"{result_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_num_masks_is_averaged_over_ranks(tmp_path):
    import torch.multiprocessing as mp

    # fork: the children reuse the imported torch instead of paying ~10 s each to import it again.
    mp.start_processes(
        _distributed_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    # 4 masks over 2 ranks: each rank divides its sum of per-mask BCE (ln 2 each) by 2.
    for rank, count in ((0, 3), (1, 1)):
        loss = torch.load(tmp_path / f"rank{rank}.pt")
        assert loss.item() == pytest.approx(5.0 * count * math.log(2) / 2, rel=1e-6)


def test_bf16_module_and_outputs_give_the_float32_losses():
    """DeepSpeed's bf16 engine casts the criterion's buffer and hands it bf16 outputs."""
    outputs, targets = _batch(torch.Generator().manual_seed(12), 2.0, num_aux=1)
    reference = _criterion(4)(outputs, targets, generator=torch.Generator().manual_seed(13))
    half = {
        "pred_logits": outputs["pred_logits"].bfloat16(),
        "pred_masks": outputs["pred_masks"].bfloat16(),
        "aux_outputs": [{k: v.bfloat16() for k, v in aux.items()} for aux in outputs["aux_outputs"]],
    }
    criterion = _criterion(4).bfloat16()
    losses = criterion(half, targets, generator=torch.Generator().manual_seed(13))
    for name, value in reference.items():
        assert losses[name].dtype == torch.float32
        assert losses[name].item() == pytest.approx(value.item(), rel=0.02), name


def _reference_losses(criterion: SetCriterion, outputs: dict, targets: list[dict], generator) -> dict:
    """The criterion as it was before batching (per-image indexing, a host copy per matching),
    kept as the reference; only the order of the point draws follows the new criterion:
    every prediction's matching first, then every prediction's loss points."""
    from ecom2f.modeling.point_sampling import point_sample, uncertain_point_coords_with_randomness

    height = max(t["masks"].shape[-2] for t in targets)
    width = max(t["masks"].shape[-1] for t in targets)
    padded = [
        F.pad(t["masks"].float(), (0, width - t["masks"].shape[-1], 0, height - t["masks"].shape[-2])) for t in targets
    ]
    num_masks = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
    predictions = [outputs, *outputs.get("aux_outputs", [])]
    matched = [
        criterion.matcher(p, [{"labels": t["labels"], "masks": m} for t, m in zip(targets, padded)], generator)
        for p in predictions
    ]
    raw = {}
    for number, (prediction, indices) in enumerate(zip(predictions, matched)):
        suffix = "" if number == 0 else f"_{number - 1}"
        logits = prediction["pred_logits"].float()
        target_classes = torch.full(logits.shape[:2], criterion.num_classes, dtype=torch.int64)
        for image, (pred_idx, tgt_idx) in enumerate(indices):
            target_classes[image, pred_idx] = targets[image]["labels"][tgt_idx]
        class_weight = torch.ones(criterion.num_classes + 1)
        class_weight[-1] = criterion.eos_coef
        loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, class_weight)
        matched_pred = torch.cat([prediction["pred_masks"][i, src] for i, (src, _) in enumerate(indices)])
        if matched_pred.shape[0] == 0:
            loss_mask = loss_dice = prediction["pred_masks"].sum() * 0.0
        else:
            matched_target = torch.cat([padded[i][tgt] for i, (_, tgt) in enumerate(indices)])
            pred = matched_pred[:, None].float()
            coords = uncertain_point_coords_with_randomness(
                pred.detach(), criterion.num_points, criterion.oversample_ratio, criterion.importance_sample_ratio,
                generator,
            )
            point_targets = point_sample(matched_target[:, None], coords)[:, 0]
            point_logits = point_sample(pred, coords)[:, 0]
            loss_mask = sigmoid_ce_loss(point_logits, point_targets, num_masks)
            loss_dice = dice_loss(point_logits, point_targets, num_masks)
        raw.update({f"loss_ce{suffix}": loss_ce, f"loss_mask{suffix}": loss_mask, f"loss_dice{suffix}": loss_dice})
    return raw


@pytest.mark.parametrize("seed", [20, 21])
def test_batched_criterion_equals_the_per_image_reference(seed):
    outputs, targets = _batch(torch.Generator().manual_seed(seed), 1.0, num_aux=3)
    noise = torch.Generator().manual_seed(seed)
    for aux in outputs["aux_outputs"]:  # different predictions per layer
        aux["pred_masks"] = aux["pred_masks"] + torch.randn(aux["pred_masks"].shape, generator=noise)
    targets.append({"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 24, 32, dtype=torch.bool)})
    for key in ("pred_logits", "pred_masks"):
        outputs[key] = torch.cat([outputs[key], outputs[key][:1]])
        for aux in outputs["aux_outputs"]:
            aux[key] = torch.cat([aux[key], aux[key][:1]])
    criterion = _criterion(4)
    losses = criterion(outputs, targets, exit_weight=0.5, generator=torch.Generator().manual_seed(seed))
    reference = _reference_losses(criterion, outputs, targets, torch.Generator().manual_seed(seed))
    assert set(losses) == set(reference) | {"total"}
    for name, value in reference.items():
        base = name if name in criterion.weight_dict else name.rsplit("_", 1)[0]
        assert torch.equal(losses[name], value * (criterion.weight_dict[base] * 0.5)), name


def test_label_values_are_read_only_on_the_host():
    criterion = _criterion(3)
    bad = [{"labels": torch.tensor([0, 3]), "masks": torch.ones(2, 8, 8)}]
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\].*max 3"):
        criterion.check_targets(bad)
    # Labels already on a device are not read (that would stall it): only shapes are checked.
    on_device = [{"labels": torch.tensor([0, 3], device="meta"), "masks": torch.ones(2, 8, 8, device="meta")}]
    criterion.check_targets(on_device)
    with pytest.raises(ValueError, match=r"must be \[K\] and \[K, H, W\]"):
        criterion.check_targets([{"labels": torch.zeros(1, device="meta"), "masks": torch.ones(2, 8, 8, device="meta")}])
