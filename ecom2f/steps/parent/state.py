"""What a step-1 checkpoint holds besides DeepSpeed's own state, and how a run resumes from it.

DeepSpeed saves the weights, the AdamW state, the LR schedule and the step counter. Rank 0
writes ``train_state.json``: what all ranks share (the global count of samples consumed,
the per-exit loss sums, the world size and ZeRO stage the checkpoint was taken with), small
enough to check before DeepSpeed loads anything. The RNG streams differ per rank (each rank
augments its own images), so every rank also writes its own ``rank_<r>.pt``; Ray Train
merges the ranks' folders into one checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import torch

from ecom2f.errors import UserError

log = logging.getLogger(__name__)

# Tag of the DeepSpeed state inside every checkpoint folder.
DEEPSPEED_TAG = "state"
TRAIN_STATE_FILE = "train_state.json"


def rank_state_file(rank: int) -> str:
    return f"rank_{rank}.pt"


@dataclasses.dataclass
class TrainState:
    """The loop's own progress; ``samples_consumed`` counts images of all ranks together."""

    world_size: int
    zero_stage: int
    samples_consumed: int = 0
    exit_loss_sums: dict[int, float] = dataclasses.field(default_factory=dict)
    exit_counts: dict[int, int] = dataclasses.field(default_factory=dict)
    resumed_from: int = 0

    def to_json(self) -> str:
        fields = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        del fields["resumed_from"]
        return json.dumps(fields, indent=2)

    @classmethod
    def from_json(cls, text: str, resumed_from: int) -> TrainState:
        saved = json.loads(text)
        return cls(
            world_size=int(saved["world_size"]), zero_stage=int(saved["zero_stage"]),
            samples_consumed=int(saved["samples_consumed"]),
            exit_loss_sums={int(k): float(v) for k, v in saved["exit_loss_sums"].items()},
            exit_counts={int(k): int(v) for k, v in saved["exit_counts"].items()},
            resumed_from=resumed_from,
        )


class ResumeError(UserError, RuntimeError):
    """A checkpoint this run cannot continue from; the message says what to change."""


def check_resumable(saved_world_size: int, saved_zero_stage: int, world_size: int, zero_stage: int,
                    where: str) -> None:
    """ZeRO 1/2 partition the optimizer state by rank, so their checkpoints need the same world size.

    Stage 0 keeps one whole copy (rank 0 writes it), which any number of workers can load.
    """
    if saved_zero_stage != zero_stage:
        raise ResumeError(
            f"{where} was written with parent.zero_stage={saved_zero_stage}, this run has {zero_stage}: "
            f"set parent.zero_stage={saved_zero_stage} to resume it, or start a new storage.run"
        )
    if zero_stage != 0 and saved_world_size != world_size:
        raise ResumeError(
            f"{where} was written by {saved_world_size} workers with ZeRO stage {zero_stage}, whose optimizer "
            f"state is split by rank; this run has {world_size} workers. Resume with ray.num_workers="
            f"{saved_world_size}, or train with parent.zero_stage=0 (resumable on any number of workers)"
        )


def save_checkpoint(engine, state: TrainState, rank: int, device: torch.device, directory: str) -> None:
    """Every rank calls this (ZeRO writes per-rank shards); rank 0 also writes DeepSpeed's model file."""
    engine.save_checkpoint(directory, tag=DEEPSPEED_TAG)
    if rank == 0:
        with open(os.path.join(directory, TRAIN_STATE_FILE), "w") as f:
            f.write(state.to_json())
    rng = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    torch.save(rng, os.path.join(directory, rank_state_file(rank)))


def restore_checkpoint(engine, directory: str | None, rank: int, world_size: int, zero_stage: int,
                       seed: int, device: torch.device) -> TrainState:
    """The state to continue from (a fresh one without a checkpoint); restores weights, optimizer and RNG.

    The returned state describes this run (its world size); the checkpoint's was checked
    against it first.
    """
    if directory is None:
        return TrainState(world_size=world_size, zero_stage=zero_stage)
    path = os.path.join(directory, TRAIN_STATE_FILE)
    if not os.path.exists(path):
        raise ResumeError(f"the checkpoint {directory} has no {TRAIN_STATE_FILE} (written by an older ecom2f); "
                          "start a new storage.run")
    with open(path) as f:
        saved = TrainState.from_json(f.read(), resumed_from=0)
    check_resumable(saved.world_size, saved.zero_stage, world_size, zero_stage, f"the checkpoint {directory}")
    engine.load_checkpoint(directory, tag=DEEPSPEED_TAG)
    state = dataclasses.replace(saved, world_size=world_size, resumed_from=engine.global_steps)
    _restore_rng(directory, rank, seed, state.samples_consumed, device)
    log.info("rank %d resumed from %s at step %d (%d samples consumed)", rank, directory, engine.global_steps,
             state.samples_consumed)
    return state


def _restore_rng(directory: str, rank: int, seed: int, samples_consumed: int, device: torch.device) -> None:
    """This rank's own RNG streams; a rank the checkpoint did not have gets a seed of its own."""
    path = os.path.join(directory, rank_state_file(rank))
    if not os.path.exists(path):
        torch.manual_seed(seed * 1_000_003 + rank * 7919 + samples_consumed)
        log.info("rank %d has no RNG state in %s (the run grew): seeded afresh", rank, directory)
        return
    rng = torch.load(path, map_location="cpu", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
