"""Inference with a trained run: the ``Predictor`` library API and the ``ecom2f predict`` batch job.

| file | what |
|---|---|
| ``predictor.py`` | :class:`Predictor` (parent + gates, images in, per-image :class:`Prediction` out), :func:`choose` |
| ``images.py`` | a user's image bytes -> RGB, or a reason to refuse it (pixel limit, unreadable) |
| ``sources.py`` | the job's input: folder, list file, s3:// prefix, image, COCO JSON |
| ``categories.py`` | contiguous class ids -> dataset categories (ids, names, thing/stuff) |
| ``formats.py`` | COCO panoptic / results JSON records, PNGs, the compact cell between stages |
| ``visualize.py`` | ``--vis`` overlays |
| ``layout.py`` | every file name of the job's output folder |
| ``stages.py`` | loader, model, writer (in process or as Ray Data stages) |
| ``job.py`` | :func:`run_predict`: checks, shards, resume, in process or on Ray, merge |
"""

from ecom2f.steps.predict.predictor import Prediction, Predictor

__all__ = ["Prediction", "Predictor"]
