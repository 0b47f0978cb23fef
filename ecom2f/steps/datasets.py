"""The datasets a run's configuration names, generated first where they are synthetic."""

from __future__ import annotations

import json
import logging
import os
import shutil

from ecom2f.config import Config
from ecom2f.config.data import dataset_spec
from ecom2f.data import build_dataset, build_transform, data_root
from ecom2f.data.synthetic import GENERATOR_VERSION, generate

log = logging.getLogger(__name__)


def ensure_synthetic_data(config: Config) -> None:
    """Generates ``<data.root>/synthetic/{train,val}`` when ``data.synthetic`` asks for it.

    A split is generated once and reused while its ``panoptic.json`` records the configured
    generator settings (count, size, seed, generator version, scene mix); when they differ it is generated again, into a
    sibling folder swapped in at the end, so a changed ``data.synthetic`` never trains on stale
    images and an interrupted generation leaves the old split whole.
    """
    synthetic = config.data.synthetic
    if synthetic is None:
        return
    root = config.data.root or data_root()
    if root.startswith("s3://"):
        raise ValueError(f"data.synthetic generates local files; data.root {root!r} must be a local folder")
    for split, count, seed in (("train", synthetic.num_train, synthetic.seed),
                               ("val", synthetic.num_val, synthetic.seed + 1)):
        out = os.path.join(root, "synthetic", split)
        wanted = {"seed": seed, "image_size": synthetic.image_size, "num_images": count,
                  "generator_version": GENERATOR_VERSION, "scenes": "mixed",
                  "cluttered_fraction": synthetic.cluttered_fraction}
        recorded = _recorded_settings(os.path.join(out, "panoptic.json"))  # written last: present = complete
        if recorded == wanted:
            continue
        if os.path.exists(out):
            log.info("regenerating %s: it holds %s, data.synthetic asks for %s", out, recorded, wanted)
        staging, retired = f"{out}.generating-{os.getpid()}", f"{out}.old-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        generate(staging, num_images=count, image_size=synthetic.image_size, seed=seed,
                 cluttered_fraction=synthetic.cluttered_fraction)
        if os.path.exists(out):
            os.replace(out, retired)
        os.replace(staging, out)
        shutil.rmtree(retired, ignore_errors=True)


def _recorded_settings(json_path: str) -> dict | None:
    """The generator settings a complete synthetic split records, or None when it is incomplete."""
    if not os.path.exists(json_path):
        return None
    with open(json_path) as f:
        info = json.load(f).get("info", {})
    # Splits drawn before the scene mix record no generator version: version 1, graded scenes.
    recorded = {key: info.get(key) for key in ("seed", "image_size", "num_images", "cluttered_fraction")}
    return {**recorded, "generator_version": info.get("generator_version", 1), "scenes": info.get("scenes", "graded")}


def training_dataset(config: Config):
    """The augmented training split (``data.train``) with the run's bad-input policy."""
    return build_dataset(
        dataset_spec(config.data.train),
        strict=config.data.strict,
        max_bad_fraction=config.data.max_bad_fraction,
        transform=build_transform(config.data.recipe, **config.data.train_transform_kwargs()),
        root=config.data.root,
    )
