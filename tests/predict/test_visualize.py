"""``--vis`` overlays: a segment's pixels are blended with its colour, the rest of the image is left as
it was, and the header (depth, GFLOPs, budget) is drawn in its box at the top left."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ecom2f.steps.predict.visualize import ALPHA, overlay_jpeg, segment_colour


def test_overlay_blends_each_segment_and_leaves_the_rest():
    rgb = np.full((120, 160, 3), 100, dtype=np.uint8)
    ids = np.zeros((120, 160), dtype=np.int32)
    ids[60:110, 90:150] = 1
    result = {"size": (120, 160), "depth": 3, "budget": "layers_3", "total_gflops": 1.5, "ids": ids,
              "segments": [{"id": 1, "category_id": 0, "isthing": True}, {"id": 2, "category_id": 1, "isthing": False}]}
    categories = [{"id": 5, "name": "cat", "isthing": 1}, {"id": 9, "name": "sky", "isthing": 0}]
    jpeg = overlay_jpeg(rgb, result, categories, layers=6, quality=95)
    shown = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(float)
    assert shown.shape == rgb.shape
    expected = (1 - ALPHA) * 100 + ALPHA * np.array(segment_colour(0))
    corner = shown[95:108, 92:100].reshape(-1, 3).mean(0)  # inside the segment, away from its label
    np.testing.assert_allclose(corner, expected, atol=4)
    np.testing.assert_allclose(shown[100:118, 5:60].reshape(-1, 3).mean(0), [100, 100, 100], atol=2)
    assert shown[2:8, 2:40].mean() < 60  # the header's black box (white text inside)
