"""The early-exit Mask2Former on CUDA: the same numbers as on the CPU, bf16 autocast close to
fp32, per-image depths independent of the batch, and the all-exits pass equal to one forward
per depth.

Models: the demo's (``configs/demo_cpu.yaml``, ResNet-18, 64 channels) and Mask2Former R50
(``configs/coco_panoptic_r50.yaml``, 256 channels, 100 queries, 9 decoder layers), with
seeded random weights whose deformable-attention offsets are non-zero (the default init
samples exactly at the reference points, which would hide layout bugs). The shared
Mask2Former reference (../shared) does not travel to the GPU machine, so the reference here is
the CPU run of the same model, which tests/modeling compares with that reference.
Decoder outputs are compared up to the first layer whose mask decisions differ between the
two runs, which must be a near-tie (see mask_decisions.py).
"""

from __future__ import annotations

import copy

import pytest
import torch

# The project's names this file uses, in one place.
from ecom2f.config import load_config
from ecom2f.modeling import build_model
from tests.conftest import REPO_ROOT
from tests.gpu.mask_decisions import MaskLogits, first_divergence

pytestmark = pytest.mark.gpu

CONFIGS = {
    "demo": (REPO_ROOT / "configs" / "demo_cpu.yaml", []),
    "r50": (REPO_ROOT / "configs" / "coco_panoptic_r50.yaml", ["model.backbone.weights=null", "parent.init.mode=scratch"]),
}
SIZES = {"demo": (128, 160), "r50": (256, 320)}  # multiples of 32, as Mask2Former pads to
COMPARED = ("pred_logits", "pred_masks", "mask_features")
# fp32 against fp32 with TF32 off: only summation orders differ (cuDNN vs the CPU's convolutions,
# the CUDA kernel vs the CPU kernel), ~1e-6 per op through ~80 layers.
FP32_TOLERANCE = 1e-4
# bf16 autocast against fp32 (relative L2 error): bf16 keeps 8 significant bits (2^-9 relative
# rounding per op) and the errors of ~80 layers add up, to ~1e-2 on random weights.
BF16_TOLERANCE = 5e-2

_models: dict[str, torch.nn.Module] = {}


def cpu_model(name: str) -> torch.nn.Module:
    """The seeded random model (on the CPU, eval mode), built once per name."""
    if name not in _models:
        path, overrides = CONFIGS[name]
        torch.manual_seed(0)
        model = build_model(load_config(path, overrides).model).eval()
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for layer in model.pixel_decoder.encoder.layers:
                attn = layer.self_attn
                attn.sampling_offsets.weight.copy_(torch.randn(attn.sampling_offsets.weight.shape, generator=generator) * 0.02)
                attn.attention_weights.weight.copy_(torch.randn(attn.attention_weights.weight.shape, generator=generator) * 0.02)
        _models[name] = model
    return _models[name]


def cuda_model(name: str) -> torch.nn.Module:
    return copy.deepcopy(cpu_model(name)).cuda()


def pixels(name: str, batch: int, seed: int = 0) -> torch.Tensor:
    height, width = SIZES[name]
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def max_relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a - e| / max |e| (both upcast to float64 on the CPU)."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


def l2_relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-30))


def forward(model, images, **kwargs) -> tuple[dict, MaskLogits]:
    """``forward_raw`` and each decoder layer's attention-mask decisions with their logits."""
    with MaskLogits(model) as recorded:
        out = model.forward_raw(images, **kwargs)
    return out, recorded


def predictions(out: dict, rows=slice(None)) -> list[dict]:
    """The decoder's predictions in order (before its first layer, ..., final), rows selected."""
    steps = [*out["aux_outputs"], out]
    return [{key: step[key][rows] for key in ("pred_logits", "pred_masks")} for step in steps]


