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
from ecom2f.data.registry import build_dataset


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
        raise ValueError(
            f"cannot tell which {what} to use in {pattern_dir}: found {[os.path.basename(f) for f in found]}; "
            f"pass {flag}"
        )
    return found[0]


def _first_dir(root: str, names: list[str], what: str, flag: str) -> str:
    for name in names:
        if name and os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    raise ValueError(f"no {what} folder in {root} (looked for {[n for n in names if n]}); pass {flag}")


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
    """A dataset spec for a local directory, guessing the usual names where not given.

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
            raise ValueError("format semantic needs --classes (a number, or comma-separated class names)")
        return {
            "format": "semantic",
            "image_root": image_root or _first_dir(root, ["images"], "image", "--image-root"),
            "label_root": label_root or _first_dir(root, ["labels", "annotations"], "label", "--label-root"),
            "classes": classes,
            "ignore_value": ignore_value,
        }
    raise ValueError(f"unknown format {fmt!r}; use coco_panoptic, coco_instances or semantic")


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

