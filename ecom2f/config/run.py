"""The run's configuration: its sections, and the rules that involve several of them.

Sections: ``model`` (:mod:`ecom2f.config.model`), ``data``, ``solver``, ``parent`` (step 1),
``depth`` (step 2), ``gate`` (step 3 search), ``evaluation``, ``storage`` and ``ray``. Every
rule a user can break is checked here, when the configuration loads, before any job starts.
"""

from __future__ import annotations


from pydantic import Field, model_validator

from ecom2f.config.data import DataConfig
from ecom2f.config.model import ModelConfig
from ecom2f.config.runtime import RayConfig, StorageSection
from ecom2f.config.section import Section
from ecom2f.config.serving import ServingConfig
from ecom2f.config.solver import SolverConfig
from ecom2f.config.steps import DepthConfig, EvaluationConfig, GateSearchConfig, ParentConfig

__all__ = ["Config"]


class Config(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    solver: SolverConfig = Field(default_factory=SolverConfig)
    parent: ParentConfig = Field(default_factory=ParentConfig)
    depth: DepthConfig = Field(default_factory=DepthConfig)
    gate: GateSearchConfig = Field(default_factory=GateSearchConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    storage: StorageSection = Field(default_factory=StorageSection)
    ray: RayConfig = Field(default_factory=RayConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    seed: int = Field(0, ge=0)

    # ------------------------------------------------------------------ derived values

    @property
    def encoder_layers(self) -> int:
        return self.model.pixel_decoder.encoder_layers

    @property
    def parent_exits(self) -> list[int]:
        return self.parent.exits or list(range(1, self.encoder_layers + 1))

    @property
    def depth_exits(self) -> list[int]:
        return self.depth.exits or list(range(1, self.encoder_layers + 1))

    @property
    def evaluation_depths(self) -> list[int]:
        return self.evaluation.depths or list(range(1, self.encoder_layers + 1))

    @property
    def batch_size_per_worker(self) -> int:
        """Images per worker per micro-step: ims_per_batch / (workers x accumulation steps)."""
        if self.data.batch_size_per_worker is not None:
            return self.data.batch_size_per_worker
        return self.solver.ims_per_batch // (self.ray.num_workers * self.solver.gradient_accumulation_steps)

    # ------------------------------------------------------------------ cross-section rules

    @model_validator(mode="after")
    def _depths_within_encoder(self) -> Config:
        layers = self.encoder_layers
        for name, depths in (
            ("parent.exits", self.parent.exits),
            ("depth.exits", self.depth.exits),
            ("evaluation.depths", self.evaluation.depths),
        ):
            outside = [k for k in depths or [] if not 1 <= k <= layers]
            if outside:
                raise ValueError(
                    f"{name} {depths}: {outside} outside 1..{layers} "
                    f"(model.pixel_decoder.encoder_layers = {layers})"
                )
        missing = [k for k in self.model.gate.exits if k not in self.depth_exits]
        if missing:
            raise ValueError(
                f"depth.exits {self.depth.exits} must include every gate exit (model.gate.exits "
                f"{self.model.gate.exits}); missing {missing}"
            )
        if self.parent.exit_weights is not None and len(self.parent.exit_weights) != len(self.parent_exits):
            raise ValueError(
                f"parent.exit_weights has {len(self.parent.exit_weights)} values but there are "
                f"{len(self.parent_exits)} exits {self.parent_exits}; give one weight per exit"
            )
        return self

    @model_validator(mode="after")
    def _init_consistent(self) -> Config:
        mode, weights = self.parent.init.mode, self.model.backbone.weights
        if mode == "scratch" and weights:
            raise ValueError(
                f"parent.init.mode is 'scratch' but model.backbone.weights is {weights!r}; "
                "set parent.init.mode to 'backbone' to start from those weights, or clear model.backbone.weights"
            )
        if mode in ("mask2former", "huggingface") and weights:
            # The whole model, backbone included, comes from the checkpoint: the backbone file would be
            # read on every worker only to be overwritten.
            raise ValueError(
                f"parent.init.mode is {mode!r}, which loads the backbone from the checkpoint, but "
                f"model.backbone.weights is {weights!r}; set model.backbone.weights=null"
            )
        return self

    @model_validator(mode="after")
    def _batch_divides(self) -> Config:
        workers, accumulation = self.ray.num_workers, self.solver.gradient_accumulation_steps
        per_step = workers * accumulation
        if self.data.batch_size_per_worker is None:
            if self.solver.ims_per_batch % per_step:
                raise ValueError(
                    f"solver.ims_per_batch {self.solver.ims_per_batch} is not divisible by ray.num_workers "
                    f"{workers} x solver.gradient_accumulation_steps {accumulation}; change one of them "
                    "or set data.batch_size_per_worker"
                )
        elif self.data.batch_size_per_worker * per_step != self.solver.ims_per_batch:
            raise ValueError(
                f"data.batch_size_per_worker {self.data.batch_size_per_worker} x ray.num_workers {workers} x "
                f"solver.gradient_accumulation_steps {accumulation} = {self.data.batch_size_per_worker * per_step}, "
                f"but solver.ims_per_batch is {self.solver.ims_per_batch}; make them agree "
                "(or leave data.batch_size_per_worker null to derive it)"
            )
        return self

    @model_validator(mode="after")
    def _gate_search_fits(self) -> Config:
        grid = self.depth.gate_feature_grid
        grids = sorted(set(self.gate.grid_sizes) | {self.model.gate.grid_size})
        bad = [g for g in grids if grid % g]
        if bad:
            raise ValueError(
                f"gate grid sizes {bad} (gate.grid_sizes / model.gate.grid_size) must divide "
                f"depth.gate_feature_grid {grid}, the grid the features are stored at"
            )
        if self.gate.budget_unit == "layers":
            low, high = min(self.model.gate.exits), max(self.model.gate.exits)
            outside = [b for b in self.gate.compute_budgets if not low <= b <= high]
            if outside:
                raise ValueError(
                    f"gate.compute_budgets {outside} (mean layers per image) must lie within the gate "
                    f"exits' range {low}..{high} (model.gate.exits)"
                )
        return self

    @model_validator(mode="after")
    def _init_weights(self) -> Config:
        if self.parent.init.mode == "backbone" and not self.model.backbone.weights:
            raise ValueError(
                "parent.init.mode 'backbone' needs model.backbone.weights (a local file of pretrained "
                "weights); use parent.init.mode 'scratch' to start from random weights"
            )
        return self

    @model_validator(mode="after")
    def _datasets_known(self) -> Config:
        names = [("data.train", self.data.train), ("data.val", self.data.val), ("depth.dataset", self.depth.dataset)]
        names += [(f"evaluation.datasets[{i}]", ref) for i, ref in enumerate(self.evaluation.datasets)]
        names = [(key, ref) for key, ref in names if isinstance(ref, str)]
        if not names:
            return self
        from ecom2f.data.registry import registered_datasets, unknown_dataset_message  # imports torch: only when used

        known = set(registered_datasets())
        for key, name in names:
            if name not in known:
                raise ValueError(
                    f"{key}: {unknown_dataset_message(name)} (or give a spec: {{format, image_root, json, png_root}})"
                )
        return self

    @model_validator(mode="after")
    def _precision_for_device(self) -> Config:
        if self.solver.precision == "fp16" and not self.ray.use_gpu:
            raise ValueError("solver.precision 'fp16' needs GPUs (ray.use_gpu true); use 'fp32' or 'bf16' on CPU")
        return self
