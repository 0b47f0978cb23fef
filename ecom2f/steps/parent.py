"""Step 1: train the parent, a model whose shared decoder works after any encoder depth.

:func:`train_parent` is the loop one training worker runs: Ray Train calls it on every
worker (see ``ray_jobs/train_parent.py``), tests call it directly with a
:class:`~ecom2f.steps.session.LocalSession`. Each iteration draws an exit k (the same on
every rank), runs the encoder to depth k, and scales the loss by alpha_k; DeepSpeed
(ZeRO 1/2) holds the optimizer state, clips the full-model gradient norm and accumulates.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Iterator
from functools import partial

import torch
from torch import nn

from ecom2f.config import Config
from ecom2f.engine.deepspeed_config import build_deepspeed_config, disable_cpu_shm_comm_build
from ecom2f.engine.exits import ExitSampler, exit_loss_weight
from ecom2f.engine.lr_schedule import lr_multiplier
from ecom2f.engine.param_groups import build_param_groups
from ecom2f.engine.sampler import ResumableShardedSampler
from ecom2f.modeling import EarlyExitMask2Former, build_model
from ecom2f.modeling.criterion import SetCriterion
from ecom2f.modeling.matcher import HungarianMatcher
from ecom2f.steps.parent_init import initialize_parent
from ecom2f.steps.session import TrainingSession

log = logging.getLogger(__name__)

# Tag of the DeepSpeed state inside every checkpoint folder.
DEEPSPEED_TAG = "state"
WEIGHTS_FILE = "model_final.pth"


class ParentObjective(nn.Module):
    """Model + criterion as one module, so DeepSpeed's engine runs (and hooks) both.

    ``forward(pixels [N, 3, H, W], targets, depth, exit_weight) -> losses`` (with ``total``).
    """

    def __init__(self, model: EarlyExitMask2Former, criterion: SetCriterion):
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, pixels: torch.Tensor, targets: list[dict], depth: int, exit_weight: float) -> dict:
        return self.criterion(self.model.forward_raw(pixels, depth=depth), targets, exit_weight=exit_weight)


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


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto`` is bf16 on GPU and fp32 on CPU."""
    if requested == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if requested in ("bf16", "fp16") and device.type != "cuda":
        raise ValueError(f"solver.precision {requested!r} needs GPU workers; use 'fp32' or 'auto' on CPU")
    return requested


