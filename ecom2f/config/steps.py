"""The sections of ECO-M2F's three steps and the evaluation: ``parent``, ``depth``, ``gate``, ``evaluation``.

Defaults are ECO-M2F's settings (GYeow/ECO-M2F configs) where it has them.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator

from ecom2f.config.data import DatasetRef
from ecom2f.config.model import GateConfig as ModelGateConfig
from ecom2f.config.section import Section


def _increasing_depths(exits: list[int] | None) -> list[int] | None:
    """Exit lists (parent.exits, depth.exits): None, or strictly increasing depths >= 1."""
    if exits is not None and (not exits or sorted(set(exits)) != exits or exits[0] < 1):
        raise ValueError(f"{exits} must be a non-empty, strictly increasing list of depths >= 1")
    return exits



# ----------------------------------------------------------------------------- step 1: parent


class InitConfig(Section):
    """Where the parent's weights start: random, the backbone file in ``model.backbone.weights``,
    a released Mask2Former checkpoint (imported through its detectron2 YAML), or a transformers
    Mask2Former checkpoint folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``,
    local or ``s3://``, as ``save_pretrained`` writes it and the Hugging Face Hub serves it)."""

    mode: Literal["scratch", "backbone", "mask2former", "huggingface"] = "scratch"
    mask2former_checkpoint: str | None = None
    mask2former_config: str | None = None  # the detectron2 YAML the checkpoint was trained with
    huggingface_checkpoint: str | None = None  # the folder of a transformers Mask2Former checkpoint
    # Before training, compare the checkpoint's class names (config.json id2label) with data.train's, in
    # order: a dataset with other classes, or the same in another order, would train the wrong classifier rows.
    check_class_names: bool = True

    @model_validator(mode="after")
    def _paths_for_mode(self) -> InitConfig:
        if self.mode == "mask2former" and not (self.mask2former_checkpoint and self.mask2former_config):
            raise ValueError(
                "parent.init.mode 'mask2former' needs parent.init.mask2former_checkpoint and parent.init.mask2former_config"
            )
        if self.mode == "huggingface" and not self.huggingface_checkpoint:
            raise ValueError(
                "parent.init.mode 'huggingface' needs parent.init.huggingface_checkpoint: the folder (local or s3://) "
                "of a transformers Mask2Former checkpoint, e.g. a download of facebook/mask2former-swin-tiny-coco-panoptic"
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
    # 0: plain data parallel (a checkpoint resumes on any number of workers); 1/2 shard the
    # AdamW state over workers (resume needs the same number). See docs/cluster.md.
    zero_stage: Literal[0, 1, 2] = 0
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
    num_actors: int | None = Field(None, ge=1)  # model actors; None: one per GPU in the cluster (CPU clusters: 1)
    precision: Literal["fp32", "bf16"] = "fp32"  # the network's; losses and post-processing stay fp32
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
    num_actors: int | None = Field(None, ge=1)  # model actors; None: one per GPU in the cluster (CPU clusters: 1)
    precision: Literal["fp32", "bf16"] = "fp32"  # the network's; post-processing stays fp32
