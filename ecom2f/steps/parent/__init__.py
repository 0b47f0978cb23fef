"""Step 1: the parent, trained so its shared decoder works after any encoder depth.

| file | what |
|---|---|
| ``job.py`` | ``launch_parent_training(config)``: preflight, then Ray Train runs the loop on every worker |
| ``train.py`` | ``train_parent``: the loop one worker runs (build, restore, loader, step, report, save) |
| ``build.py`` | the model, its objective, AdamW, the schedule and DeepSpeed of one worker |
| ``objective.py`` | what a micro-step computes: the model at the step's exit(s), the weighted loss |
| ``loader.py`` | the rank's endless batches from where the run stands |
| ``state.py`` | what a checkpoint holds besides DeepSpeed's state; resume checks |
| ``progress.py`` | losses kept on the device between reports |
| ``init.py`` | where the weights start: scratch, backbone file, released Mask2Former |
| ``session.py``, ``ray_session.py``, ``metrics_log.py`` | where the loop reports: locally or through Ray Train |
"""

from ecom2f.steps.parent.job import launch_parent_training, prepare_parent_run
from ecom2f.steps.parent.train import train_parent

__all__ = ["launch_parent_training", "prepare_parent_run", "train_parent"]
