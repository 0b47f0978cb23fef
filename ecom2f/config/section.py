"""The base of every configuration section, model and run alike."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Unknown keys are errors; assignments are validated too (``config.solver.base_lr = -1`` fails)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
