"""MSDeformAttn under torch.autocast: half-precision projections, fp32 sampling geometry."""

from __future__ import annotations

import copy

import pytest
import torch

from ecom2f.modeling.deformable_attention import MSDeformAttn
from tests.ops.inputs import level_layout
from tests.ops.recorder import MsdaInputRecorder

# Mask2Former / Deformable DETR names: checkpoints load by these.
PARAMETER_NAMES = [
    "sampling_offsets.weight", "sampling_offsets.bias",
    "attention_weights.weight", "attention_weights.bias",
    "value_proj.weight", "value_proj.bias",
    "output_proj.weight", "output_proj.bias",
]
LEVELS = [(6, 167), (3, 84)]  # a 167-wide level, where bf16 locations would be ~0.3 px off


def relative_error(actual, expected):
    actual, expected = actual.detach().double(), expected.detach().double()
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.fixture
def module():
    torch.manual_seed(0)
    attention = MSDeformAttn(d_model=32, levels=len(LEVELS), heads=4, points=2)
    with torch.no_grad():  # the init zeroes attention_weights.weight; make every projection matter
        for parameter in attention.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return attention


@pytest.fixture
def inputs():
    generator = torch.Generator().manual_seed(1)
    shapes, starts, s = level_layout(LEVELS)
    query = torch.randn(2, 64, 32, generator=generator)
    reference = torch.rand(2, 64, len(LEVELS), 2, generator=generator)
    value_input = torch.randn(2, s, 32, generator=generator)
    return query, reference, value_input, shapes, starts


def test_autocast_keeps_offsets_weights_and_locations_fp32(module, inputs):
    with MsdaInputRecorder() as fp32_run:
        expected = module(*inputs)
    with MsdaInputRecorder() as bf16_run, torch.autocast("cpu", torch.bfloat16):
        out = module(*inputs)
    assert bf16_run.dtypes == [(torch.bfloat16, torch.float32, torch.float32)]
    assert out.dtype == torch.bfloat16
    # The geometry was computed in fp32 from the same fp32 inputs and weights: bit-identical.
    (fp32_call,), (bf16_call,) = fp32_run.calls, bf16_run.calls
    assert torch.equal(bf16_call[3], fp32_call[3]), "sampling locations"
    assert torch.equal(bf16_call[4], fp32_call[4]), "attention weights"
    # The value went through a bf16 value_proj: one bf16 rounding of its fp32 result.
    assert relative_error(bf16_call[0], fp32_call[0]) < 2**-7
    # Three bf16 roundings (value_proj, the op's output, output_proj), each at most the
    # unit roundoff 2^-8 relative to the largest element: < 1.2e-2 (measured 5e-3).
    assert relative_error(out, expected) < 2e-2


def test_parameters_and_their_gradients_stay_fp32(module, inputs):
    reference_module = copy.deepcopy(module)
    expected = reference_module(*inputs)
    expected.square().sum().backward()
    with torch.autocast("cpu", torch.bfloat16):
        out = module(*inputs)
    out.float().square().sum().backward()
    assert [name for name, _ in module.named_parameters()] == PARAMETER_NAMES
    assert list(module.state_dict()) == PARAMETER_NAMES
    pairs = zip(module.named_parameters(), reference_module.named_parameters())
    for (name, parameter), (_, expected_parameter) in pairs:
        assert parameter.dtype == parameter.grad.dtype == torch.float32, name
        # The same few bf16 roundings as the output, now on both passes (measured <= 5e-3).
        assert relative_error(parameter.grad, expected_parameter.grad) < 2e-2, name


def test_float64_module_under_autocast_stays_float64(module, inputs):
    module = module.double()
    query, reference, value_input, shapes, starts = inputs
    with MsdaInputRecorder() as recorder, torch.autocast("cpu", torch.bfloat16):
        out = module(query.double(), reference.double(), value_input.double(), shapes, starts)
    assert recorder.dtypes == [(torch.float64,) * 3] and out.dtype == torch.float64


@pytest.mark.parametrize("autocast", [False, True])
def test_forward_does_not_read_the_layout_back(module, inputs, monkeypatch, autocast):
    # check_layout=False: no .tolist() of spatial_shapes / level_start_index, which on
    # CUDA would be a host-device sync in every layer.
    calls = []
    original = torch.Tensor.tolist

    def counting(self):
        calls.append(tuple(self.shape))
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting)
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        module(*inputs)
    assert calls == []


def test_compiled_module_under_autocast_matches_eager(module, inputs):
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    with torch.autocast("cpu", torch.bfloat16):
        eager_out = module(*inputs)
        compiled_out = compiled(*inputs)
    assert compiled_out.dtype == torch.bfloat16
    assert relative_error(compiled_out, eager_out) < 2**-7
