"""Step 3: gates that predict each image's depth from its coarsest encoder tokens.

| file | what |
|---|---|
| ``data.py`` | the depth table as the gate sees it: features, per-exit quality and cost |
| ``train.py`` | ``train_gate``: one trial (one design, one beta) on cached features |
| ``tune.py`` | ``tune_gates(config)``: Ray Tune + ASHA over designs and betas, one gate per budget |
| ``select.py`` | the best trial within each compute budget |
| ``store.py`` | a chosen gate's files: weights and metadata |
"""

from ecom2f.steps.gate.train import train_gate
from ecom2f.steps.gate.tune import tune_gates

__all__ = ["train_gate", "tune_gates"]
