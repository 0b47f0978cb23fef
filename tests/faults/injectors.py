"""Fault injectors for tests: callables that production code runs through its generic hooks
(``fault=`` of step 2's model stage, ``ecom2f.steps.depth.stages.Fault``; ``fault=`` of step 1's
loop, called as ``fault(step, rank)`` before each step).

Ray workers do not import test modules: a test that sends an injector to Ray actors first calls
:func:`pickle_by_value`, so the injector's class travels with it instead of by reference.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["BlockOnce", "BlockOnceAtIndex", "FailOnce", "FailOnceAtIndex", "alive_actor_pids", "pickle_by_value"]


@dataclass(frozen=True)
class FailOnce:
    """Step 1: rank ``rank`` raises before iteration ``step`` (0-based), the first time only.

    ``marker`` (a path every worker can see) records that the failure happened.
    """

    step: int
    marker: str
    rank: int = 1

    def __call__(self, step: int, rank: int) -> None:
        if step == self.step and rank == self.rank and not os.path.exists(self.marker):
            with open(self.marker, "w") as f:
                f.write(str(step))
            raise RuntimeError(f"injected failure on rank {rank} at step {step}")


@dataclass(frozen=True)
class FailOnceAtIndex:
    """Fails the batch holding dataset position ``index``, the first time only.

    ``marker`` is a file that remembers the failure across processes and actor restarts: the
    injector raises while it is absent, and creates it as it does.
    """

    index: int
    marker: str

    def __call__(self, indices) -> None:
        """``indices``: the batch's dataset positions ``[n]``."""
        if self.index in {int(i) for i in indices} and not os.path.exists(self.marker):
            with open(self.marker, "w") as f:
                f.write(str(self.index))
            raise RuntimeError(f"injected failure on the batch holding image index {self.index}")


@dataclass(frozen=True)
class BlockOnce:
    """Step 1: every call appends ``step rank pid`` to ``folder/steps.log`` (which process started which
    iteration); rank ``rank`` then stops before iteration ``step`` (0-based), the first time only, writes
    its pid to ``folder/blocked`` and sleeps, so a test can kill it (SIGKILL) at a known point."""

    step: int
    folder: str
    rank: int = 1
    sleep_s: float = 600.0

    def __call__(self, step: int, rank: int) -> None:
        import time

        with open(os.path.join(self.folder, "steps.log"), "a") as f:
            f.write(f"{step} {rank} {os.getpid()}\n")
        blocked = os.path.join(self.folder, "blocked")
        if step == self.step and rank == self.rank and not os.path.exists(blocked):
            with open(blocked + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(blocked + ".tmp", blocked)
            time.sleep(self.sleep_s)


@dataclass(frozen=True)
class BlockOnceAtIndex:
    """Step 2: the model actor that gets the batch holding dataset position ``index`` writes its pid to
    ``marker`` and sleeps, the first time only, so a test can kill the actor mid-shard."""

    index: int
    marker: str
    sleep_s: float = 600.0

    def __call__(self, indices) -> None:
        import time

        if self.index in {int(i) for i in indices} and not os.path.exists(self.marker):
            with open(self.marker + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(self.marker + ".tmp", self.marker)
            time.sleep(self.sleep_s)


def alive_actor_pids(class_name_part: str) -> dict[int, str]:
    """Pid -> class name of every ALIVE actor whose class name contains ``class_name_part``, from the
    GCS actor table (Ray's state; ``ray.util.state`` would need the dashboard, which the test
    clusters run without)."""
    import ray._private.state

    return {int(info["Pid"]): info["ActorClassName"]
            for info in ray._private.state.actors(actor_state_name="ALIVE").values()
            if class_name_part in info["ActorClassName"]}


def pickle_by_value() -> None:
    """Registers this module with Ray's cloudpickle for by-value pickling (idempotent), so that
    injectors sent to Ray actors need no ``tests`` package on the workers."""
    import sys

    import ray.cloudpickle

    if __name__ not in ray.cloudpickle.list_registry_pickle_by_value():
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
