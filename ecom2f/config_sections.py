"""The sections of a run's configuration other than ``model`` (see :mod:`ecom2f.config`).

Defaults are Mask2Former's COCO panoptic R50 recipe (configs/coco/panoptic-segmentation/
Base-COCO-PanopticSegmentation.yaml) and ECO-M2F's settings where it adds its own.
Checks that involve one section live here; checks across sections live in
``ecom2f.config.Config``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from ecom2f.modeling.config import GateConfig as ModelGateConfig


class Section(BaseModel):
    """Unknown keys are errors; assignments are validated too (``config.solver.base_lr = -1`` fails)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------- data

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
        return self


# ----------------------------------------------------------------------------- solver


def _increasing_depths(exits: list[int] | None) -> list[int] | None:
    """Exit lists (parent.exits, depth.exits): None, or strictly increasing depths >= 1."""
    if exits is not None and (not exits or sorted(set(exits)) != exits or exits[0] < 1):
        raise ValueError(f"{exits} must be a non-empty, strictly increasing list of depths >= 1")
    return exits


class ClipGradientsConfig(Section):
    enabled: bool = True
    # full_model: one norm over all parameters (Mask2Former); norm: per parameter; value: clamp.
    type: Literal["full_model", "norm", "value"] = "full_model"
    value: float = Field(0.01, gt=0.0)
    norm_type: float = Field(2.0, gt=0.0)


class LRScheduleConfig(Section):
    name: Literal["multistep", "poly"] = "multistep"
    steps: list[int] = Field(default_factory=lambda: [327778, 355092])  # multistep
    gamma: float = Field(0.1, gt=0.0, le=1.0)  # multistep
    power: float = Field(0.9, gt=0.0)  # poly

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[int]) -> list[int]:
        if any(step <= 0 for step in steps) or sorted(set(steps)) != steps:
            raise ValueError(f"{steps} must be positive and strictly increasing")
        return steps


class SolverConfig(Section):
    optimizer: Literal["adamw"] = "adamw"
    base_lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    weight_decay_norm: float = Field(0.0, ge=0.0)
    weight_decay_embed: float = Field(0.0, ge=0.0)
    backbone_multiplier: float = Field(0.1, ge=0.0)
    clip_gradients: ClipGradientsConfig = Field(default_factory=ClipGradientsConfig)
    ims_per_batch: int = Field(16, ge=1)  # global batch per optimizer step
    max_iter: int = Field(368750, ge=1)
    lr_schedule: LRScheduleConfig = Field(default_factory=LRScheduleConfig)
    warmup_iters: int = Field(10, ge=0)
    warmup_factor: float = Field(1.0, gt=0.0, le=1.0)
    gradient_accumulation_steps: int = Field(1, ge=1)
    # auto: bf16 on GPU, fp32 on CPU (the rule); fp16 uses DeepSpeed's loss scaling.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"

    @model_validator(mode="after")
    def _schedule_fits(self) -> SolverConfig:
        if self.lr_schedule.name == "multistep":
            late = [step for step in self.lr_schedule.steps if step >= self.max_iter]
            if late:
                raise ValueError(
                    f"solver.lr_schedule.steps {late} must be < solver.max_iter {self.max_iter}; "
                    "lower them or raise max_iter"
                )
        if self.warmup_iters >= self.max_iter:
            raise ValueError(f"solver.warmup_iters {self.warmup_iters} must be < solver.max_iter {self.max_iter}")
        return self


# ----------------------------------------------------------------------------- step 1: parent


class InitConfig(Section):
    """Where the parent's weights start: random, the backbone file in ``model.backbone.weights``,
    or a released Mask2Former checkpoint (imported through its detectron2 YAML)."""

    mode: Literal["scratch", "backbone", "mask2former"] = "scratch"
    mask2former_checkpoint: str | None = None
    mask2former_config: str | None = None  # the detectron2 YAML the checkpoint was trained with

    @model_validator(mode="after")
    def _paths_for_mode(self) -> InitConfig:
        if self.mode == "mask2former" and not (self.mask2former_checkpoint and self.mask2former_config):
            raise ValueError(
                "parent.init.mode 'mask2former' needs parent.init.mask2former_checkpoint and parent.init.mask2former_config"
            )
        return self


