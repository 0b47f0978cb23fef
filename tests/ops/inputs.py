"""Random inputs for the deformable-attention tests."""

from __future__ import annotations

import torch


def level_layout(level_shapes: list[tuple[int, int]], device="cpu"):
    """``[(h, w), ...]`` -> (spatial_shapes ``[L, 2]``, level_start_index ``[L]``, S)."""
    shapes = torch.tensor(level_shapes, dtype=torch.int64, device=device)
    sizes = shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    return shapes, starts, int(sizes.sum())


def make_inputs(n, q, heads, head_dim, points, level_shapes, dtype=torch.float64, seed=0, device="cpu",
                outside=0.25, requires_grad=False):
    """Inputs with some sampling locations outside the map (``outside`` beyond [0, 1])."""
    generator = torch.Generator().manual_seed(seed)
    shapes, starts, s = level_layout(level_shapes)
    levels = len(level_shapes)
    value = torch.randn(n, s, heads, head_dim, generator=generator, dtype=torch.float64)
    locations = torch.rand(n, q, heads, levels, points, 2, generator=generator, dtype=torch.float64)
    locations = locations * (1 + 2 * outside) - outside
    weights = torch.rand(n, q, heads, levels, points, generator=generator, dtype=torch.float64)
    tensors = [t.to(device=device, dtype=dtype) for t in (value, locations, weights)]
    if requires_grad:
        tensors = [t.requires_grad_() for t in tensors]
    value, locations, weights = tensors
    return value, shapes.to(device), starts.to(device), locations, weights


def random_configs(count: int, seed: int = 1234):
    """Deterministic random problem sizes covering the edge cases of the kernel."""
    generator = torch.Generator().manual_seed(seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=generator))]

    configs = []
    for _ in range(count):
        levels = pick([1, 2, 3, 4])
        configs.append(
            dict(
                n=pick([1, 2, 3]),
                q=pick([1, 7, 33]),
                heads=pick([1, 2, 3, 8]),
                head_dim=pick([1, 5, 8, 13, 32, 40]),
                points=pick([1, 2, 4, 8]),
                level_shapes=[(pick([1, 2, 5, 9]), pick([1, 3, 6, 11])) for _ in range(levels)],
            )
        )
    return configs
