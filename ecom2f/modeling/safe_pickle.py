"""Read weight files without running code from them.

detectron2 and Mask2Former ship weights as plain pickles: detectron2's ImageNet ``R-50.pkl``
holds numpy arrays, Mask2Former's converted Swin ``.pkl`` holds torch tensors pickled by
the standard ``pickle`` module. A plain ``pickle.load`` runs whatever callable the file names
(``os.system`` included), so these are read with an unpickler that resolves only the globals
such files need: numpy's array/dtype/scalar rebuilders, ``collections.OrderedDict``, and
torch's tensor rebuild path, whose storage bytes (a legacy ``torch.save`` stream) are read
with ``torch.load(weights_only=True)``. Everything else is refused, naming the global and
the file. torch files (``torch.save``, zip or legacy) go through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import collections
import importlib
import io
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

__all__ = ["WeightsFileError", "UnsafePickleError", "load_safe_pickle", "load_state_dict_file"]

# The first object of a legacy (pre-zip) torch.save file.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class WeightsFileError(ValueError):
    """A weights file cannot be read as a state dict; the message names the file."""


class UnsafePickleError(WeightsFileError, pickle.UnpicklingError):
    """A pickle names a global outside the allow-list; nothing from it was called."""


def _numpy_module(suffix: str):
    # numpy 2 moved numpy.core to numpy._core; pickles written by either name both occur.
    try:
        return importlib.import_module(f"numpy._core.{suffix}")
    except ImportError:  # numpy 1.x
        return importlib.import_module(f"numpy.core.{suffix}")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Protocol-2 pickles store bytes as ``_codecs.encode(str, "latin1")``; no other codec is needed."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1")


def _load_storage(data: bytes) -> torch.storage.TypedStorage:
    """``torch.storage._load_from_bytes`` without its full unpickle: the bytes are a legacy torch.save stream."""
    if not isinstance(data, bytes):
        raise UnsafePickleError(f"torch storage bytes expected, got {type(data).__name__}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        try:
            storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as error:
            raise UnsafePickleError(
                f"a tensor's storage bytes are not a plain torch storage ({type(error).__name__}: {error})"
            ) from error
    if not isinstance(storage, torch.storage.TypedStorage):
        raise UnsafePickleError(f"a tensor's storage holds a {type(storage).__name__}, not a typed torch storage")
    return storage


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """``torch._utils._rebuild_tensor_v2`` for storages from :func:`_load_storage`, without hooks."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise UnsafePickleError(f"a tensor is rebuilt from a {type(storage).__name__}, not a typed torch storage")
    if backward_hooks:
        raise UnsafePickleError("a tensor carries backward hooks (callables); weights never do")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        # set_ checks that size/stride/offset stay inside the storage.
        return torch._utils._rebuild_tensor_v2(
            storage, int(storage_offset), tuple(size), tuple(stride), False, collections.OrderedDict()
        )


def _allowed_globals() -> dict[tuple[str, str], object]:
    multiarray, numeric = _numpy_module("multiarray"), _numpy_module("numeric")
    allowed: dict[tuple[str, str], object] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): _latin1_encode,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch.storage", "_load_from_bytes"): _load_storage,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, handle, source: str) -> None:
        # latin1 reads Python 2 pickles of numpy arrays (detectron2's MSRA weights), as detectron2 does.
        super().__init__(handle, encoding="latin1")
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source!r} refers to {module}.{name}, which a weights pickle never needs; "
                "refusing to load it (only numpy arrays, torch tensors and plain containers are allowed). "
                "Only load files from sources you trust."
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._source!r} uses persistent ids ({pid!r}); it is not a plain pickle")


def load_safe_pickle(path: str | Path):
    """The object pickled in ``path`` (only the first pickle of the file), with globals restricted.

    Raises:
        UnsafePickleError: the file names a global outside the allow-list.
        WeightsFileError: the file is not a pickle (or is truncated).
    """
    path = Path(path)
    with path.open("rb") as handle:
        try:
            return _RestrictedUnpickler(handle, str(path)).load()
        except UnsafePickleError as error:
            if str(path) in str(error):
                raise
            raise UnsafePickleError(f"{str(path)!r}: {error}; refusing to load it") from error
        except Exception as error:  # corrupt data surfaces as many types (EOFError, KeyError, ...)
            raise WeightsFileError(
                f"{str(path)!r} is not a readable pickle ({type(error).__name__}: {error}); "
                "expected a detectron2/Mask2Former .pkl or a torch.save file"
            ) from error


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsFileError(
            f"{str(path)!r} cannot be read by torch.load(weights_only=True) ({type(error).__name__}: {error})"
        ) from error


def _as_tensor(key: str, value, path: Path) -> torch.Tensor:
    if torch.is_tensor(value):
        return value
    if isinstance(value, (np.ndarray, np.generic, int, float, bool)):
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise WeightsFileError(f"{str(path)!r}: {key!r} holds an array of dtype {array.dtype}, not numbers")
        if not (array.flags.writeable and array.flags.c_contiguous and array.dtype.isnative):
            array = array.astype(array.dtype.newbyteorder("="), order="C", copy=True)
        return torch.from_numpy(array)
    raise WeightsFileError(f"{str(path)!r}: {key!r} holds a {type(value).__name__}, not an array or tensor")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict (``{name: CPU tensor}``) from a torch file or a detectron2/Mask2Former pickle.

    The format is read from the content, not the suffix: a zip is a ``torch.save`` file; a
    pickle whose first object is torch's legacy magic number is an old ``torch.save`` file;
    any other pickle is read by :func:`load_safe_pickle`. A ``{"model": ...}`` or
    ``{"state_dict": ...}`` wrapper is removed. Numpy values become tensors of the same dtype.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    if zipfile.is_zipfile(path):
        state = _torch_load(path)
    else:
        state = load_safe_pickle(path)
        if isinstance(state, int) and state == _TORCH_LEGACY_MAGIC:
            state = _torch_load(path)
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
        raise WeightsFileError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict of named arrays")
    return {key: _as_tensor(key, value, path) for key, value in state.items()}
