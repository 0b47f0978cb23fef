"""The ``solver`` section: Mask2Former's optimiser, schedule, clipping and precision."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ecom2f.config.section import Section


class ClipGradientsConfig(Section):
    enabled: bool = True
    # full_model: one norm over all parameters (Mask2Former's setting), the only kind DeepSpeed clips.
    type: Literal["full_model"] = "full_model"
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
    # Mixed precision by torch autocast with fp32 weights, gradients and optimizer state.
    # auto: bf16 on GPUs that have it, fp16 (with a gradient scaler) on older GPUs, fp32 on CPU;
    # bf16 also runs on CPU workers.
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
