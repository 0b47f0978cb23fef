"""Depths, level shapes and decoder masks handled without reading device tensors."""

from __future__ import annotations

import pytest
import torch

from ecom2f.modeling.deformable_encoder import EncoderInputs, check_depths, host_ints_to_device
from ecom2f.modeling.transformer_decoder import unmask_empty_queries
from tests.modeling.tiny import tiny_model


def test_unmask_empty_queries_equals_mask2formers_indexing():
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(6, 7, 5, generator=gen) < 0.7
    mask[0, 3] = True  # fully masked rows
    mask[4, :] = True
    mask[2, 1] = False  # a fully open row stays open
    reference = mask.clone()
    reference[torch.where(reference.sum(-1) == reference.shape[-1])] = False
    assert mask.all(-1).sum() >= 8
    assert torch.equal(unmask_empty_queries(mask), reference)
    assert not unmask_empty_queries(mask).all(-1).any()


@pytest.mark.parametrize(
    "depths, expected",
    [(3, [3, 3, 3]), ([0, 6, 2], [0, 6, 2]), ((1, 1, 1), [1, 1, 1]), (torch.tensor([4, 5, 6]), [4, 5, 6])],
)
def test_check_depths_gives_host_ints(depths, expected):
    assert check_depths(depths, 3, 6) == expected


@pytest.mark.parametrize(
    "depths, message",
    [
        (7, r"must lie in 0..6"),
        ([0, -1, 2], r"must lie in 0..6"),
        ([1, 2], r"2 entries for a batch of 3"),
        ([1.0, 2, 3], r"must be integers"),
        ([True, 2, 3], r"must be integers"),
        (torch.tensor([1, 2, 3], dtype=torch.int32), r"int64 tensor of shape \[3\]"),
    ],
)
def test_check_depths_rejects_bad_depths(depths, message):
    with pytest.raises(ValueError, match=message):
        check_depths(depths, 3, 6)


def _inputs(shapes, n=2, c=4, tokens=None):
    s = sum(h * w for h, w in shapes)
    tokens = torch.zeros(n, s, c) if tokens is None else tokens
    return EncoderInputs.build(tokens, torch.zeros_like(tokens), torch.zeros(n, tokens.shape[1], len(shapes), 2), shapes)


def test_encoder_inputs_build_the_level_tensors_from_host_shapes():
    inputs = _inputs([(2, 3), (4, 5), (1, 1)])
    assert inputs.shapes == ((2, 3), (4, 5), (1, 1))
    assert inputs.spatial_shapes.tolist() == [[2, 3], [4, 5], [1, 1]]
    assert inputs.level_start_index.tolist() == [0, 6, 26]
    assert inputs.spatial_shapes.dtype == inputs.level_start_index.dtype == torch.int64
    part = inputs.select(torch.tensor([1]))
    assert part.tokens.shape == (1, 27, 4) and part.shapes == inputs.shapes


def test_encoder_inputs_reject_inconsistent_shapes():
    with pytest.raises(ValueError, match=r"expected \[N, S=27, C\]"):
        _inputs([(2, 3), (4, 5), (1, 1)], tokens=torch.zeros(2, 26, 4))
    with pytest.raises(ValueError, match="positive"):
        _inputs([(2, 3), (0, 5)])
    tokens = torch.zeros(2, 6, 4)
    with pytest.raises(ValueError, match=r"reference_points has shape \(2, 6, 2, 2\); expected \(2, 6, 1, 2\)"):
        EncoderInputs.build(tokens, tokens, torch.zeros(2, 6, 2, 2), [(2, 3)])


def test_encoder_rejects_a_level_count_its_attention_was_not_built_for():
    model = tiny_model()
    with pytest.raises(ValueError, match="attends over 3 levels but got 2"):
        model.pixel_decoder.encoder(_inputs([(2, 3), (4, 5)], c=64), 1)


def test_model_inputs_carry_host_shapes_and_decode_takes_them():
    model = tiny_model()
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, 64, 96))
        inputs = model.pixel_decoder.encoder_inputs(model.pixel_decoder.project(features))
        assert inputs.shapes == ((2, 3), (4, 6), (8, 12))
        assert inputs.spatial_shapes.tolist() == [list(shape) for shape in inputs.shapes]
        mask_features, maps = model.pixel_decoder.decode(inputs.tokens, inputs.shapes, features)
        assert mask_features.shape[-2:] == (16, 24) and [m.shape[-2:] for m in maps] == [(2, 3), (4, 6), (8, 12)]
        with pytest.raises(TypeError, match="host"):
            model.pixel_decoder.decode(inputs.tokens, inputs.spatial_shapes, features)


def test_resolve_depths_stays_on_the_host_for_ints():
    from tests.modeling.sync_counter import SyncCounter

    model = tiny_model()
    with SyncCounter() as counter:
        assert model.resolve_depths(None, 2) == [6, 6]
        assert model.resolve_depths(3, 2) == [3, 3]
        assert model.resolve_depths([0, 5], 2) == [0, 5]
        assert host_ints_to_device([1, 2], torch.device("cpu")).dtype == torch.int64
    assert counter.calls == []
    logits = torch.tensor([[0.0, 9.0, 0, 0, 0], [0.0, 0, 0, 0, 9.0]])
    assert model.resolve_depths("gate", 2, logits) == [3, 6]
