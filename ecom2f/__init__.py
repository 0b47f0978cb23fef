"""ecom2f: ECO-M2F (early-exit transformer encoders for Mask2Former) on Ray."""

__version__ = "0.1.0"
