"""The deformable transformer encoder of Mask2Former's pixel decoder, with early exits.

An image's *depth* is how many encoder layers it runs (0..num_layers). Images of one
batch may have different depths: layer ``l`` runs only on the images whose depth is
larger than ``l``, so each image gets exactly what it would get alone, and the compute
saved is real.

Depths and level shapes are host integers: deciding what to run never reads a device
tensor (which would stall the GPU until its queue drains). Only depths handed over as a
tensor (the gate's choice at inference) are read back, once per forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ecom2f.modeling.deformable_attention import MSDeformAttn

__all__ = [
    "EncoderInputs",
    "DeformableEncoderLayer",
    "DeformableEncoder",
    "DeformableTransformerEncoderOnly",
    "check_depths",
    "host_ints_to_device",
]

Depths = int | Sequence[int] | torch.Tensor


def host_ints_to_device(values: Sequence[int] | Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    """An int64 tensor of host integers on ``device``, without blocking the host.

    A plain ``torch.tensor(values, device="cuda")`` waits for the device's queue to drain;
    an asynchronous copy from pinned memory does not (the caching host allocator keeps the
    pinned block alive until the copy has run).
    """
    tensor = torch.tensor(values, dtype=torch.long)
    if torch.device(device).type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


@dataclass
class EncoderInputs:
    """Everything the encoder layers need, in Mask2Former's token order (coarsest level first).

    tokens: ``[N, S, C]`` input-projected features, no positional encoding.
    pos: ``[N, S, C]`` sine encoding plus the level embedding.
    spatial_shapes: ``[L, 2]`` int64 (h, w), coarsest first, on the tokens' device.
    level_start_index: ``[L]`` int64.
    reference_points: ``[N, S, L, 2]`` (x, y) pixel centres normalised to ``[0, 1]``.
    shapes: the same ``(h, w)`` per level as host integers; ``spatial_shapes`` and
        ``level_start_index`` are built from them (:meth:`build`), so code that needs the
        sizes reads these instead of the device tensors.

    Construction checks ``shapes`` against the tensors' sizes (host metadata only).
    """

    tokens: torch.Tensor
    pos: torch.Tensor
    spatial_shapes: torch.Tensor
    level_start_index: torch.Tensor
    reference_points: torch.Tensor
    shapes: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        self.shapes = tuple((int(h), int(w)) for h, w in self.shapes)
        bad = [shape for shape in self.shapes if shape[0] <= 0 or shape[1] <= 0]
        if not self.shapes or bad:
            raise ValueError(f"encoder level shapes {list(self.shapes)} must be one or more positive (h, w)")
        levels = len(self.shapes)
        n, s = self.tokens.shape[:2]
        total = sum(h * w for h, w in self.shapes)
        if self.tokens.dim() != 3 or s != total:
            raise ValueError(
                f"encoder tokens have shape {tuple(self.tokens.shape)}; expected [N, S={total}, C] "
                f"for the level shapes {list(self.shapes)}"
            )
        expected = {
            "pos": (tuple(self.tokens.shape), tuple(self.pos.shape)),
            "spatial_shapes": ((levels, 2), tuple(self.spatial_shapes.shape)),
            "level_start_index": ((levels,), tuple(self.level_start_index.shape)),
            "reference_points": ((n, s, levels, 2), tuple(self.reference_points.shape)),
        }
        for name, (want, got) in expected.items():
            if want != got:
                raise ValueError(f"encoder input {name} has shape {got}; expected {want}")

    @classmethod
    def build(cls, tokens, pos, reference_points, shapes: Sequence[tuple[int, int]]) -> EncoderInputs:
        """Inputs whose ``spatial_shapes`` / ``level_start_index`` come from the host ``shapes``."""
        shapes = [(int(h), int(w)) for h, w in shapes]
        starts, total = [], 0
        for h, w in shapes:
            starts.append(total)
            total += h * w
        device = tokens.device
        spatial_shapes = host_ints_to_device(shapes, device)
        level_start_index = host_ints_to_device(starts, device)
        return cls(tokens, pos, spatial_shapes, level_start_index, reference_points, tuple(shapes))

    def select(self, index: torch.Tensor) -> EncoderInputs:
        """The same inputs for the images ``index`` (``[M]`` int64 on the tokens' device) only."""
        return EncoderInputs(
            self.tokens.index_select(0, index),
            self.pos.index_select(0, index),
            self.spatial_shapes,
            self.level_start_index,
            self.reference_points.index_select(0, index),
            self.shapes,
        )


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention, then a ReLU FFN; ``[N, S, C] -> [N, S, C]``."""

    def __init__(self, d_model: int = 256, ffn_dim: int = 1024, levels: int = 3, heads: int = 8, points: int = 4):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, levels, heads, points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, reference_points, spatial_shapes, level_start_index):
        attended = self.self_attn(x + pos, reference_points, x, spatial_shapes, level_start_index)
        x = self.norm1(x + attended)
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class DeformableEncoder(nn.Module):
    """A stack of :class:`DeformableEncoderLayer` that can stop early, per image."""

    def __init__(self, num_layers: int, **layer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DeformableEncoderLayer(**layer_kwargs) for _ in range(num_layers))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(
        self, inputs: EncoderInputs, depths: Depths, keep_layer_outputs: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run each image through its first ``depths[i]`` layers.

        Args:
            inputs: see :class:`EncoderInputs`; batch ``N``.
            depths: one host int for every image, ``N`` host ints, or an ``[N]`` int64 tensor
                (read once: a device sync on GPU), each in ``0..num_layers``.
            keep_layer_outputs: also return the state after each executed layer.
        Returns:
            ``([N, S, C] final state of each image, [state after layer l for l < max depth])``.
            In a state after layer ``l``, images with depth ``<= l`` hold their final state.
        """
        batch = inputs.tokens.shape[0]
        depths = check_depths(depths, batch, self.num_layers)
        if self.num_layers and len(inputs.shapes) != self.layers[0].self_attn.levels:
            raise ValueError(
                f"the encoder attends over {self.layers[0].self_attn.levels} levels but got {len(inputs.shapes)} "
                f"level shapes {list(inputs.shapes)}"
            )
        x = inputs.tokens
        outputs = []
        for index in range(max(depths, default=0)):
            layer = self.layers[index]
            rows = [i for i, depth in enumerate(depths) if depth > index]
            if len(rows) == batch:
                x = layer(x, inputs.pos, inputs.reference_points, inputs.spatial_shapes, inputs.level_start_index)
            else:
                index_rows = host_ints_to_device(rows, x.device)
                part = inputs.select(index_rows)
                updated = layer(
                    x.index_select(0, index_rows), part.pos, part.reference_points, part.spatial_shapes,
                    part.level_start_index,
                )
                x = x.index_copy(0, index_rows, updated)
            if keep_layer_outputs:
                outputs.append(x)
        return x, outputs


def check_depths(depths: Depths, batch: int, num_layers: int) -> list[int]:
    """``depths`` as ``batch`` host ints in ``0..num_layers``, or ValueError naming the problem.

    An int or a sequence of ints is checked on the host; a tensor (int64, ``[batch]``) is
    read once with ``tolist`` (a device sync when it lives on a GPU).
    """
    if isinstance(depths, torch.Tensor):
        if depths.dtype != torch.int64 or depths.shape != (batch,):
            raise ValueError(
                f"depths must be an int64 tensor of shape [{batch}], got {depths.dtype} {tuple(depths.shape)}"
            )
        values = depths.tolist()
    elif _is_int(depths):
        values = [int(depths)] * batch
    else:
        values = list(depths)
        if not all(_is_int(value) for value in values):
            raise ValueError(f"depths {values} must be integers (one per image)")
        values = [int(value) for value in values]
        if len(values) != batch:
            raise ValueError(f"depth has {len(values)} entries for a batch of {batch} images; give one per image")
    if any(value < 0 or value > num_layers for value in values):
        raise ValueError(f"depth {values} must lie in 0..{num_layers} (the encoder has {num_layers} layers)")
    return values


def _is_int(value) -> bool:
    return hasattr(value, "__index__") and not isinstance(value, (bool, torch.Tensor))


class DeformableTransformerEncoderOnly(nn.Module):
    """Flattens the levels into tokens and owns the level embedding (Mask2Former's key layout)."""

    def __init__(self, d_model=256, heads=8, num_layers=6, ffn_dim=1024, levels=3, points=4) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(levels, d_model))
        self.encoder = DeformableEncoder(num_layers, d_model=d_model, ffn_dim=ffn_dim, levels=levels, heads=heads, points=points)
        nn.init.normal_(self.level_embed)
        for parameter in self.encoder.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        for layer in self.encoder.layers:
            layer.self_attn.reset_parameters()

    def flatten(self, srcs: list[torch.Tensor], pos_embeds: list[torch.Tensor]) -> EncoderInputs:
        """``srcs``/``pos_embeds``: per level ``[N, C, h, w]``, coarsest first."""
        tokens, pos, shapes = [], [], []
        for level, (src, pos_embed) in enumerate(zip(srcs, pos_embeds)):
            h, w = src.shape[-2:]
            shapes.append((h, w))
            tokens.append(src.flatten(2).transpose(1, 2))
            pos.append(pos_embed.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1))
        reference = reference_points(shapes, srcs[0].shape[0], len(shapes), srcs[0].device, srcs[0].dtype)
        return EncoderInputs.build(torch.cat(tokens, 1), torch.cat(pos, 1), reference, shapes)


def reference_points(shapes, batch: int, levels: int, device, dtype) -> torch.Tensor:
    """``[N, S, L, 2]``: every token's pixel centre (x, y) in ``[0, 1]``, repeated per level.

    ``shapes``: host ``(h, w)`` per level. No padding is masked (Mask2Former's inference),
    so valid ratios are 1.
    """
    points = []
    for h, w in shapes:
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
            torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
            indexing="ij",
        )
        points.append(torch.stack((ref_x.reshape(-1) / w, ref_y.reshape(-1) / h), -1))
    ref = torch.cat(points, 0).to(dtype)
    return ref[None, :, None, :].expand(batch, -1, levels, -1)
