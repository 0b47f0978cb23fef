"""``Predictor`` on a CUDA device (fp32 and bf16) against the same run on the CPU (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from ecom2f.steps.predict.predictor import Predictor
from tests.predict.conftest import PLANTED, sample_images

pytestmark = pytest.mark.gpu


def test_cuda_predictions_equal_the_cpu_ones(tiny_run):
    images = sample_images()
    cpu = Predictor.from_run(tiny_run, device="cpu").predict(images, budget="layers_3")
    gpu = Predictor.from_run(tiny_run, device="cuda")
    assert gpu.device.type == "cuda"
    on_gpu = gpu.predict(images, budget="layers_3")
    assert [p.depth for p in on_gpu] == PLANTED["layers_3"]
    for cuda_result, cpu_result in zip(on_gpu, cpu):
        assert cuda_result.panoptic[0].device.type == "cpu"  # results come back to the host
        assert (cuda_result.panoptic[0] != cpu_result.panoptic[0]).float().mean() < 0.01
        torch.testing.assert_close(cuda_result.instances.scores, cpu_result.instances.scores, atol=1e-3, rtol=1e-3)
    bf16 = Predictor.from_run(tiny_run, device="cuda", precision="bf16").predict(images, depth=4)
    assert all(p.depth == 4 and p.instances.scores.dtype == torch.float32 for p in bf16)
