"""The data checker: read every sample of a dataset and report every problem.

Used by ``ecom2f data check``. It builds the dataset in check-only mode (collect,
never raise), then reads each sample, so it sees both annotation-level problems
(unknown categories, duplicate ids, missing files) and file-level ones (truncated
images, PNG/image size mismatches, ids missing either way, labels out of range).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

from ecom2f.data import fileio
from ecom2f.data.problems import DataProblemError, Problem, ProblemKind, ProblemLog
from ecom2f.data.registry import PATH_KEYS, build_dataset, registered_datasets
from ecom2f.errors import BadInputError, MissingFileError


@dataclass
class CheckReport:
    dataset: str
    num_samples: int = 0
    log: ProblemLog = field(default_factory=lambda: ProblemLog(max_examples=5))

    @property
    def ok(self) -> bool:
        return self.log.num_errors == 0

    def format(self) -> str:
        status = "OK" if self.ok else f"FAILED ({self.log.num_errors} errors)"
        return f"{self.dataset}: {self.num_samples} samples checked: {status}\n{self.log.summary()}"


def _single(pattern_dir: str, pattern: str, what: str, flag: str) -> str:
    found = sorted(glob.glob(os.path.join(pattern_dir, pattern)))
    if len(found) != 1:
        raise BadInputError(
            f"cannot tell which {what} to use in {pattern_dir}: found {[os.path.basename(f) for f in found]}, and "
            f"it is not laid out as a registered dataset ({_layouts_hint()}); pass {flag}"
        )
    return found[0]


def _first_dir(root: str, names: list[str], what: str, flag: str) -> str:
    for name in names:
        if name and os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    raise BadInputError(f"no {what} folder in {root} (looked for {[n for n in names if n]}); pass {flag}")


def _layouts_hint() -> str:
    return "e.g. detectron2's COCO layout: annotations/panoptic_val2017.json, val2017/, panoptic_val2017/"


def _strip_first(path: str) -> str:
    """``"coco/annotations/x.json"`` -> ``"annotations/x.json"``: a registered path below its dataset folder."""
    return path.split("/", 1)[1] if "/" in path else path


def registered_layouts(root: str, fmt: str, split: str | None = None) -> dict[str, dict]:
    """``{name: spec}`` of the registered datasets of format ``fmt`` whose files lie in ``root``,
    laid out as under their own folder (``coco/``, ``cityscapes/``, ``ADEChallengeData2016/``,
    ``synthetic/``) whatever ``root`` is called (``datasets/coco`` holding
    ``annotations/panoptic_val2017.json`` is ``coco_2017_val_panoptic``), or as under the data root
    (``datasets`` holding ``coco/annotations/...``). ``split`` keeps the names that contain it."""
    found = {}
    for name, spec in registered_datasets().items():
        if spec["format"] != fmt or (split and split not in name):
            continue
        for place in (_strip_first, lambda path: path):  # root is the dataset's folder, or the data root
            relocated = {key: (os.path.join(root, place(value)) if key in PATH_KEYS else value)
                         for key, value in spec.items()}
            marker = relocated.get("json") or relocated["label_root"]
            if os.path.exists(marker) and os.path.isdir(relocated["image_root"]):
                found[name] = {**relocated, "name": name}
                break
    return found


def specs_from_root(root: str, fmt: str, json_file: str | None = None, image_root: str | None = None,
                    png_root: str | None = None, label_root: str | None = None, classes=None,
                    ignore_value: int = 255, split: str | None = None) -> dict[str, dict]:
    """``{label: spec}`` of the datasets in the local folder ``root``: every registered dataset
    laid out in it (:func:`registered_layouts`: detectron2's COCO, Cityscapes and ADE20K folders,
    the synthetic root), else the one dataset of :func:`spec_from_root`. Paths given explicitly
    always mean the one dataset they name."""
    if fileio.is_uri(root):  # no listing of object stores here: the paths must be given (--json, ...)
        spec = spec_from_root(root, fmt, json_file, image_root, png_root, label_root, classes, ignore_value)
        return {str(spec.get("json") or spec["image_root"]): spec}
    if not os.path.exists(root):
        raise MissingFileError(f"dataset folder {root} does not exist; check the path (or give a registered "
                               "dataset name without --format)")
    if not os.path.isdir(root):
        raise BadInputError(f"{root} is a file, not a dataset folder: give the folder that holds it "
                            "(and --json FILE for an annotation JSON)")
    explicit = any(value is not None for value in (json_file, image_root, png_root, label_root))
    if not explicit:
        found = registered_layouts(root, fmt, split)
        if found:
            return found
        if split:
            raise BadInputError(f"--split {split}: no registered {fmt} dataset with {split!r} in its name is laid "
                                f"out in {root} ({_layouts_hint()})")
    spec = spec_from_root(root, fmt, json_file, image_root, png_root, label_root, classes, ignore_value)
    return {str(spec.get("json") or spec["image_root"]): spec}


def spec_from_root(
    root: str,
    fmt: str,
    json_file: str | None = None,
    image_root: str | None = None,
    png_root: str | None = None,
    label_root: str | None = None,
    classes=None,
    ignore_value: int = 255,
) -> dict:
    """A dataset spec for a local directory holding one dataset, guessing the usual names where not given.

    coco_panoptic: the one ``*.json`` in root, PNGs in ``<json stem>/``, images in
    ``images/`` (the layout ``ecom2f data synth`` writes) or ``<split>/``.
    """
    def under(path):
        return path if path is None or os.path.isabs(path) or fileio.is_uri(path) else os.path.join(root, path)

    json_file, image_root, png_root, label_root = map(under, (json_file, image_root, png_root, label_root))
    if fmt in ("coco_panoptic", "coco_instances"):
        json_file = json_file or _single(root, "*.json", "annotation JSON", "--json")
        stem = os.path.splitext(os.path.basename(json_file))[0]
        split = stem.split("_", 1)[1] if "_" in stem else ""
        image_root = image_root or _first_dir(root, ["images", split, "input_images"], "image", "--image-root")
        spec = {"format": fmt, "json": json_file, "image_root": image_root}
        if fmt == "coco_panoptic":
            spec["png_root"] = png_root or _first_dir(root, [stem], "panoptic PNG", "--png-root")
        return spec
    if fmt == "semantic":
        if classes is None:
            raise BadInputError("format semantic needs --classes (a number, or comma-separated class names)")
        return {
            "format": "semantic",
            "image_root": image_root or _first_dir(root, ["images"], "image", "--image-root"),
            "label_root": label_root or _first_dir(root, ["labels", "annotations"], "label", "--label-root"),
            "classes": classes,
            "ignore_value": ignore_value,
        }
    raise BadInputError(f"unknown format {fmt!r}; use coco_panoptic, coco_instances or semantic")


def check_dataset(spec: str | dict, root: str | None = None) -> CheckReport:
    """Read every sample of a dataset (registered name or spec) and collect its problems."""
    name = spec if isinstance(spec, str) else spec.get("json") or spec.get("image_root", "dataset")
    report = CheckReport(dataset=str(name))
    try:
        dataset = build_dataset(spec, root=root, check_only=True)
    except DataProblemError as error:  # the annotation file itself is missing or broken
        report.log.add(error.problem, warn=False)
        return report
    for problem in dataset.index_problems:
        report.log.add(problem, warn=False)
    report.num_samples = dataset.num_indexed
    seen_classes: set[int] = set()
    for index in range(len(dataset)):
        sample, problems = dataset.load_checked(index)
        for problem in problems:
            report.log.add(problem, warn=False)
        if sample is not None:
            seen_classes.update(sample["labels"].tolist())
    if dataset.metadata.stuff_classes and not dataset.metadata.thing_classes and seen_classes:
        # Semantic label maps: gaps below the largest label used usually mean raw ids
        # were not mapped to contiguous train ids.
        gaps = sorted(set(range(max(seen_classes) + 1)) - seen_classes)
        if gaps:
            report.log.add(
                Problem(
                    ProblemKind.NON_CONTIGUOUS_LABELS,
                    str(name),
                    f"labels used are not contiguous: {len(gaps)} classes below {max(seen_classes)} never appear "
                    f"(e.g. {gaps[:10]}); check the label mapping",
                ),
                warn=False,
            )
    return report

