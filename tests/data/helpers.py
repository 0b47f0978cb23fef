"""Builders of small datasets on disk for the data tests (real files, written with PIL)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ecom2f.data.synthetic import generate

SIZE = 64


def make_panoptic(root: Path, num_images: int = 3, seed: int = 3, size: int = SIZE) -> dict:
    """A valid synthetic COCO panoptic set; returns its spec (absolute paths)."""
    generate(root, num_images, size, seed)
    return panoptic_spec(root)


def panoptic_spec(root: Path) -> dict:
    return {
        "format": "coco_panoptic",
        "image_root": str(root / "images"),
        "json": str(root / "panoptic.json"),
        "png_root": str(root / "panoptic"),
    }


def copy_of(template: Path, dest: Path) -> dict:
    shutil.copytree(template, dest)
    return panoptic_spec(dest)


def read_json(root: Path) -> dict:
    return json.loads((root / "panoptic.json").read_text())


def write_json(root: Path, document: dict) -> None:
    (root / "panoptic.json").write_text(json.dumps(document))


def encode(array_or_image, fmt: str, **kwargs) -> bytes:
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def make_semantic(root: Path, labels: list[np.ndarray], seed: int = 0) -> None:
    """images/<i>.png (random RGB) and labels/<i>.png (the given uint8 label maps)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    for i, label in enumerate(labels):
        h, w = label.shape
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(label.astype(np.uint8), mode="L").save(root / "labels" / f"{i:03d}.png")
