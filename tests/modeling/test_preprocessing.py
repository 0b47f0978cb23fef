from __future__ import annotations

import pytest
import torch

from ecom2f.modeling.preprocessing import normalize_and_pad


def test_normalises_then_pads_with_zero_to_the_divisibility():
    a = torch.full((3, 30, 40), 100, dtype=torch.uint8)
    b = torch.full((3, 20, 70), 200, dtype=torch.uint8)
    pixels, sizes = normalize_and_pad([a, b], [100.0, 100.0, 100.0], [2.0, 4.0, 5.0], 32)
    assert pixels.shape == (2, 3, 32, 96) and sizes == [(30, 40), (20, 70)]
    assert pixels[0, :, :30, :40].abs().sum() == 0
    assert pixels[1, :, :20, :70].reshape(3, -1)[:, 0].tolist() == [50.0, 25.0, 20.0]
    assert pixels[1, :, 20:].abs().sum() == 0 and pixels[0, :, :, 40:].abs().sum() == 0


def test_rejects_bad_images():
    with pytest.raises(ValueError, match=r"image 0 has shape \(30, 40\)"):
        normalize_and_pad([torch.zeros(30, 40)], [0, 0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="at least one image"):
        normalize_and_pad([], [0, 0, 0], [1, 1, 1])
