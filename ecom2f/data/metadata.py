"""Dataset metadata: categories and the dataset-id <-> contiguous-id maps."""

from __future__ import annotations

from dataclasses import dataclass, field

from ecom2f.data.problems import ProblemLog


@dataclass(frozen=True)
class Category:
    id: int  # the dataset's category id (COCO: 1..200 with gaps; Cityscapes: 7..33)
    name: str
    isthing: bool
    color: tuple[int, int, int] = (0, 0, 0)


@dataclass
class DatasetMetadata:
    """What a model and an evaluator need to know about a dataset's labels.

    Contiguous class ids are the positions in ``categories`` (sorted by dataset id),
    as Mask2Former's classifier uses them.
    """

    name: str
    categories: list[Category]
    ignore_label: int = 255
    problems: ProblemLog = field(default_factory=ProblemLog)

    def __post_init__(self) -> None:
        self.categories = sorted(self.categories, key=lambda c: c.id)
        ids = [c.id for c in self.categories]
        if len(set(ids)) != len(ids):
            duplicates = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"dataset {self.name!r}: duplicate category ids {duplicates} in the category list")

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def dataset_id_to_contiguous(self) -> dict[int, int]:
        return {c.id: i for i, c in enumerate(self.categories)}

    @property
    def contiguous_to_dataset_id(self) -> list[int]:
        return [c.id for c in self.categories]

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.categories]

    @property
    def thing_classes(self) -> list[int]:
        """Contiguous ids of the thing categories."""
        return [i for i, c in enumerate(self.categories) if c.isthing]

    @property
    def stuff_classes(self) -> list[int]:
        """Contiguous ids of the stuff categories."""
        return [i for i, c in enumerate(self.categories) if not c.isthing]

    @property
    def skip_counts(self) -> dict[str, int]:
        """{problem kind: samples skipped for it} in lenient mode (this process)."""
        return self.problems.skip_counts()


def categories_from_coco(raw: list[dict], default_isthing: bool = True) -> list[Category]:
    """Categories from a COCO JSON ``categories`` list (``isthing`` absent = instances)."""
    out = []
    for entry in raw:
        color = tuple(int(v) for v in entry.get("color", (0, 0, 0)))
        out.append(
            Category(
                id=int(entry["id"]),
                name=str(entry.get("name", entry["id"])),
                isthing=bool(entry.get("isthing", default_isthing)),
                color=color,  # type: ignore[arg-type]
            )
        )
    return out
