"""Datasets by name (detectron2's names and directory layout) or by explicit spec.

A spec is a dict with a ``format`` and paths; relative paths are resolved under the
data root: ``root=`` if given, else ``$ECOM2F_DATASETS``, else ``./datasets``. The
root may be an ``s3://bucket/prefix`` URI (read with pyarrow's S3FileSystem, see
``ecom2f.data.fileio``).

Formats and their keys:

- ``coco_panoptic``: ``image_root``, ``json``, ``png_root``
- ``coco_instances``: ``image_root``, ``json``
- ``semantic``: ``image_root``, ``label_root``, ``classes`` (names or count),
  ``ignore_value`` (255), ``image_suffix`` (""), ``label_suffix`` (".png")
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable

from ecom2f.data import fileio
from ecom2f.data.base import DEFAULT_MAX_BAD_FRACTION, SegmentationDataset

DATA_ROOT_ENV = "ECOM2F_DATASETS"
_REQUIRED = {
    "coco_panoptic": ("image_root", "json", "png_root"),
    "coco_instances": ("image_root", "json"),
    "semantic": ("image_root", "label_root", "classes"),
}
PATH_KEYS = ("image_root", "json", "png_root", "label_root")
_REGISTRY: dict[str, dict] = {}


def register_dataset(name: str, spec: dict, overwrite: bool = False) -> None:
    """Register a spec (paths relative to the data root) under a name."""
    _validate(spec, where=f"dataset {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"dataset {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = dict(spec)


def registered_datasets() -> dict[str, dict]:
    return {name: dict(spec) for name, spec in sorted(_REGISTRY.items())}


def closest_dataset_names(name: str, limit: int = 3) -> list[str]:
    """The registered names closest to ``name`` (a typo's likely meaning), best first."""
    return difflib.get_close_matches(name, list(_REGISTRY), n=limit, cutoff=0.6)


def unknown_dataset_message(name: str) -> str:
    """``no dataset named 'x'; did you mean 'y'?`` (or the registered names, when none is close)."""
    close = closest_dataset_names(name)
    hint = f"did you mean {' or '.join(map(repr, close))}?" if close else f"registered: {', '.join(sorted(_REGISTRY))}"
    return f"no dataset named {name!r}; {hint}"


def data_root(root: str | None = None) -> str:
    return str(root or os.environ.get(DATA_ROOT_ENV) or "./datasets")


def _validate(spec: dict, where: str) -> None:
    fmt = spec.get("format")
    if fmt not in _REQUIRED:
        raise ValueError(f"{where}: format {fmt!r} is not one of {sorted(_REQUIRED)}")
    missing = [key for key in _REQUIRED[fmt] if key not in spec]
    if missing:
        raise ValueError(f"{where}: format {fmt!r} needs keys {missing} (got {sorted(spec)})")


def _resolve(path: str, root: str) -> str:
    path = str(path)
    if fileio.is_uri(path) or os.path.isabs(path):
        return path
    return fileio.join(root, path)


def resolve_spec(spec: str | dict, root: str | None = None) -> dict:
    """The spec of a name (or a dict) with every path made absolute under the data root."""
    if isinstance(spec, str):
        if spec not in _REGISTRY:
            raise KeyError(f"{unknown_dataset_message(spec)} (or pass a spec dict)")
        spec = _REGISTRY[spec] | {"name": spec}
    _validate(spec, where="dataset spec")
    base = data_root(root)
    return {k: (_resolve(v, base) if k in PATH_KEYS else v) for k, v in spec.items()}


def build_dataset(
    spec: str | dict,
    strict: bool = True,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    transform: Callable[[dict], dict] | None = None,
    root: str | None = None,
    check_only: bool = False,
) -> SegmentationDataset:
    """A torch Dataset of samples (``ecom2f.data.sample``) with ``.metadata``.

    ``strict=True`` raises DataProblemError on the first bad sample; ``strict=False``
    skips bad samples (counted in ``dataset.metadata.skip_counts``) and refuses to
    start when more than ``max_bad_fraction`` of them are bad.
    """
    spec = resolve_spec(spec, root)
    common = {
        "strict": strict,
        "max_bad_fraction": max_bad_fraction,
        "transform": transform,
        "name": spec.get("name"),
        "check_only": check_only,
    }
    fmt = spec["format"]
    # Imported per format: only COCO instances needs pycocotools.
    if fmt == "coco_panoptic":
        from ecom2f.data.coco_panoptic import CocoPanopticDataset

        return CocoPanopticDataset(spec["image_root"], spec["json"], spec["png_root"], **common)
    if fmt == "coco_instances":
        from ecom2f.data.coco_instances import CocoInstancesDataset

        return CocoInstancesDataset(spec["image_root"], spec["json"], **common)
    from ecom2f.data.semantic import SemanticDataset

    return SemanticDataset(
        spec["image_root"],
        spec["label_root"],
        spec["classes"],
        ignore_value=int(spec.get("ignore_value", 255)),
        image_suffix=spec.get("image_suffix", ""),
        label_suffix=spec.get("label_suffix", ".png"),
        **common,
    )


def _register_builtins() -> None:
    for split in ("train", "val"):
        register_dataset(
            f"coco_2017_{split}_panoptic",
            {
                "format": "coco_panoptic",
                "image_root": f"coco/{split}2017",
                "json": f"coco/annotations/panoptic_{split}2017.json",
                "png_root": f"coco/panoptic_{split}2017",
            },
        )
        register_dataset(
            f"coco_2017_{split}",
            {
                "format": "coco_instances",
                "image_root": f"coco/{split}2017",
                "json": f"coco/annotations/instances_{split}2017.json",
            },
        )
        register_dataset(
            f"cityscapes_fine_panoptic_{split}",
            {
                "format": "coco_panoptic",
                # images stay in their per-city folders: leftImg8bit/<split>/<city>/
                "image_root": f"cityscapes/leftImg8bit/{split}",
                "json": f"cityscapes/gtFine/cityscapes_panoptic_{split}.json",
                "png_root": f"cityscapes/gtFine/cityscapes_panoptic_{split}",
            },
        )
        ade_split = {"train": "training", "val": "validation"}[split]
        register_dataset(
            f"ade20k_sem_seg_{split}",
            {
                "format": "semantic",
                "image_root": f"ADEChallengeData2016/images/{ade_split}",
                # detectron2's prepare_ade20k_sem_seg.py output: labels 0..149, 255 ignored
                "label_root": f"ADEChallengeData2016/annotations_detectron2/{ade_split}",
                "classes": 150,
                "ignore_value": 255,
            },
        )
        register_dataset(
            f"ade20k_panoptic_{split}",
            {
                "format": "coco_panoptic",
                "image_root": f"ADEChallengeData2016/images/{ade_split}",
                "json": f"ADEChallengeData2016/ade20k_panoptic_{split}.json",
                "png_root": f"ADEChallengeData2016/ade20k_panoptic_{split}",
            },
        )
        register_dataset(
            f"synthetic_panoptic_{split}",
            {
                "format": "coco_panoptic",
                "image_root": f"synthetic/{split}/images",
                "json": f"synthetic/{split}/panoptic.json",
                "png_root": f"synthetic/{split}/panoptic",
            },
        )


_register_builtins()
