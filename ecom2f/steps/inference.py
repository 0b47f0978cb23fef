"""Inside a model actor (step 2, the evaluation): the parent on the actor's device, the network's
precision, and a clock that waits for the device."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch

from ecom2f import storage
from ecom2f.config.model import ModelConfig
from ecom2f.errors import MissingStepError
from ecom2f.modeling.early_exit_mask2former import EarlyExitMask2Former
from ecom2f.modeling.weights import load_parent_weights

__all__ = ["PRECISIONS", "DeviceClock", "load_parent", "network_precision", "require_parent_weights"]

PRECISIONS = ("fp32", "bf16")


def load_parent(model_config: ModelConfig, weights_uri: str,
                device: torch.device | str = "cpu") -> EarlyExitMask2Former:
    """The parent of step 1 (``weights_uri``: ``RunLayout.parent_weights``, local or s3://) on ``device``,
    in eval mode.

    Raises MissingStepError when the file is not there, ValueError when its weights do not
    fit ``model_config`` (:func:`ecom2f.modeling.weights.load_parent_weights`).
    """
    require_parent_weights(weights_uri)
    model = load_parent_weights(model_config, storage.read_bytes(weights_uri), origin=weights_uri)
    return model.to(device).eval()


def require_parent_weights(weights_uri: str) -> None:
    """Raises MissingStepError, saying to run step 1, when ``weights_uri`` does not exist (a job
    checks it before it starts any actor)."""
    if not storage.exists(weights_uri):
        raise MissingStepError(f"parent weights {weights_uri} do not exist; run step 1 (ecom2f train-parent) first")


def network_precision(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The network's autocast: bf16 under ``torch.autocast(device.type, torch.bfloat16)``, fp32 none.

    Only the forward pass goes under it; callers cast outputs to fp32 before post-processing
    and losses.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {PRECISIONS}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class DeviceClock:
    """``clock()`` after the device's queued work is done: on CUDA it synchronises first, so a
    difference of two readings is the time the device took, not the time to queue kernels.

    ``clock`` is the time source (``time.perf_counter``); tests give a counter instead.
    """

    def __init__(self, device: torch.device, clock: Callable[[], float] = time.perf_counter) -> None:
        self.device = device
        self.clock = clock

    def __call__(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self.clock()
