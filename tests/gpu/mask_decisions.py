"""Mask2Former's masked attention makes hard decisions: where the previous layer's mask logit
is below 0, a query does not attend to that pixel. Two runs that agree to 1e-6 (CPU against
CUDA, a batch against one image alone) can therefore disagree on a pixel whose logit sits
within 1e-6 of 0, and from that decoder layer on their outputs differ by ~1e-2. Random weights
put many logits near 0, so such near-ties are common.

:class:`MaskLogits` records the logits behind each layer's decision; :func:`first_divergence`
finds the first layer where two runs decide differently and how close to 0 those logits
were. A comparison of decoder outputs is then meaningful only when the runs decided alike;
a flip far from 0 is a real difference.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

# A flip is a near-tie when both runs' logits there are this small relative to the layer's largest.
NEAR_TIE = 1e-3


class MaskLogits:
    """Context manager: per decoder prediction, ``decisions`` (the attention mask the next layer
    gets, ``[N, Q, h*w]`` bool, True = not attended) and ``logits`` behind them (``[N, Q, h*w]``
    at the mask's resolution). The decision is ``sigmoid(logit) < 0.5``, which in float32 is
    not quite ``logit < 0``: a logit within ~3e-8 of 0 has a sigmoid that rounds to 0.5."""

    def __init__(self, model) -> None:
        self.decoder = model.decoder
        self.decisions: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []

    def __enter__(self) -> MaskLogits:
        original = type(self.decoder).prediction_heads.__get__(self.decoder)

        def recording(output, mask_features, attn_mask_size):
            result = original(output, mask_features, attn_mask_size)
            logits = F.interpolate(result[1].float(), size=attn_mask_size, mode="bilinear", align_corners=False)
            self.logits.append(logits.flatten(2).detach())
            batch, queries = logits.shape[:2]
            # [N * heads, Q, h*w], every head alike: keep the first head's.
            self.decisions.append(result[2].view(batch, -1, queries, logits.shape[2] * logits.shape[3])[:, 0])
            return result

        self.decoder.prediction_heads = recording  # an instance attribute shadows the method
        return self

    def __exit__(self, *exc) -> None:
        del self.decoder.prediction_heads


@dataclasses.dataclass(frozen=True)
class Divergence:
    layer: int  # index of the first prediction whose decisions differ
    flips: int
    margin: float  # largest |logit| at a flipped pixel, relative to the layer's largest |logit|

    @property
    def near_tie(self) -> bool:
        return self.margin <= NEAR_TIE


def first_divergence(a: MaskLogits, b: MaskLogits, rows_a=slice(None), rows_b=slice(None)):
    """The first prediction where runs ``a`` (images ``rows_a``) and ``b`` (``rows_b``) decide
    differently, or None."""
    assert len(a.decisions) == len(b.decisions), (len(a.decisions), len(b.decisions))
    for layer in range(len(a.decisions)):
        flipped = (a.decisions[layer][rows_a] != b.decisions[layer][rows_b]).cpu()
        if flipped.any():
            x, y = a.logits[layer][rows_a].double().cpu(), b.logits[layer][rows_b].double().cpu()
            margin = torch.maximum(x.abs(), y.abs())[flipped].max() / x.abs().max().clamp_min(1e-30)
            return Divergence(layer, int(flipped.sum()), float(margin))
    return None
