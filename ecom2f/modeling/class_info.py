"""The classes a checkpoint was trained on: names in classifier order, and which are things.

Checkpoints carry thing/stuff rarely: a Hugging Face ``config.json`` has only ``id2label``,
a detectron2 checkpoint nothing at all. The label sets Mask2Former is released for are
recognised by their size and a few names; for any other set the caller says how many of the
leading classes are things. A set whose things are not the leading classes (Cityscapes:
ids 11..18) is described by ``ModelConfig.thing_classes``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from ecom2f.errors import BadInputError

__all__ = ["KNOWN_LABEL_SETS", "ClassInfo", "LabelSet", "generic_names", "recognise_label_set"]

ALL_TASKS = ("semantic", "instance", "panoptic")


@dataclasses.dataclass(frozen=True)
class LabelSet:
    """A released label set, recognised by its size and the names at a few ids."""

    name: str
    size: int
    anchors: Mapping[int, str]
    thing_ids: tuple[int, ...]
    tasks: tuple[str, ...]  # what Mask2Former's released configs of this set turn on

    def matches(self, names: Sequence[str]) -> bool:
        return len(names) == self.size and all(names[i] == name for i, name in self.anchors.items())


KNOWN_LABEL_SETS = (
    LabelSet("COCO panoptic", 133, {0: "person", 79: "toothbrush", 80: "banner"}, tuple(range(80)), ALL_TASKS),
    LabelSet("COCO instances", 80, {0: "person", 79: "toothbrush"}, tuple(range(80)), ("instance",)),
    LabelSet("Cityscapes", 19, {0: "road", 11: "person", 18: "bicycle"}, tuple(range(11, 19)), ALL_TASKS),
    LabelSet("ADE20K semantic", 150, {0: "wall", 1: "building"}, (), ("semantic",)),
)


def recognise_label_set(names: Sequence[str]) -> LabelSet | None:
    return next((label_set for label_set in KNOWN_LABEL_SETS if label_set.matches(names)), None)


def generic_names(count: int) -> tuple[str, ...]:
    """transformers' names for classes nobody named (``LABEL_0``...)."""
    return tuple(f"LABEL_{i}" for i in range(count))


@dataclasses.dataclass(frozen=True)
class ClassInfo:
    """``names``: one per class, in the classifier's order; ``thing_ids``: the thing classes,
    or None when the checkpoint does not say; ``label_set``: the released set recognised."""

    names: tuple[str, ...]
    thing_ids: tuple[int, ...] | None = None
    label_set: str | None = None

    @classmethod
    def from_names(cls, names: Sequence[str], num_things: int | None = None) -> ClassInfo:
        """Things from ``num_things`` (the first ``num_things`` classes) when given, else from the
        recognised label set, else unknown."""
        names = tuple(str(name) for name in names)
        known = recognise_label_set(names)
        if num_things is not None:
            if not 0 <= num_things <= len(names):
                raise BadInputError(f"num_things {num_things} is outside 0..{len(names)} (the checkpoint's classes)")
            return cls(names, tuple(range(num_things)), known.name if known else None)
        if known is not None:
            return cls(names, known.thing_ids, known.name)
        return cls(names, None, None)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def tasks(self) -> tuple[str, ...]:
        known = recognise_label_set(self.names)
        return known.tasks if known else ALL_TASKS

    def model_things(self) -> dict:
        """``num_things`` and ``thing_classes`` as :class:`~ecom2f.config.model.ModelConfig` takes them.

        Raises:
            BadInputError: the things are unknown.
        """
        if self.thing_ids is None:
            raise BadInputError(
                f"the checkpoint's {self.num_classes} classes ({', '.join(self.names[:3])}, ...) are not a label set "
                "ecom2f knows, so it cannot tell things from stuff; give num_things (how many leading classes are "
                "things; 0 for a semantic-only model)"
            )
        leading = list(self.thing_ids) == list(range(len(self.thing_ids)))
        return {"num_things": len(self.thing_ids), "thing_classes": None if leading else list(self.thing_ids)}

    def to_json(self) -> dict:
        return {"names": list(self.names), "thing_ids": None if self.thing_ids is None else list(self.thing_ids),
                "label_set": self.label_set}

    @classmethod
    def from_json(cls, tree: Mapping) -> ClassInfo:
        things = tree.get("thing_ids")
        return cls(tuple(tree["names"]), None if things is None else tuple(int(i) for i in things), tree.get("label_set"))