class ParentConfig(Section):
    # Exits k trained ("weighted stochastic depth"); None: every depth 1..encoder_layers.
    exits: list[int] | None = None
    exit_sampling: Literal["uniform", "weights"] = "uniform"
    exit_weights: list[float] | None = None  # one per exit, for exit_sampling 'weights'
    # The loss at exit k is scaled by alpha_k: constant 1, linear k (ECO-M2F's code), quadratic k^2.
    alpha: Literal["constant", "linear", "quadratic"] = "linear"
    all_exits: bool = False  # sum the losses of every exit each iteration instead of sampling one
    checkpoint_period: int = Field(5000, ge=1)
    keep_last: int = Field(3, ge=1)
    max_failures: int = Field(3, ge=-1)  # Ray FailureConfig; -1 retries forever
    log_period: int = Field(20, ge=1)
    init: InitConfig = Field(default_factory=InitConfig)
    zero_stage: Literal[1, 2] = 2
    tensorboard: bool = True

    @field_validator("exits")
    @classmethod
    def _exits_sorted(cls, exits: list[int] | None) -> list[int] | None:
        return _increasing_depths(exits)

    @model_validator(mode="after")
    def _weights(self) -> ParentConfig:
        if self.exit_sampling == "weights":
            if self.exit_weights is None:
                raise ValueError("parent.exit_sampling 'weights' needs parent.exit_weights (one weight per exit)")
            if any(w < 0 for w in self.exit_weights) or sum(self.exit_weights) <= 0:
                raise ValueError(f"parent.exit_weights {self.exit_weights} must be >= 0 with a positive sum")
        elif self.exit_weights is not None:
            raise ValueError("parent.exit_weights is set but parent.exit_sampling is 'uniform'; set it to 'weights'")
        return self


# ----------------------------------------------------------------------------- step 2: depth dataset


class DepthConfig(Section):
    """Step 2: run the parent at every exit on every training image; rows go to parquet."""

    dataset: DatasetRef | None = None  # None: data.train
    exits: list[int] | None = None  # None: every depth 1..encoder_layers
    batch_size: int = Field(8, ge=1)
    num_actors: int = Field(2, ge=1)
    shard_size: int = Field(1000, ge=1)  # images per parquet shard
    gate_feature_grid: int = Field(4, ge=1)  # coarsest encoder input pooled to G x G and stored

    @field_validator("exits")
    @classmethod
    def _exits_sorted(cls, exits: list[int] | None) -> list[int] | None:
        return _increasing_depths(exits)


# ----------------------------------------------------------------------------- step 3: gate search

GATE_POOLINGS = get_args(ModelGateConfig.model_fields["pooling"].annotation)


class AshaConfig(Section):
    grace_period: int = Field(2, ge=1)  # epochs before the first cut
    reduction_factor: float = Field(3.0, gt=1.0)


