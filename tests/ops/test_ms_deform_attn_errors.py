"""Bad input to the deformable-attention op fails early with a message naming the problem."""

from __future__ import annotations

import pytest
import torch

import ecom2f.ops as ops
from tests.ops.inputs import make_inputs


@pytest.fixture
def args():
    return list(make_inputs(2, 5, 2, 4, 3, [(3, 4), (2, 2)], dtype=torch.float32))


def call(args):
    return ops.ms_deform_attn(*args)


def test_wrong_rank_names_the_argument(args):
    args[0] = args[0].flatten(2)
    with pytest.raises(ValueError, match=r"value must be \[N, S, H, D\] \(rank 4\), got shape \(2, 16, 8\)"):
        call(args)
    good = list(make_inputs(2, 5, 2, 4, 3, [(3, 4), (2, 2)], dtype=torch.float32))
    good[4] = good[4][..., 0]
    with pytest.raises(ValueError, match=r"attention_weights must be \[N, Q, H, L, P\] \(rank 5\)"):
        call(good)


def test_token_count_must_match_spatial_shapes(args):
    args[0] = args[0][:, :-1]
    with pytest.raises(ValueError, match=r"value has S=15 tokens but spatial_shapes \[\[3, 4\], \[2, 2\]\] sums to 16"):
        call(args)


def test_level_start_index_must_match_spatial_shapes(args):
    args[2] = torch.tensor([0, 11])
    with pytest.raises(ValueError, match=r"level_start_index\[1\] = 11 is inconsistent with spatial_shapes \(expected 12"):
        call(args)


def test_level_counts_must_agree(args):
    args[2] = torch.tensor([0])
    with pytest.raises(ValueError, match="level_start_index has 1 entries but spatial_shapes has 2 levels"):
        call(args)


def test_mixed_dtypes(args):
    args[3] = args[3].double()
    with pytest.raises(ValueError, match=r"sampling_locations has dtype torch.float64 but value has torch.float32"):
        call(args)
    good = list(make_inputs(2, 5, 2, 4, 3, [(3, 4), (2, 2)], dtype=torch.float32))
    good[1] = good[1].int()
    with pytest.raises(ValueError, match=r"spatial_shapes must be int64, got torch.int32; use .long\(\)"):
        call(good)


def test_mixed_devices(args):
    args[4] = args[4].to("meta")
    with pytest.raises(ValueError, match=r"all inputs must be on one device, got .*attention_weights on meta"):
        call(args)


def test_shape_mismatch_between_locations_and_value(args):
    args[3] = args[3][:, :, :1]
    with pytest.raises(ValueError, match=r"sampling_locations has shape \(2, 5, 1, 2, 3, 2\), expected \[N=2, Q, H=2"):
        call(args)
    good = list(make_inputs(2, 5, 2, 4, 3, [(3, 4), (2, 2)], dtype=torch.float32))
    good[4] = good[4][:, :, :, :, :2]
    with pytest.raises(ValueError, match=r"attention_weights has shape \(2, 5, 2, 2, 2\), expected"):
        call(good)


def test_the_compiled_op_checks_too(args):
    # Direct callers of torch.ops.ecom2f.ms_deform_attn skip the Python checks; the C++
    # kernel must still refuse inputs that would make it read out of bounds.
    args[0] = args[0][:, :-1]
    with pytest.raises(RuntimeError, match=r"value has S=15 tokens but spatial_shapes\[0..1\] already sum to 16"):
        torch.ops.ecom2f.ms_deform_attn(*args)
    good = list(make_inputs(2, 5, 2, 4, 3, [(3, 4), (2, 2)], dtype=torch.float32))
    good[2] = torch.tensor([0, 13])
    with pytest.raises(RuntimeError, match=r"level_start_index\[1\] = 13 is inconsistent"):
        torch.ops.ecom2f.ms_deform_attn(*good)
