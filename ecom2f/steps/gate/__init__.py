"""Step 3: gates that predict each image's depth from its coarsest encoder tokens.

| file | what |
|---|---|
| ``data.py`` | the depth table as the gate sees it (``GateTable``): features, per-exit PQ and cost; the split |
| ``trial.py`` | ``GateTrial``: one design, loss and beta |
| ``features.py`` | the gate's inputs from the cached features; the standardisation folded into the gate |
| ``losses.py`` | the training losses against the trade-off's utilities and targets |
| ``metrics.py`` | what a gate's picks realise on the table, beside the oracle and fixed depths |
| ``train.py`` | ``train_gate``: one trial on cached features (build, restore, batches, step, validate) |
| ``search.py`` | Ray Tune + ASHA over designs and betas |
| ``tune.py`` | ``tune_gates(config)``: the job; one gate per budget and the search's tables |
| ``select.py`` | the best trial within each compute budget |
| ``store.py`` | a chosen gate's files: weights and metadata |

The trade-off itself (utilities, ideal exits, soft targets, the oracle) is :mod:`ecom2f.tradeoff`.
"""

from ecom2f.steps.gate.train import train_gate
from ecom2f.steps.gate.tune import tune_gates

__all__ = ["train_gate", "tune_gates"]