class GateSearchConfig(Section):
    """Step 3: the gate designs Ray Tune tries, and the budgets they are chosen for."""

    poolings: list[Literal[GATE_POOLINGS]] = Field(default_factory=lambda: list(GATE_POOLINGS))  # the model's choices
    grid_sizes: list[int] = Field(default_factory=lambda: [2, 4])
    hidden_layers: list[int] = Field(default_factory=lambda: [0, 1, 2])
    widths: list[int] = Field(default_factory=lambda: [64, 128, 256])
    dropouts: list[float] = Field(default_factory=lambda: [0.0, 0.1])
    losses: list[Literal["cross_entropy", "soft_cross_entropy", "expected_utility", "regression"]] = Field(
        default_factory=lambda: ["cross_entropy", "soft_cross_entropy"]
    )
    temperature: float = Field(0.02, gt=0.0)  # of the soft targets softmax(utility / temperature)
    # beta trades quality for depth in argmax_k(q_k - beta * k); ECO-M2F's released gate
    # configs use 0.02 (COCO) and 0.003 / 0.01 (Cityscapes).
    betas: list[float] = Field(default_factory=lambda: [0.0, 0.003, 0.01, 0.02, 0.05])
    lr: tuple[float, float] = (1e-4, 1e-2)  # log-uniform range
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=1)
    # A trial stops once its validation objective has not improved for this many epochs (0: never).
    patience: int = Field(5, ge=0)
    # Training matmuls: bf16 where the CPU has native bfloat16 (AMX / AVX512-BF16) with "auto".
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compute_budgets: list[float] = Field(default_factory=list)  # empty: no budget constraint
    budget_unit: Literal["layers", "gflops"] = "layers"
    num_samples: int = Field(20, ge=1)
    asha: AshaConfig = Field(default_factory=AshaConfig)
    holdout_fraction: float = Field(0.2, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _ranges(self) -> GateSearchConfig:
        for name in ("poolings", "grid_sizes", "hidden_layers", "widths", "dropouts", "losses", "betas"):
            if not getattr(self, name):
                raise ValueError(f"gate.{name} is empty: give at least one value to search over")
        low, high = self.lr
        if not 0 < low <= high:
            raise ValueError(f"gate.lr {list(self.lr)} must be a range 0 < low <= high")
        if any(b < 0 for b in self.betas):
            raise ValueError(f"gate.betas {self.betas} must be >= 0")
        if any(not 0 <= d < 1 for d in self.dropouts):
            raise ValueError(f"gate.dropouts {self.dropouts} must each be in [0, 1)")
        if any(budget <= 0 for budget in self.compute_budgets):
            raise ValueError(f"gate.compute_budgets {self.compute_budgets} must be > 0")
        if self.asha.grace_period > self.epochs:
            raise ValueError(f"gate.asha.grace_period {self.asha.grace_period} exceeds gate.epochs {self.epochs}")
        return self


# ----------------------------------------------------------------------------- evaluation


class EvaluationConfig(Section):
    datasets: list[DatasetRef] = Field(default_factory=list)  # empty: [data.val]
    tasks: list[Literal["panoptic", "instance", "semantic"]] = Field(default_factory=lambda: ["panoptic"])
    depths: list[int] | None = None  # fixed depths to evaluate; None: every depth 1..encoder_layers
    oracle: bool = True  # also score the per-image best depth (needs ground truth)
    batch_size: int = Field(1, ge=1)
    num_actors: int = Field(2, ge=1)


# ----------------------------------------------------------------------------- storage and ray


class StorageSection(Section):
    root: str = "./runs"  # local path or s3://bucket/prefix
    run: str = "default"  # the run's folder under root
    retry_mode: Literal["standard", "adaptive"] = "adaptive"
    max_attempts: int = Field(8, ge=1)
    multipart_threshold_mb: int = Field(64, ge=5)
    multipart_chunksize_mb: int = Field(16, ge=5)

    @field_validator("run")
    @classmethod
    def _plain_name(cls, run: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", run):
            raise ValueError(f"{run!r} must be a plain name: letters, digits, '.', '_', '-' (no '/')")
        return run

    def layout(self):
        from ecom2f.storage import RunLayout

        return RunLayout(self.root, self.run)

    def s3_options(self):
        from ecom2f.storage import S3Options

        return S3Options(
            retry_mode=self.retry_mode,
            max_attempts=self.max_attempts,
            multipart_threshold_bytes=self.multipart_threshold_mb * 1024 * 1024,
            multipart_chunksize_bytes=self.multipart_chunksize_mb * 1024 * 1024,
        )


class RayConfig(Section):
    address: str | None = None  # None: $RAY_ADDRESS if set, else a local cluster
    num_workers: int = Field(8, ge=1)
    use_gpu: bool = True
    cpus_per_worker: float = Field(8.0, gt=0.0)
    gpus_per_worker: float | None = Field(None, ge=0.0)  # None: 1 with use_gpu, else 0
    resources: dict[str, float] = Field(default_factory=dict)  # extra custom resources per worker

    @property
    def num_gpus_per_worker(self) -> float:
        if self.gpus_per_worker is None:
            return 1.0 if self.use_gpu else 0.0
        return self.gpus_per_worker

    @model_validator(mode="after")
    def _gpu_consistency(self) -> RayConfig:
        if self.use_gpu and self.gpus_per_worker == 0:
            raise ValueError("ray.use_gpu is true but ray.gpus_per_worker is 0; set gpus_per_worker > 0 or use_gpu false")
        if not self.use_gpu and self.gpus_per_worker:
            raise ValueError(
                f"ray.use_gpu is false but ray.gpus_per_worker is {self.gpus_per_worker}; set it to 0 for CPU workers"
            )
        return self
