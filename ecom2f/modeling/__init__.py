"""Mask2Former with an early-exit pixel-decoder encoder, a shared decoder and the ECO-M2F gate.

Knows nothing of Ray, DeepSpeed or S3.
"""

from ecom2f.config.model import ModelConfig
from ecom2f.modeling.early_exit_mask2former import EarlyExitMask2Former, build_model

__all__ = ["ModelConfig", "EarlyExitMask2Former", "build_model"]
