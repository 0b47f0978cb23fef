"""Inconsistent level layouts never make the kernels read or write out of bounds.

``spatial_shapes`` / ``level_start_index`` that disagree with ``value`` reach the kernels
whenever the Python check is skipped (``check_layout=False``, torch.compile, CUDA-graph
capture, direct ``torch.ops`` calls). The CPU op then refuses them with an error; the
CUDA op, which cannot read them without a device sync, skips every level whose tokens do
not lie inside ``value``: that level adds nothing and gets zero gradients. So the CUDA
result must equal the float64 oracle run on the same inputs with those levels removed.
The GPU check runs the CUDA test here under ``compute-sanitizer --tool memcheck``.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

import ecom2f.ops as ops
from tests.conftest import REPO_ROOT
from tests.ops.inputs import make_inputs
from tests.ops.oracle import ms_deform_attn_oracle
from tests.ops.test_ms_deform_attn import relative_error

# Four levels of 4 points with D = 8: a shape both CUDA kernels handle.
LEVELS = [(3, 4), (2, 2), (2, 3), (1, 2)]  # 12 + 4 + 6 + 2 = 24 tokens, starts 0, 12, 16, 22
N, Q, HEADS, HEAD_DIM, POINTS = 2, 7, 3, 8, 4
BIG = 2**32  # (BIG, BIG) has h * w = 2^64, which wraps to 0 in int64

# name -> (spatial_shapes, level_start_index, S, levels the CUDA kernels skip, CPU error)
BAD_LAYOUTS = {
    "start_past_the_end": (LEVELS, [0, 12, 16, 23], 24, {3}, r"level_start_index\[3\] = 23 is inconsistent"),
    "negative_start": (LEVELS, [0, -1, 16, 22], 24, {1}, r"level_start_index\[1\] = -1 is inconsistent"),
    "value_too_short": (LEVELS, [0, 12, 16, 22], 22, {3}, r"S=22 tokens but spatial_shapes\[0..3\] already sum to 24"),
    "zero_height": ([(3, 4), (2, 2), (0, 3), (1, 2)], [0, 12, 16, 22], 24, {2},
                    r"spatial_shapes\[2\] = \(0, 3\) must be positive"),
    "negative_width": ([(3, 4), (2, -2), (2, 3), (1, 2)], [0, 12, 16, 22], 24, {1},
                       r"spatial_shapes\[1\] = \(2, -2\) must be positive"),
    "size_overflows_int64": ([(3, 4), (2, 2), (2, 3), (BIG, BIG)], [0, 12, 16, 22], 24, {3},
                             r"spatial_shapes\[3\] = \(4294967296, 4294967296\) has a side above"),
    "start_near_int64_max": (LEVELS, [0, 12, 2**63 - 4, 22], 24, {2},
                             r"level_start_index\[2\] = 9223372036854775804 is inconsistent"),
    "every_level": (LEVELS, [100, 112, 116, 122], 24, {0, 1, 2, 3}, r"level_start_index\[0\] = 100 is inconsistent"),
}


def bad_inputs(name, dtype=torch.float32, device="cpu"):
    """Random inputs (some points off the map) with the named layout; value has S tokens."""
    shapes, starts, tokens, _, _ = BAD_LAYOUTS[name]
    value, _, _, locations, weights = make_inputs(N, Q, HEADS, HEAD_DIM, POINTS, LEVELS, dtype=dtype, seed=17)
    value = value[:, :tokens].contiguous()
    shapes = torch.tensor(shapes, dtype=torch.int64)
    starts = torch.tensor(starts, dtype=torch.int64)
    return [t.to(device) for t in (value, shapes, starts, locations, weights)]


def oracle_without_skipped_levels(name, value, locations, weights, grad_out):
    """float64 output and gradients with the skipped levels removed (their gradients zero)."""
    shapes, starts, _, skipped, _ = BAD_LAYOUTS[name]
    keep = [level for level in range(len(LEVELS)) if level not in skipped]
    inputs64 = [t.detach().cpu().double().requires_grad_() for t in (value, locations, weights)]
    out = ms_deform_attn_oracle(
        inputs64[0],
        torch.tensor(shapes, dtype=torch.int64)[keep],
        torch.tensor(starts, dtype=torch.int64)[keep],
        inputs64[1][:, :, :, keep],
        inputs64[2][:, :, :, keep],
    )
    if not keep:  # nothing sampled: the oracle's output does not depend on the inputs
        zeros = [torch.zeros_like(t) for t in inputs64]
        return out.detach(), zeros
    grads = torch.autograd.grad(out, inputs64, grad_out.double().cpu(), allow_unused=True)
    return out.detach(), [torch.zeros_like(t) if g is None else g for t, g in zip(inputs64, grads)]


@pytest.mark.parametrize("name", list(BAD_LAYOUTS))
def test_cpu_op_refuses_bad_layouts_by_name(name):
    # Called directly, as torch.compile and check_layout=False do: no Python check runs.
    value, shapes, starts, locations, weights = bad_inputs(name)
    message = BAD_LAYOUTS[name][4]
    with pytest.raises(RuntimeError, match=message):
        torch.ops.ecom2f.ms_deform_attn(value, shapes, starts, locations, weights)
    grad_out = torch.zeros(N, Q, HEADS * HEAD_DIM)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.ecom2f.ms_deform_attn_backward(grad_out, value, shapes, starts, locations, weights)


def test_python_check_refuses_sides_the_kernels_would_skip():
    value, shapes, starts, locations, weights = bad_inputs("size_overflows_int64")
    with pytest.raises(ValueError, match=r"spatial_shapes\[3\] = \(4294967296, 4294967296\) has a side above 2\^24"):
        ops.ms_deform_attn(value, shapes, starts, locations, weights)


def _level_in_bounds(start, height, width, tokens) -> bool:
    """The guard's contract, in Python's exact integers."""
    side = 2**24
    return start >= 0 and 0 < height <= side and 0 < width <= side and start + height * width <= tokens


def test_level_guard_matches_its_contract_without_overflow(tmp_path):
    # The kernels share one guard (level_in_bounds in ms_deform_attn_common.h); the CPU op
    # never reaches it with a bad layout, so it is compiled and checked here on its own,
    # on the int64 extremes where a naive start + h * w would overflow.
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    probe = tmp_path / "probe"
    subprocess.run(
        [compiler, "-std=c++17", "-O1", "-I", str(REPO_ROOT / "ecom2f/ops/csrc"),
         str(REPO_ROOT / "tests/ops/level_bounds_probe.cpp"), "-o", str(probe)],
        check=True, capture_output=True, timeout=120,
    )
    lo, hi, side = -(2**63), 2**63 - 1, 2**24
    cases = [
        (0, 3, 4, 12), (0, 3, 4, 11), (12, 2, 2, 16), (13, 2, 2, 16), (-1, 1, 1, 10), (0, 0, 5, 10),
        (0, 5, -1, 10), (16, 1, 1, 16), (0, side, side, 2**48), (1, side, side, 2**48), (0, side + 1, 1, hi),
        (0, BIG, BIG, hi), (0, 2**62, 4, hi), (hi, 1, 1, hi), (hi - 1, 1, 1, hi), (lo, 1, 1, hi),
        (0, hi, hi, hi), (0, lo, lo, hi), (0, 1, 1, 0), (0, 1, 1, -5), (5, 1, 1, 3),
    ]
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        start, height, width, tokens = (int(v) for v in torch.randint(-3, 40, (4,), generator=generator))
        cases.append((start, height, width, tokens))
    stdin = "".join(f"{s} {h} {w} {t}\n" for s, h, w, t in cases)
    result = subprocess.run([str(probe)], input=stdin, capture_output=True, text=True, check=True, timeout=60)
    got = [line == "1" for line in result.stdout.split()]
    expected = [_level_in_bounds(*case) for case in cases]
    wrong = [case for case, g, e in zip(cases, got, expected) if g != e]
    assert len(got) == len(cases) and not wrong, wrong


def _poison_cuda_cache(*sizes: int) -> None:
    """Leaves freed NaN-filled blocks of these byte sizes in the caching allocator, so an
    ``empty`` of the same size that a kernel fails to fill shows NaN instead of zeros."""
    blocks = [torch.full((size // 4,), float("nan"), device="cuda") for size in sizes for _ in range(3)]
    torch.cuda.synchronize()
    del blocks


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(BAD_LAYOUTS))
def test_cuda_bad_level_layout_stays_in_bounds(name, cuda_kernel):
    value, shapes, starts, locations, weights = bad_inputs(name, device="cuda")
    grad_out = torch.randn(N, Q, HEADS * HEAD_DIM, generator=torch.Generator().manual_seed(3)).cuda()
    expected_out, expected_grads = oracle_without_skipped_levels(name, value, locations, weights, grad_out)

    out = torch.ops.ecom2f.ms_deform_attn(value, shapes, starts, locations, weights)
    _poison_cuda_cache(locations.numel() * 4, weights.numel() * 4)
    grads = torch.ops.ecom2f.ms_deform_attn_backward(grad_out, value, shapes, starts, locations, weights)
    torch.cuda.synchronize()  # surfaces an illegal address here rather than in a later test

    assert relative_error(out.cpu(), expected_out) < 1e-5
    for label, got, want in zip(("value", "sampling_locations", "attention_weights"), grads, expected_grads):
        assert torch.isfinite(got).all(), label
        assert relative_error(got.cpu(), want) < 1e-5, label
    skipped = sorted(BAD_LAYOUTS[name][3])
    assert torch.equal(grads[1][:, :, :, skipped].cpu(), torch.zeros_like(expected_grads[1][:, :, :, skipped]).float())
    assert torch.equal(grads[2][:, :, :, skipped].cpu(), torch.zeros_like(expected_grads[2][:, :, :, skipped]).float())
