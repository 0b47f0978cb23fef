"""The ``serving`` section: using a trained run's parent and gates on new images.

``serving.*`` holds what ``ecom2f predict`` (a batch job over a user's images) and ``ecom2f serve``
(a Ray Serve deployment) share; ``serving.predict`` and ``serving.serve`` what only one of them uses.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ecom2f.config.section import Section

__all__ = ["PredictSection", "ServeSection", "ServingConfig"]

Task = Literal["panoptic", "instance", "semantic"]


class PredictSection(Section):
    batch_size: int = Field(8, ge=1)  # images per model call (grouped by size and depth inside)
    shard_size: int = Field(64, ge=1)  # images per shard: the unit that is written, and skipped on a rerun
    ray_threshold: int = Field(1000, ge=0)  # s3:// inputs with more images than this run on Ray Data
    num_actors: int | None = Field(None, ge=1)  # model actors with Ray; None: one per GPU (CPU clusters: 1)
    vis_quality: int = Field(90, ge=1, le=100)  # JPEG quality of the --vis overlays


class ServeSection(Section):
    host: str = "127.0.0.1"  # where the HTTP proxy listens; 0.0.0.0 exposes it on every interface
    port: int = Field(8000, ge=1, le=65535)
    route_prefix: str = "/"
    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, gt=0.0)  # per replica
    num_gpus: float = Field(0.0, ge=0.0)  # per replica; > 0 puts the model on a GPU
    max_batch_size: int = Field(8, ge=1)  # serve.batch: requests per model call
    batch_wait_timeout_s: float = Field(0.02, ge=0.0)  # how long a batch waits to fill
    max_ongoing_requests: int = Field(32, ge=1)  # per replica; at least max_batch_size
    max_request_mb: float = Field(20.0, gt=0.0)  # larger bodies get HTTP 413

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> ServeSection:
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"serving.serve.max_ongoing_requests {self.max_ongoing_requests} is below max_batch_size "
                f"{self.max_batch_size}: a batch could never fill; raise max_ongoing_requests"
            )
        if not self.route_prefix.startswith("/"):
            raise ValueError(f"serving.serve.route_prefix {self.route_prefix!r} must start with '/'")
        return self


class ServingConfig(Section):
    budget: str | None = None  # the gate (a <run>/gates/<budget> folder name); None: the only one
    precision: Literal["fp32", "bf16"] = "fp32"  # the network's; post-processing stays fp32
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    tasks: list[Task] = Field(default_factory=lambda: ["panoptic", "instance", "semantic"])
    max_pixels: int = Field(40_000_000, ge=1)  # larger decoded images are refused (skipped / HTTP 413)
    predict: PredictSection = Field(default_factory=PredictSection)
    serve: ServeSection = Field(default_factory=ServeSection)

    @model_validator(mode="after")
    def _some_task(self) -> ServingConfig:
        if not self.tasks:
            raise ValueError("serving.tasks is empty; give at least one of panoptic, instance, semantic")
        return self
