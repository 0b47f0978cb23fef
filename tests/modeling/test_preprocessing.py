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


def test_normalize_batch_normalises_on_the_model_device_and_zeroes_the_padding():
    """A collated uint8 batch: the same pixels as normalize_and_pad of the unpadded images, padding 0."""
    from ecom2f.modeling import normalize_batch
    from tests.modeling.tiny import tiny_model

    model = tiny_model()
    a = torch.randint(0, 256, (3, 32, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    b = torch.randint(0, 256, (3, 20, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    images = torch.full((2, 3, 32, 64), 7, dtype=torch.uint8)  # the collate's padding value does not matter
    images[0, :, :32, :40], images[1, :, :20, :64] = a, b
    padding = torch.ones((2, 32, 64), dtype=torch.bool)
    padding[0, :32, :40], padding[1, :20, :64] = False, False

    pixels = normalize_batch(images, padding, model)
    expected, _ = normalize_and_pad([a, b], model.config.pixel_mean, model.config.pixel_std, 32)
    assert pixels.dtype == torch.float32 and pixels.device == model.device
    torch.testing.assert_close(pixels, expected, rtol=0, atol=0)
    assert pixels[0, :, :, 40:].abs().sum() == 0 and pixels[1, :, 20:].abs().sum() == 0
    # By hand: (pixel - mean) / std, channel by channel.
    mean, std = model.config.pixel_mean, model.config.pixel_std
    assert pixels[1, :, 0, 0].tolist() == pytest.approx([(float(b[c, 0, 0]) - mean[c]) / std[c] for c in range(3)])
