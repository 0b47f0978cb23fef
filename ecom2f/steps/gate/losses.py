"""The gate's training losses over logits ``[B, E]`` against the batch's utilities ``u [B, E]``
(``q_k - beta * cost_k``, :mod:`ecom2f.tradeoff`):

- ``cross_entropy``: against the hard labels, the ideal exits (ties toward fewer layers);
- ``soft_cross_entropy``: against the soft targets ``softmax(u / temperature)``;
- ``expected_utility``: ``-sum_k p_k u_k`` with ``p = softmax(logits)``: the gate's own
  expected utility, so it weighs how much a wrong pick costs, not only whether it is wrong;
- ``regression``: the logits regress ``u`` (mean squared error); the pick is the largest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ecom2f import tradeoff
from ecom2f.steps.gate.trial import DEFAULT_TEMPERATURE, LOSSES

__all__ = ["gate_loss"]


def gate_loss(name: str, logits: torch.Tensor, utility: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE,
              labels: torch.Tensor | None = None, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Scalar loss ``name`` of ``logits [B, E]`` against ``utility [B, E]``.

    ``labels [B]`` (ideal exit indices) and ``targets [B, E]`` (soft targets) are what the
    trade-off gives for these images; ``train_gate`` computes them once from the table's inputs
    (so float32 rounding cannot break a tie). Left out, they are derived from ``utility`` here.
    """
    if name == "cross_entropy":
        if labels is None:
            labels = torch.from_numpy(tradeoff.first_best(utility.detach().cpu().numpy()))
        return F.cross_entropy(logits, labels)
    if name == "soft_cross_entropy":
        if targets is None:
            soft = tradeoff.soft_targets(utility.detach().cpu().numpy(), temperature)
            targets = torch.from_numpy(soft).to(logits.dtype)
        return -(targets * torch.log_softmax(logits, -1)).sum(-1).mean()
    if name == "expected_utility":
        return -(torch.softmax(logits, -1) * utility).sum(-1).mean()
    if name == "regression":
        return F.mse_loss(logits, utility)
    raise ValueError(f"gate loss {name!r}: expected one of {list(LOSSES)}")
