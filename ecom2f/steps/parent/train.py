"""Step 1: train the parent, a model whose shared decoder works after any encoder depth.

:func:`train_parent` is the loop one training worker runs: Ray Train calls it on every
worker (see :mod:`ecom2f.steps.parent.job`), tests call it directly with a
:class:`~ecom2f.steps.parent.session.LocalSession`. Each iteration draws an exit k (the same on
every rank), runs the encoder to depth k, and scales the loss by alpha_k; DeepSpeed holds
the optimizer state, clips the full-model gradient norm and accumulates; AdamW steps only
the parameters the exit reached.
"""

from __future__ import annotations

import tempfile

import torch

from ecom2f.config import Config
from ecom2f.engine.exits import ExitSampler
from ecom2f.modeling import build_model, normalize_batch
from ecom2f.steps.parent.build import ParentTrainer, build_trainer
from ecom2f.steps.parent.loader import to_device, training_batches
from ecom2f.steps.parent.progress import LossWindow, window_loss_metrics
from ecom2f.steps.parent.session import TrainingSession
from ecom2f.steps.parent.state import TrainState, restore_newest_intact, save_checkpoint, seal_checkpoint
from ecom2f.storage.layout import PARENT_WEIGHTS


def train_parent(config: Config, session: TrainingSession, dataset, *, build=build_model, fault=None) -> dict:
    """Trains (or resumes) the parent until ``solver.max_iter``; returns the last metrics.

    Args:
        config: the validated run configuration.
        session: rank, checkpoints and metric sink (Ray Train or local).
        dataset: the training dataset of samples (``ecom2f.data``), already augmented.
        build: model constructor (``ecom2f.modeling.build_model``).
        fault: tests only: ``fault(step, rank)`` is called before each step and may raise.
    """
    trainer = build_trainer(config, session.rank, session.device, build)
    state = restore_newest_intact(trainer.engine, checkpoint_candidates(session), session.rank, session.world_size,
                                  config.parent.zero_stage, config.seed, session.device)
    batches = training_batches(config, dataset, session.rank, session.world_size, session.device,
                               state.samples_consumed)
    exit_sampler = ExitSampler(config.parent_exits, config.parent.exit_weights, seed=config.seed)
    images_per_step = config.batch_size_per_worker * session.world_size * config.solver.gradient_accumulation_steps
    window, metrics = LossWindow(), {}
    for step in range(trainer.engine.global_steps, config.solver.max_iter):
        if fault is not None:
            fault(step, session.rank)
        exits = config.parent_exits if config.parent.all_exits else [exit_sampler(step)]
        window.add(train_step(trainer, batches, exits, config.solver.gradient_accumulation_steps), images_per_step)
        state.samples_consumed += images_per_step
        done = step + 1
        checkpoint = done % config.parent.checkpoint_period == 0 or done == config.solver.max_iter
        if checkpoint or done % config.parent.log_period == 0:
            metrics = step_metrics(window, state, trainer, done, config)
            if checkpoint:
                checkpoint_and_report(trainer, state, session, metrics, final=done == config.solver.max_iter)
            else:
                session.report(metrics)
    return metrics


def checkpoint_candidates(session: TrainingSession):
    """Local folders of the session's checkpoints, newest first: the latest, then (lazily, only when it is
    damaged) the earlier ones a session offers through ``earlier_checkpoints()``."""
    latest = session.latest_checkpoint()
    if latest is None:
        return
    yield latest
    earlier = getattr(session, "earlier_checkpoints", None)
    if earlier is not None:
        yield from earlier()


def train_step(trainer: ParentTrainer, batches, exits: list[int], accumulation: int) -> dict[int, torch.Tensor]:
    """One optimizer step over ``accumulation`` micro-batches; the per-exit losses stay on the device."""
    trainer.optimizer.set_exit(max(exits))
    device = trainer.model.device
    losses: dict[int, torch.Tensor] = {}
    for _ in range(accumulation):
        batch = next(batches)
        trainer.criterion.check_targets(batch["targets"])  # on the host, where reading labels costs no sync
        pixels = normalize_batch(batch["images"], batch["padding_mask"], trainer.model)
        out = trainer.engine(pixels, to_device(batch, device), exits)
        trainer.engine.backward(out["total"])
        trainer.engine.step()  # DeepSpeed steps the optimizer at the accumulation boundary only
        for k in exits:
            losses[k] = losses[k] + out[k].detach() / accumulation if k in losses else out[k].detach() / accumulation
    return losses


def step_metrics(window: LossWindow, state: TrainState, trainer: ParentTrainer, step: int, config: Config) -> dict:
    """What a report says after ``step`` iterations; reading the window is the only device sync."""
    stats = window.read_stats(step)
    for k, (total, count) in stats.sums.items():
        state.exit_loss_sums[k] = state.exit_loss_sums.get(k, 0.0) + total
        state.exit_counts[k] = state.exit_counts.get(k, 0) + count
    return {
        "step": step,
        "max_iter": config.solver.max_iter,
        "lr": max(trainer.engine.get_lr()),
        "images_per_s": stats.images_per_s,
        "samples_consumed": state.samples_consumed,
        "resumed_from": state.resumed_from,
        "world_size": state.world_size,
        "zero_stage": state.zero_stage,
        "precision": trainer.precision,
        **window_loss_metrics(stats, config.parent.alpha),
        **{f"mean_loss_exit_{k}": state.exit_loss_sums[k] / state.exit_counts[k] for k in sorted(state.exit_counts)},
    }


def checkpoint_and_report(trainer: ParentTrainer, state: TrainState, session: TrainingSession, metrics: dict,
                          final: bool) -> None:
    """Every rank writes its part of the checkpoint; the last one also holds the fp32 weights."""
    with tempfile.TemporaryDirectory(prefix="ecom2f-ckpt-") as staging:
        save_checkpoint(trainer.engine, state, session.rank, session.device, staging)
        if final and session.rank == 0:
            weights = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
            torch.save(weights, f"{staging}/{PARENT_WEIGHTS}")  # copied to <run>/parent/ by the job
        seal_checkpoint(staging, session.rank)
        session.report(metrics, checkpoint_dir=staging)
