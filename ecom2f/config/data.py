"""The ``data`` section: which datasets a run reads, and how training images are augmented."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Discriminator, Field, Tag, model_validator

from ecom2f.config.section import Section

DATASET_FORMATS = {
    "coco_panoptic": ("image_root", "json", "png_root"),
    "coco_instances": ("image_root", "json"),
    "semantic": ("image_root", "label_root", "classes"),
}


class DatasetSpec(Section):
    """An explicit dataset (paths relative to ``data.root``, or absolute, or s3:// URIs)."""

    format: Literal["coco_panoptic", "coco_instances", "semantic"]
    image_root: str
    json_file: str | None = Field(None, alias="json")
    png_root: str | None = None
    label_root: str | None = None
    classes: int | list[str] | None = None
    ignore_value: int = 255
    image_suffix: str = ""
    label_suffix: str = ".png"

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True, serialize_by_alias=True)

    @model_validator(mode="after")
    def _required_for_format(self) -> DatasetSpec:
        present = {name for name in ("image_root", "png_root", "label_root", "classes") if getattr(self, name) is not None}
        if self.json_file is not None:
            present.add("json")
        missing = [key for key in DATASET_FORMATS[self.format] if key not in present]
        if missing:
            raise ValueError(f"format {self.format!r} needs {missing}")
        return self

    def as_spec(self) -> dict:
        """The dict ``ecom2f.data.build_dataset`` takes."""
        return self.model_dump(by_alias=True, exclude_none=True)


def _dataset_kind(value) -> str:
    return "spec" if isinstance(value, dict | DatasetSpec) else "name"


# A registered dataset name (see ecom2f.data.registered_datasets()) or a spec.
DatasetRef = Annotated[
    Annotated[str, Tag("name")] | Annotated[DatasetSpec, Tag("spec")],
    Discriminator(_dataset_kind),
]


def dataset_spec(ref: str | DatasetSpec) -> str | dict:
    """What ``ecom2f.data.build_dataset`` takes, and JSON can hold: the name, or the spec as a dict."""
    return ref.as_spec() if isinstance(ref, DatasetSpec) else ref


class SyntheticDataConfig(Section):
    """Generate the synthetic panoptic set under ``<data.root>/synthetic/{train,val}`` if absent."""

    num_train: int = Field(64, ge=1)
    num_val: int = Field(16, ge=1)
    image_size: int = Field(128, ge=32)
    seed: int = 0
    # Share of cluttered scenes (many small overlapping shapes, textured stuff) in each split; the
    # rest are simple (a few large shapes on a flat background).
    cluttered_fraction: float = Field(0.5, ge=0.0, le=1.0)


class DataConfig(Section):
    # Where relative dataset paths live: local path or s3:// URI; None: $ECOM2F_DATASETS or ./datasets.
    root: str | None = None
    train: DatasetRef = "coco_2017_train_panoptic"
    val: DatasetRef = "coco_2017_val_panoptic"
    # Augmentation recipe: coco_lsj = large-scale jitter (resize by [min_scale, max_scale] of
    # image_size, crop/pad to image_size); cityscapes = multi-scale shorter side + crop_size.
    recipe: Literal["coco_lsj", "cityscapes", "none"] = "coco_lsj"
    image_size: int = Field(1024, ge=32)
    min_scale: float = Field(0.1, gt=0.0)
    max_scale: float = Field(2.0, gt=0.0)
    crop_size: tuple[int, int] | None = None  # (height, width), cityscapes recipe
    test_min_size: int = Field(800, ge=32)
    test_max_size: int = Field(1333, ge=32)
    # None: solver.ims_per_batch / (ray.num_workers * solver.gradient_accumulation_steps).
    batch_size_per_worker: int | None = Field(None, ge=1)
    loader_workers: int = Field(4, ge=0)
    # strict: the first bad sample stops the job; else skip bad samples up to max_bad_fraction.
    strict: bool = True
    max_bad_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    synthetic: SyntheticDataConfig | None = None

    def train_transform_kwargs(self) -> dict:
        """Keyword arguments of ``ecom2f.data.build_transform(self.recipe, **kwargs)``."""
        if self.recipe == "coco_lsj":
            return {"image_size": self.image_size, "scale_range": (self.min_scale, self.max_scale)}
        if self.recipe == "cityscapes":
            return {"crop_size": tuple(self.crop_size), "base_short_side": self.image_size}
        return {}

    @model_validator(mode="after")
    def _scales(self) -> DataConfig:
        if self.min_scale > self.max_scale:
            raise ValueError(f"data.min_scale {self.min_scale} must not exceed data.max_scale {self.max_scale}")
        if self.recipe == "cityscapes" and self.crop_size is None:
            raise ValueError("data.recipe 'cityscapes' needs data.crop_size, e.g. [512, 1024]")
        if self.test_min_size > self.test_max_size:
            raise ValueError(
                f"data.test_min_size {self.test_min_size} must not exceed data.test_max_size {self.test_max_size}"
            )
        if self.synthetic is not None and self.root is not None and self.root.startswith("s3://"):
            raise ValueError(
                f"data.synthetic generates local files, but data.root is {self.root!r}: set data.root to a local "
                "folder, or remove data.synthetic and upload a generated set (ecom2f data synth) to S3"
            )
        return self
