"""Weight pickles are read without running code from them (detectron2/Mask2Former .pkl files)."""

from __future__ import annotations

import collections
import os
import pickle

import numpy as np
import pytest
import torch

from ecom2f.config.model import BackboneConfig
from ecom2f.modeling.backbone import build_backbone, load_backbone_weights
from ecom2f.modeling.mask2former_checkpoint import load_mask2former_state_dict
from ecom2f.modeling.safe_pickle import UnsafePickleError, WeightsFileError, load_safe_pickle, load_state_dict_file

CALLS: list[str] = []


class Payload:
    """Would record a call when unpickled, if its reducer were ever resolved."""

    def __init__(self, target, args):
        self.target, self.args = target, args

    def __reduce__(self):
        return self.target, self.args


class ArbitraryObject:
    def __setstate__(self, state):
        CALLS.append("setstate")


def _record(tag):
    CALLS.append(tag)


def _dump(path, obj, protocol=pickle.DEFAULT_PROTOCOL):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=protocol)
    return path


@pytest.fixture(autouse=True)
def _no_calls():
    CALLS.clear()
    yield
    assert CALLS == []  # nothing from a refused file ever ran


def test_os_system_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = _dump(tmp_path / "evil.pkl", {"model": {"w": Payload(os.system, (f"touch {marker}",))}})
    for load in (load_safe_pickle, load_state_dict_file, load_mask2former_state_dict):
        with pytest.raises(UnsafePickleError, match=rf"evil\.pkl.*refers to (posix|os)\.system"):
            load(path)
    backbone = build_backbone(BackboneConfig(name="resnet18"))
    with pytest.raises(UnsafePickleError, match=r"(posix|os)\.system"):
        load_backbone_weights(backbone, path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_arbitrary_classes_and_callables_are_refused(tmp_path, protocol):
    cases = {
        "ArbitraryObject": ArbitraryObject(),
        "_record": Payload(_record, ("reduce",)),
        "eval": Payload(eval, ("__import__('os')",)),
        "getattr": Payload(getattr, ("text", "upper")),
    }
    for name, obj in cases.items():
        path = _dump(tmp_path / f"{name}.pkl", {"model": {"w": obj}}, protocol)
        # Protocols 0/1 rebuild plain objects through copy_reg._reconstructor, refused first.
        forbidden = "_reconstructor" if protocol < 2 and name == "ArbitraryObject" else name
        with pytest.raises(UnsafePickleError, match=rf"\.{forbidden}, which a weights pickle never needs"):
            load_safe_pickle(path)


def test_a_torch_storage_hiding_a_full_pickle_is_refused(tmp_path):
    # torch.storage._load_from_bytes is allowed, but its bytes go through torch.load(weights_only=True).
    inner = pickle.dumps(Payload(_record, ("inner",)))
    path = _dump(tmp_path / "storage.pkl", {"model": {"w": Payload(torch.storage._load_from_bytes, (inner,))}})
    with pytest.raises(UnsafePickleError, match=r"storage\.pkl.*storage bytes are not a plain torch storage"):
        load_safe_pickle(path)


def test_tensor_backward_hooks_are_refused(tmp_path):
    storage = torch.arange(4.0).untyped_storage()
    typed = torch.storage.TypedStorage(wrap_storage=storage, dtype=torch.float32, _internal=True)
    hooked = Payload(torch._utils._rebuild_tensor_v2, (typed, 0, (4,), (1,), False, collections.OrderedDict(h=1)))
    path = _dump(tmp_path / "hooks.pkl", {"model": {"w": hooked}})
    with pytest.raises(UnsafePickleError, match="backward hooks"):
        load_safe_pickle(path)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_containers_and_torch_tensors_round_trip(tmp_path, protocol):
    arrays = {
        "f32": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32),
        "f16": np.arange(5, dtype=np.float16),
        "f64_fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "big_endian": np.arange(4, dtype=">f4"),
        "i64_0d": np.array(7, dtype=np.int64),
        "u8": np.arange(3, dtype=np.uint8),
        "bool": np.array([True, False]),
        "scalar": np.float32(2.5),
    }
    tensors = {"view": torch.arange(12.0).view(3, 4)[:, 1:3], "index": torch.arange(49).view(7, 7)}
    payload = {
        "model": collections.OrderedDict({**arrays, **tensors}),
        "__author__": "third_party",
        "extra": [1, 2.0, "x", None, True, (3, b"raw"), {"nested": [np.arange(2)]}],
    }
    path = _dump(tmp_path / "ok.pkl", payload, protocol)
    loaded = load_safe_pickle(path)
    plain = pickle.loads(path.read_bytes())  # benign content: what an unrestricted load gives
    assert loaded["extra"][:5] == [1, 2.0, "x", None, True] and loaded["extra"][5] == (3, b"raw")
    assert isinstance(loaded["model"], collections.OrderedDict)
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded["model"][key], value)
        assert type(loaded["model"][key]) is type(plain["model"][key])
        assert np.asarray(loaded["model"][key]).dtype == np.asarray(plain["model"][key]).dtype
    for key, value in tensors.items():
        assert torch.equal(loaded["model"][key], value) and loaded["model"][key].dtype == value.dtype

    state = load_state_dict_file(tmp_path / "ok.pkl")
    assert list(state) == list(arrays) + list(tensors)
    assert all(torch.is_tensor(value) for value in state.values())
    assert state["big_endian"].dtype == torch.float32 and torch.equal(state["big_endian"], torch.arange(4.0))
    assert state["i64_0d"].shape == () and state["i64_0d"].item() == 7
    assert torch.equal(state["view"], tensors["view"])


def test_torch_files_zip_and_legacy_load_with_weights_only(tmp_path):
    state = {"a": torch.randn(2, 3), "b": torch.arange(3)}
    torch.save({"model": state}, tmp_path / "new.pth")
    torch.save(state, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    for name in ("new.pth", "old.pth"):
        loaded = load_state_dict_file(tmp_path / name)
        assert set(loaded) == {"a", "b"} and all(torch.equal(loaded[k], state[k]) for k in state)


def test_unreadable_files_are_named(tmp_path):
    text = tmp_path / "notes.pkl"
    text.write_text("this is not a pickle\n")
    with pytest.raises(WeightsFileError, match=r"notes\.pkl' is not a readable pickle"):
        load_state_dict_file(text)
    whole = pickle.dumps({"model": {"w": np.zeros((64, 64), np.float32)}})
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(WeightsFileError, match=r"truncated\.pkl' is not a readable pickle"):
        load_state_dict_file(truncated)
    objects = _dump(tmp_path / "objects.pkl", {"model": {"w": np.array([1, "a"], dtype=object)}})
    with pytest.raises(WeightsFileError, match=r"objects\.pkl.*'w' holds an array of dtype object"):
        load_state_dict_file(objects)
    listing = _dump(tmp_path / "list.pkl", [1, 2])
    with pytest.raises(WeightsFileError, match=r"list\.pkl' holds a list, not a state dict"):
        load_state_dict_file(listing)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_state_dict_file(tmp_path / "absent.pkl")
