"""The parent's weights (the state dict step 1 saves) into a model of the configured shape.

One strict loader for every user of a trained parent: a state dict that does not fit the
configured model fails with the keys and shapes that differ, not half-loaded. It reads bytes,
a local file or a state dict; remote URIs are the caller's to read (``ecom2f.storage``).
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping

import torch

from ecom2f.config.model import ModelConfig
from ecom2f.modeling.early_exit_mask2former import EarlyExitMask2Former, build_model

__all__ = ["load_parent_weights", "weights_mismatch"]

WeightsSource = bytes | str | os.PathLike | Mapping[str, torch.Tensor]

_SHOWN = 3  # keys listed per kind of mismatch; the counts say how many there are


def load_parent_weights(config: ModelConfig, source: WeightsSource, *,
                        origin: str | None = None) -> EarlyExitMask2Former:
    """``build_model(config)`` with the weights of ``source``, in eval mode on the CPU.

    Args:
        config: the model section the weights were trained with.
        source: the bytes of a ``torch.save``'d state dict, a local path to one, or the state
            dict itself (``{name: tensor}``).
        origin: where the weights came from (e.g. their s3:// URI), for messages.

    Raises:
        FileNotFoundError: ``source`` is a path with no file.
        ValueError: ``source`` holds no state dict, or one whose keys or shapes do not fit the
            model ``config`` describes (the message lists them).
    """
    label = origin or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "given")
    state = _state_dict(source, label)
    model = build_model(config)
    mismatch = weights_mismatch(model.state_dict(), state)
    if mismatch:
        raise ValueError(
            f"the weights {label} do not fit the configured model: {mismatch}; were they trained with another "
            "model section? Use the model section of the run that trained them"
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


def weights_mismatch(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str:
    """What keeps ``state`` from loading strictly where ``expected`` is a model's state dict:
    missing and unexpected keys, shape mismatches (a few of each, with counts); "" when it fits."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{key} {tuple(state[key].shape)} where the model has {tuple(expected[key].shape)}"
              for key in sorted(set(state) & set(expected)) if tuple(state[key].shape) != tuple(expected[key].shape)]
    parts = [f"{len(found)} {kind} ({', '.join(found[:_SHOWN])}{', ...' if len(found) > _SHOWN else ''})"
             for kind, found in (("missing keys", missing), ("unexpected keys", unexpected),
                                 ("shape mismatches", shapes)) if found]
    return "; ".join(parts)


def _state_dict(source: WeightsSource, label: str) -> Mapping[str, torch.Tensor]:
    if isinstance(source, Mapping):
        state = source
    else:
        if isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
            raise FileNotFoundError(f"no weights file at {label} (a local path; read remote URIs with "
                                    "ecom2f.storage.read_bytes and pass the bytes)")
        stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
        try:
            state = torch.load(stream, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
            raise ValueError(f"the weights {label} are not a torch.save'd state dict ({error})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"the weights {label} hold a {type(state).__name__}, not a state dict of tensors "
                         "(as step 1 saves the parent)")
    return state
