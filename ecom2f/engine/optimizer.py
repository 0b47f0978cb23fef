"""AdamW that leaves alone the parameters the current step's exit did not reach.

At exit k the encoder layers deeper than k take no part in the loss. Under DDP (detectron2,
Mask2Former) their gradients stay ``None`` and AdamW skips them: no momentum step, no
weight decay. DeepSpeed instead fills missing gradients with zeros before reducing them
(every stage: ``_get_gradients_for_reduction`` at stage 0, the flat partitions of ZeRO 1/2),
so a plain AdamW would still move those layers by their momentum and decay them. This
optimizer restores DDP's semantics: the training loop tells it the deepest exit of the
step, and it steps only the parameter groups whose ``min_exit`` (see
:func:`~ecom2f.engine.param_groups.build_param_groups`) that exit reaches.
"""

from __future__ import annotations

import torch


class ExitAwareAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` whose :meth:`step` skips groups with ``min_exit > deepest exit``.

    Works on the groups DeepSpeed hands it: ZeRO 1/2 keep each group's dict (with our
    ``min_exit`` key) and replace its ``params`` by the flat fp32 partition, and call
    ``step`` with one group at a time; stage 0 calls it with all groups.
    """

    def __init__(self, params, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.deepest_exit: int | None = None  # None: step every group

    def set_exit(self, deepest_exit: int | None) -> None:
        """The deepest exit the coming update's losses came from (all exits of the step)."""
        self.deepest_exit = deepest_exit

    def step(self, closure=None):
        if self.deepest_exit is None:
            return super().step(closure)
        everything = self.param_groups
        self.param_groups = [g for g in everything if g.get("min_exit", 0) <= self.deepest_exit]
        try:
            return super().step(closure)
        finally:
            self.param_groups = everything
