"""``check_layout=False``: no host read of spatial_shapes / level_start_index (no device sync)."""

from __future__ import annotations

import inspect

import pytest
import torch

import ecom2f.ops as ops
from tests.ops.inputs import make_inputs


@pytest.fixture
def tolist_calls(monkeypatch):
    """Counts Tensor.tolist calls: the host read that is a device sync on CUDA."""
    calls = []
    original = torch.Tensor.tolist

    def counting(self):
        calls.append(tuple(self.shape))
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting)
    return calls


@pytest.fixture
def args():
    return list(make_inputs(2, 5, 2, 4, 3, [(3, 4), (2, 2)], dtype=torch.float32))


def test_check_layout_false_reads_nothing_back(args, tolist_calls):
    out = ops.ms_deform_attn(*args, check_layout=False)
    assert tolist_calls == []
    checked = ops.ms_deform_attn(*args)
    assert tolist_calls, "the default must read the layout (else this test proves nothing)"
    assert torch.equal(out, checked)


def test_check_layout_is_keyword_only():
    parameter = inspect.signature(ops.ms_deform_attn).parameters["check_layout"]
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.default is True
    # The reference accepts it too, so it can stand in for the op (ecom2f.modeling.bench).
    assert "check_layout" in inspect.signature(ops.ms_deform_attn_reference).parameters


def test_check_layout_false_still_has_the_cpu_kernel_check(args):
    # The C++ CPU kernel reads the layout from host memory (no sync) and still refuses it.
    args[2] = torch.tensor([0, 13])
    with pytest.raises(RuntimeError, match=r"level_start_index\[1\] = 13 is inconsistent"):
        ops.ms_deform_attn(*args, check_layout=False)
    # The cheap checks (ranks, shapes, dtypes, devices) always run.
    args[2] = torch.tensor([0])
    with pytest.raises(ValueError, match="level_start_index has 1 entries but spatial_shapes has 2 levels"):
        ops.ms_deform_attn(*args, check_layout=False)
