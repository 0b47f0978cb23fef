"""Drawing primitives of the synthetic generator: shape masks and textures.

All functions work on a pixel grid ``[S, S]`` and return arrays of that shape; they
are pure (randomness comes in as arguments) so the generator stays deterministic.
"""

from __future__ import annotations

import numpy as np

# name, RGB colour, texture of each thing class (dataset ids 1..7).
THING_CLASSES = (
    ("circle", (220, 40, 40), "plain"),
    ("square", (40, 170, 60), "stripes"),
    ("triangle", (40, 80, 220), "checker"),
    ("diamond", (230, 200, 30), "dots"),
    ("cross", (200, 50, 200), "plain"),
    ("ring", (30, 200, 210), "stripes"),
    ("star", (245, 130, 20), "checker"),
)
# Stuff classes get ids after a gap, so loaders must map non-contiguous ids.
STUFF_CLASSES = (
    (10, "sky", (150, 190, 235)),
    (11, "ground", (110, 95, 60)),
    (12, "wall", (150, 150, 150)),
)


def shape_mask(kind: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """bool [S, S]: the shape of a given kind, centred at (cx, cy), size r, rotated by angle."""
    dx, dy = xx - cx, yy - cy
    cos, sin = np.cos(angle), np.sin(angle)
    x, y = cos * dx + sin * dy, -sin * dx + cos * dy
    dist = np.hypot(x, y)
    if kind == "circle":
        return dist <= r
    if kind == "square":
        return np.maximum(np.abs(x), np.abs(y)) <= 0.8 * r
    if kind == "diamond":
        return np.abs(x) + np.abs(y) <= 1.1 * r
    if kind == "triangle":
        # Inside when the projection on every edge normal is within the inradius.
        normals = np.deg2rad([-90.0, 30.0, 150.0])
        proj = np.stack([x * np.cos(a) + y * np.sin(a) for a in normals])
        return proj.max(axis=0) <= 0.55 * r
    if kind == "cross":
        arm = 0.32 * r
        return ((np.abs(x) <= arm) & (np.abs(y) <= r)) | ((np.abs(y) <= arm) & (np.abs(x) <= r))
    if kind == "ring":
        return (dist <= r) & (dist >= 0.55 * r)
    if kind == "star":
        theta = np.arctan2(y, x)
        return dist <= r * (0.45 + 0.55 * ((np.cos(5 * theta) + 1) / 2) ** 2)
    raise ValueError(f"unknown shape {kind!r}; known: {[c[0] for c in THING_CLASSES]}")


def texture(kind: str, xx: np.ndarray, yy: np.ndarray, period: float, angle: float) -> np.ndarray:
    """float [S, S] in [-1, 1]: a class texture pattern."""
    if kind == "plain":
        return np.zeros_like(xx, dtype=np.float64)
    u = np.cos(angle) * xx + np.sin(angle) * yy
    v = -np.sin(angle) * xx + np.cos(angle) * yy
    if kind == "stripes":
        return np.sign(np.sin(2 * np.pi * u / period))
    if kind == "checker":
        return np.sign(np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period))
    if kind == "dots":
        return np.where(np.hypot((u % period) - period / 2, (v % period) - period / 2) < period / 4, 1.0, -0.3)
    raise ValueError(f"unknown texture {kind!r}")


def bricks(xx: np.ndarray, yy: np.ndarray, height: float) -> np.ndarray:
    """float [S, S]: -1 on mortar lines, +1 on bricks (rows offset by half a brick)."""
    row = np.floor(yy / height)
    shifted = xx + (row % 2) * height
    mortar = ((yy % height) < 1.0) | ((shifted % (2 * height)) < 1.0)
    return np.where(mortar, -1.0, 1.0)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """float [S, S] in about [-1, 1]: bilinear upsampling of a coarse random grid."""
    coarse = rng.uniform(-1, 1, size=(cells + 1, cells + 1))
    t = np.linspace(0, cells, size)
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]
