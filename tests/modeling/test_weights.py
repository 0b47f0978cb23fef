"""The one parent-weights loader (``ecom2f.modeling.weights``): every source form, strictness, messages."""

from __future__ import annotations

import io

import pytest
import torch

from ecom2f.modeling import load_parent_weights
from tests.modeling.tiny import tiny_config, tiny_model


def _saved(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_bytes_path_and_state_dict_load_the_same_model_in_eval_mode(tmp_path):
    trained = tiny_model(seed=3)
    state = trained.state_dict()
    path = tmp_path / "weights.pth"
    path.write_bytes(_saved(state))
    for source in (_saved(state), path, str(path), state):
        model = load_parent_weights(tiny_config(), source)
        assert not model.training
        loaded = model.state_dict()
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_weights_of_another_model_fail_naming_what_differs():
    state = tiny_model().state_dict()
    fewer_queries = tiny_config(decoder={"hidden_dim": 64, "num_queries": 12, "layers": 3, "heads": 4, "ffn_dim": 128})
    with pytest.raises(ValueError) as raised:
        load_parent_weights(fewer_queries, _saved(state), origin="s3://b/run/parent/w.pth")
    assert str(raised.value) == (
        "the weights s3://b/run/parent/w.pth do not fit the configured model: 2 shape mismatches "
        "(decoder.query_embed.weight (16, 64) where the model has (12, 64), decoder.query_feat.weight (16, 64) "
        "where the model has (12, 64)); were they trained with another model section? Use the model section of "
        "the run that trained them")
    fewer_layers = tiny_config(decoder={"hidden_dim": 64, "num_queries": 16, "layers": 2, "heads": 4, "ffn_dim": 128})
    with pytest.raises(ValueError) as raised:
        load_parent_weights(fewer_layers, state)
    assert "18 unexpected keys (decoder.transformer_cross_attention_layers.2." in str(raised.value)
    assert "missing keys" not in str(raised.value)
    del state["gate.head.weight"]
    with pytest.raises(ValueError, match=r"1 missing keys \(gate\.head\.weight\)"):
        load_parent_weights(tiny_config(), state)


def test_sources_that_hold_no_state_dict_fail_with_a_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights file at .*missing.pth"):
        load_parent_weights(tiny_config(), tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="are not a torch.save'd state dict"):
        load_parent_weights(tiny_config(), b"not a checkpoint")
    with pytest.raises(ValueError, match="hold a dict, not a state dict of tensors"):
        load_parent_weights(tiny_config(), _saved({"model": tiny_model().state_dict(), "step": 3}))
