"""Mask2Former with an early-exit pixel-decoder encoder, a shared decoder and the ECO-M2F gate.

Knows nothing of Ray, DeepSpeed or S3: weights come in as bytes, a local path or a state dict.
"""

from ecom2f.config.model import ModelConfig
from ecom2f.modeling.criterion import build_criterion
from ecom2f.modeling.early_exit_mask2former import EarlyExitMask2Former, build_model
from ecom2f.modeling.preprocessing import normalize_batch
from ecom2f.modeling.weights import load_parent_weights

__all__ = [
           "EarlyExitMask2Former",
           "ModelConfig",
           "build_criterion",
           "build_model",
           "load_parent_weights",
           "normalize_batch",
]
