"""The evaluation: fixed depths, the oracle and the chosen gates on the validation split.

| file | what |
|---|---|
| ``job.py`` | ``evaluate(config)``: the Ray Data job and its artifacts under ``<run>/eval`` |
| ``stages.py`` | the pipeline's stages: load images (CPU), predict per variant (GPU), score (CPU) |
| ``summary.py`` | per-image rows -> dataset metrics per variant, and the oracle |
"""

from ecom2f.steps.evaluate.job import evaluate

__all__ = ["evaluate"]