def normalize_batch(images: torch.Tensor, padding_mask: torch.Tensor, model: EarlyExitMask2Former) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` padded by the collate -> normalised pixels with zero padding.

    Mask2Former pads with 0 after normalising (detectron2's ImageList); the collate pads
    the uint8 images, so the padding is reset here.
    """
    pixels = (images.to(model.device, torch.float32) - model.pixel_mean) / model.pixel_std
    return pixels.masked_fill(padding_mask.to(model.device)[:, None], 0.0)


def _batches(loader) -> Iterator[dict]:
    while True:  # the sampler is endless; re-enter only if a loader is exhausted anyway
        yield from loader


def _deepspeed_config(config: Config, precision: str) -> dict:
    clip = config.solver.clip_gradients
    if clip.enabled and clip.type != "full_model":
        raise ValueError(
            f"solver.clip_gradients.type {clip.type!r} is not supported with DeepSpeed, which clips the "
            "full-model norm; use 'full_model' (Mask2Former's setting)"
        )
    return build_deepspeed_config(
        micro_batch_per_worker=config.batch_size_per_worker,
        gradient_accumulation_steps=config.solver.gradient_accumulation_steps,
        zero_stage=config.parent.zero_stage,
        precision=precision,
        gradient_clipping=clip.value if clip.enabled else None,
    )


def train_parent(config: Config, session: TrainingSession, dataset, *, build=build_model, fault=None) -> dict:
    """Trains (or resumes) the parent until ``solver.max_iter``; returns the last metrics.

    Args:
        config: the validated run configuration.
        session: rank, checkpoints and metric sink (Ray Train or local).
        dataset: the training dataset of samples (``ecom2f.data``), already augmented.
        build: model constructor (``ecom2f.modeling.build_model``).
        fault: tests only: ``fault(step, rank)`` is called before each step and may raise.
    """
    import deepspeed

    device = session.device
    precision = resolve_precision(config.solver.precision, device)
    torch.manual_seed(config.seed + session.rank)

    model = build(config.model)
    initialize_parent(model, config)
    model = model.to(device)
    objective = ParentObjective(model, build_criterion(config)).to(device)
    groups = build_param_groups(
        model, base_lr=config.solver.base_lr, weight_decay=config.solver.weight_decay,
        backbone_multiplier=config.solver.backbone_multiplier, weight_decay_norm=config.solver.weight_decay_norm,
        weight_decay_embed=config.solver.weight_decay_embed,
    )
    optimizer = torch.optim.AdamW(groups, lr=config.solver.base_lr)
    schedule = config.solver.lr_schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        partial(lr_multiplier, max_iter=config.solver.max_iter, schedule=schedule.name, steps=schedule.steps,
                gamma=schedule.gamma, power=schedule.power, warmup_iters=config.solver.warmup_iters,
                warmup_factor=config.solver.warmup_factor),
    )
    if device.type == "cpu":
        disable_cpu_shm_comm_build()
    engine, _, _, _ = deepspeed.initialize(
        model=objective, optimizer=optimizer, lr_scheduler=scheduler, config=_deepspeed_config(config, precision)
    )

    state = {"samples_consumed": 0, "exit_loss_sums": {}, "exit_counts": {}}
    checkpoint = session.latest_checkpoint()
    if checkpoint is not None:
        _, client_state = engine.load_checkpoint(checkpoint, tag=DEEPSPEED_TAG)
        client_state = client_state or {}
        # DeepSpeed adds its own metadata to the client state; keep only ours.
        state.update({key: client_state[key] for key in state})
        state["rng_cpu"] = client_state["rng_cpu"]
        if "rng_cuda" in client_state:
            state["rng_cuda"] = client_state["rng_cuda"]
        # The global RNG drives augmentation and the criterion's point sampling: restoring
        # it makes a resumed run repeat exactly what an uninterrupted one would do.
        torch.set_rng_state(state.pop("rng_cpu"))
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state.pop("rng_cuda"))
        log.info("resumed from %s at step %d", checkpoint, engine.global_steps)
    resumed_from = engine.global_steps

    from ecom2f.data import collate_samples

    sampler = ResumableShardedSampler(len(dataset), session.rank, session.world_size, seed=config.seed,
                                      start=state["samples_consumed"])
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size_per_worker, sampler=sampler,
        collate_fn=partial(collate_samples, with_id_maps=False),
        num_workers=config.data.loader_workers, persistent_workers=config.data.loader_workers > 0,
        # Its own generator: creating the iterator must not draw from the global RNG, which
        # a resumed run restores (see above).
        generator=torch.Generator().manual_seed(config.seed + session.rank),
    )
    exit_sampler = ExitSampler(config.parent_exits, config.parent.exit_weights, seed=config.seed)
    batches = _batches(loader)
    accumulation = config.solver.gradient_accumulation_steps
    metrics: dict = {}
    window_start, window_images = time.perf_counter(), 0

    for step in range(engine.global_steps, config.solver.max_iter):
        if fault is not None:
            fault(step, session.rank)
        exits = config.parent_exits if config.parent.all_exits else [exit_sampler(step)]
        step_losses = {}
        for _ in range(accumulation):
            batch = next(batches)
            pixels = normalize_batch(batch["images"], batch["padding_mask"], model)
            targets = [{k: v.to(device) for k, v in t.items()} for t in batch["targets"]]
            total = 0.0
            for k in exits:
                losses = engine(pixels, targets, k, exit_loss_weight(k, config.parent.alpha))
                total = total + losses["total"]
                step_losses[k] = step_losses.get(k, 0.0) + float(losses["total"].detach()) / accumulation
            engine.backward(total)
            engine.step()
            state["samples_consumed"] += pixels.shape[0]
            window_images += pixels.shape[0] * session.world_size
        if not all(math.isfinite(v) for v in step_losses.values()):
            raise FloatingPointError(f"parent training diverged at step {step}: losses per exit {step_losses}")
        for k, value in step_losses.items():
            state["exit_loss_sums"][k] = state["exit_loss_sums"].get(k, 0.0) + value
            state["exit_counts"][k] = state["exit_counts"].get(k, 0) + 1

        done = step + 1
        last = done == config.solver.max_iter
        if done % config.parent.log_period == 0 or done % config.parent.checkpoint_period == 0 or last:
            elapsed = time.perf_counter() - window_start
            metrics = {
                "step": done,
                "lr": max(engine.get_lr()),
                "images_per_s": window_images / max(elapsed, 1e-9),
                "samples_consumed": state["samples_consumed"],
                "resumed_from": resumed_from,
                **{f"loss_exit_{k}": v for k, v in step_losses.items()},
                **{f"mean_loss_exit_{k}": state["exit_loss_sums"][k] / state["exit_counts"][k]
                   for k in state["exit_counts"]},
            }
            window_start, window_images = time.perf_counter(), 0
            if done % config.parent.checkpoint_period == 0 or last:
                with tempfile.TemporaryDirectory(prefix="ecom2f-ckpt-") as staging:
                    rng = {"rng_cpu": torch.get_rng_state()}
                    if device.type == "cuda":
                        rng["rng_cuda"] = torch.cuda.get_rng_state(device)
                    engine.save_checkpoint(staging, tag=DEEPSPEED_TAG, client_state={**state, **rng})
                    if last and session.rank == 0:
                        torch.save(model.state_dict(), f"{staging}/{WEIGHTS_FILE}")
                    session.report(metrics, checkpoint_dir=staging)
            else:
                session.report(metrics)
    return metrics