def decoder_errors(a: tuple, b: tuple, rows_a=slice(None), rows_b=slice(None), record=None) -> dict[str, float]:
    """Max relative errors of the decoder's predictions of runs ``a`` and ``b`` (``(out, logits)``),
    up to and including the first whose mask decisions differ (a near-tie; else AssertionError):
    later layers attend to different pixels, so their outputs are no longer comparable."""
    divergence = first_divergence(a[1], b[1], rows_a, rows_b)
    compared = predictions(a[0], rows_a), predictions(b[0], rows_b)
    if divergence is not None:
        if record is not None:
            record("mask_decisions_diverge", str(divergence))
        assert divergence.near_tie, f"mask decisions differ far from their threshold: {divergence}"
        compared = compared[0][: divergence.layer + 1], compared[1][: divergence.layer + 1]
    errors = {}
    for i, (x, y) in enumerate(zip(*compared)):
        for key in x:
            errors[f"prediction_{i}.{key}"] = max_relative(x[key], y[key])
    return errors


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_cuda_forward_matches_the_cpu_run(name, exact_fp32, record_property):
    images, depths = pixels(name, 2), [6, 3]
    expected = forward(cpu_model(name), images, depth=depths)
    got = forward(cuda_model(name), images.cuda(), depth=depths)
    errors = {"mask_features": max_relative(got[0]["mask_features"], expected[0]["mask_features"])}
    for level, (a, e) in enumerate(zip(got[0]["multi_scale_features"], expected[0]["multi_scale_features"])):
        errors[f"multi_scale_{level}"] = max_relative(a, e)
    errors.update(decoder_errors(got, expected, record=record_property))
    worst = max(errors, key=errors.get)
    record_property("max_relative_error", f"{errors[worst]:.1e} ({worst})")
    assert torch.equal(got[0]["depths"].cpu(), torch.tensor(depths))
    assert errors[worst] < FP32_TOLERANCE, errors


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_bf16_autocast_agrees_with_fp32(name, exact_fp32, record_property):
    model, images = cuda_model(name), pixels(name, 2, seed=1).cuda()
    reference = model.forward_raw(images, depth=6)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        mixed = model.forward_raw(images, depth=6)
    errors = {key: l2_relative(mixed[key], reference[key]) for key in COMPARED}
    record_property("l2_relative_errors", {k: f"{v:.1e}" for k, v in errors.items()})
    assert all(torch.isfinite(mixed[key]).all() for key in COMPARED)
    assert max(errors.values()) < BF16_TOLERANCE, errors
    # Not vacuous: bf16 really ran (two fp32 runs agree to ~1e-6).
    assert max(errors.values()) > 1e-5, errors


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_per_image_depths_in_a_batch_equal_each_image_alone(name, exact_fp32, record_property):
    model, images, depths = cuda_model(name), pixels(name, 3, seed=2).cuda(), [2, 6, 4]
    batched = forward(model, images, depth=depths)
    errors = {}
    for i, depth in enumerate(depths):
        alone = forward(model, images[i : i + 1], depth=depth)
        # The encoder state after the image's last layer is what the pixel decoder read.
        errors[f"image{i}.encoder"] = max_relative(batched[0]["encoder_layer_out"][depth - 1][i],
                                                   alone[0]["encoder_layer_out"][-1][0])
        errors[f"image{i}.mask_features"] = max_relative(batched[0]["mask_features"][i], alone[0]["mask_features"][0])
        found = decoder_errors(batched, alone, slice(i, i + 1), slice(0, 1), record=record_property)
        errors.update({f"image{i}.{key}": value for key, value in found.items()})
    worst = max(errors, key=errors.get)
    record_property("max_relative_error", f"{errors[worst]:.1e} ({worst})")
    assert errors[worst] < FP32_TOLERANCE, errors


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_all_exits_pass_equals_one_forward_per_depth(name, exact_fp32, record_property):
    model, images = cuda_model(name), pixels(name, 2, seed=3).cuda()
    exits = model.config.gate.exits
    together = model.forward_all_exits(images, exits)
    assert together["exits"] == list(exits)
    worst = 0.0
    for k in exits:
        separate = model.forward_raw(images, depth=k)
        for key in COMPARED:
            worst = max(worst, max_relative(together["outputs"][k][key], separate[key]))
    record_property("max_relative_error", f"{worst:.1e}")
    # One batch on one device through the same kernels: identical up to summation order.
    assert worst < FP32_TOLERANCE
