"""The datasets a run's configuration names, generated first where they are synthetic."""

from __future__ import annotations

import os

from ecom2f.config import Config
from ecom2f.data import build_dataset, build_transform, data_root


def ensure_synthetic_data(config: Config) -> None:
    """Generates ``<data.root>/synthetic/{train,val}`` once, when ``data.synthetic`` asks for it."""
    synthetic = config.data.synthetic
    if synthetic is None:
        return
    from ecom2f.data.synthetic import generate

    root = config.data.root or data_root()
    if root.startswith("s3://"):
        raise ValueError(f"data.synthetic generates local files; data.root {root!r} must be a local folder")
    for split, count, seed in (("train", synthetic.num_train, synthetic.seed),
                               ("val", synthetic.num_val, synthetic.seed + 1)):
        out = os.path.join(root, "synthetic", split)
        if not os.path.exists(os.path.join(out, "panoptic.json")):  # written last: its presence means complete
            generate(out, num_images=count, image_size=synthetic.image_size, seed=seed)


def training_dataset(config: Config):
    """The augmented training split (``data.train``) with the run's bad-input policy."""
    return build_dataset(
        config.data.train,
        strict=config.data.strict,
        max_bad_fraction=config.data.max_bad_fraction,
        transform=build_transform(config.data.recipe, **config.data.train_transform_kwargs()),
        root=config.data.root,
    )
