"""What a step-1 checkpoint holds besides DeepSpeed's own state, and how a run resumes from it.

DeepSpeed saves the weights, the AdamW state, the LR schedule and the step counter. Rank 0
writes ``train_state.json``: what all ranks share (the global count of samples consumed,
the per-exit loss sums, the world size and ZeRO stage the checkpoint was taken with), small
enough to check before DeepSpeed loads anything. The RNG streams differ per rank (each rank
augments its own images), so every rank also writes its own ``rank_<r>.pt``; Ray Train
merges the ranks' folders into one checkpoint.

Every rank seals its part last (:func:`seal_checkpoint`): ``checksums_rank_<r>.json`` lists the
size and SHA-256 of each file it wrote. A restore checks them first (:func:`checkpoint_problems`):
a checkpoint truncated or altered in storage, or missing a rank's part, is not loaded, and the
run falls back to the one before (:func:`restore_newest_intact`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable

import torch

from ecom2f.errors import UserError
from ecom2f.storage.checksums import file_digest

log = logging.getLogger(__name__)

# Tag of the DeepSpeed state inside every checkpoint folder.
DEEPSPEED_TAG = "state"
TRAIN_STATE_FILE = "train_state.json"
# train_state.json's "format": 2 = every rank sealed its part with a checksums file.
SEALED_FORMAT = 2


def rank_state_file(rank: int) -> str:
    return f"rank_{rank}.pt"


def checksums_file(rank: int) -> str:
    return f"checksums_rank_{rank}.json"


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
        return json.dumps({**fields, "format": SEALED_FORMAT}, indent=2)

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


def seal_checkpoint(directory: str, rank: int) -> None:
    """Written last by every rank: the size and SHA-256 of each file this rank put in ``directory``."""
    own = checksums_file(rank)
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, directory).replace(os.sep, "/")
            if relative != own:
                files[relative] = file_digest(path)
    with open(os.path.join(directory, own), "w") as f:
        json.dump(files, f, indent=1, sort_keys=True)


def checkpoint_problems(directory: str) -> list[str]:
    """Why the (merged) checkpoint folder cannot be trusted, or ``[]``: the train state unreadable, a
    rank's checksums missing, a file missing or different from its checksum. A checkpoint of an
    ecom2f before checksums (no ``format`` in its train state) is trusted as it is."""
    try:
        with open(os.path.join(directory, TRAIN_STATE_FILE)) as f:
            saved = json.load(f)
        world_size = int(saved["world_size"])
    except FileNotFoundError:
        return [f"no {TRAIN_STATE_FILE}"]
    except (ValueError, KeyError, TypeError) as error:
        return [f"{TRAIN_STATE_FILE} is unreadable ({type(error).__name__})"]
    if int(saved.get("format", 1)) < SEALED_FORMAT:
        return []
    problems = []
    for rank in range(world_size):
        try:
            with open(os.path.join(directory, checksums_file(rank))) as f:
                listed = json.load(f)
        except (OSError, ValueError):
            problems.append(f"{checksums_file(rank)} is missing or unreadable")
            continue
        for relative, expected in sorted(listed.items()):
            path = os.path.join(directory, relative)
            if not os.path.isfile(path):
                problems.append(f"{relative} is missing")
            elif file_digest(path) != expected:
                problems.append(f"{relative} differs from its checksum ({os.path.getsize(path)} of "
                                f"{expected['bytes']} bytes)")
    return problems


def restore_newest_intact(engine, candidates: Iterable[str], rank: int, world_size: int, zero_stage: int,
                          seed: int, device: torch.device) -> TrainState:
    """Restores the first intact checkpoint of ``candidates`` (local folders, newest first); a fresh
    state when there is none at all. Raises :class:`ResumeError` when every checkpoint is damaged:
    starting over silently would throw the run's training away."""
    rejected = []
    for directory in candidates:
        problems = checkpoint_problems(directory)
        if not problems:
            if rejected:
                log.warning("rank %d falls back to %s: the newer checkpoint(s) are damaged: %s", rank, directory,
                            "; ".join(rejected))
            return restore_checkpoint(engine, directory, rank, world_size, zero_stage, seed, device)
        rejected.append(f"{directory}: {', '.join(problems[:3])}")
        log.warning("rank %d: checkpoint %s is damaged (%s); trying the one before", rank, directory,
                    ", ".join(problems[:3]))
    if rejected:
        raise ResumeError(f"every step-1 checkpoint is damaged ({'; '.join(rejected)}); delete the run's "
                          "parent/train/ folder to train from the start, or restore the files")
    return restore_checkpoint(engine, None, rank, world_size, zero_stage, seed, device)


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
