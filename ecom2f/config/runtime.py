"""The ``storage`` and ``ray`` sections: where a run's artifacts live and where it computes."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ecom2f.config.section import Section


class StorageSection(Section):
    root: str = "./runs"  # local path or s3://bucket/prefix
    run: str = "default"  # the run's folder under root
    # A local root on a cluster of several nodes must be a filesystem every node mounts (NFS, EFS).
    shared_filesystem: bool = False
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
