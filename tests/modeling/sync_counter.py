"""Counts the Python-level reads of tensor data that would make the host wait on a GPU.

On a GPU, ``.item()``, ``.tolist()``, ``bool(t)``, ``int(t)``, ``float(t)``, ``.cpu()``,
``.numpy()``, ``nonzero``, one-argument ``torch.where``, boolean-mask indexing and the like
block the host until the device's queue has drained. On the CPU they cost nothing, so a CPU
test cannot time them; it can count them. :class:`SyncCounter` wraps those entry points
while it is active and records each call with the first caller outside torch.

Tensors that live on the host in production (the data loader's targets, the result of a
counted ``.cpu()``) are registered with :meth:`SyncCounter.host`; reading them is free and not
counted. Calls made by a counted call (``__array__`` calling ``numpy``) count once.
What it cannot see: reads inside C++ (``torch.equal`` and ``.to("cpu")`` are patched or
left out respectively; grep the code for the latter).
"""

from __future__ import annotations

import threading
import traceback
import weakref
from pathlib import Path

import torch

_TENSOR_METHODS = (
    "item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy", "nonzero",
    "is_nonzero", "masked_select", "__getitem__", "__setitem__",
)
_TORCH_FUNCTIONS = ("nonzero", "where", "equal", "allclose", "is_nonzero", "masked_select", "unique")
_TORCH_ROOT = str(Path(torch.__file__).parent)


def _has_bool_tensor(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in items)


def _counts(name: str, args: tuple) -> bool:
    """Whether this call reads data on the host (the indexing and ``where`` cases depend on arguments)."""
    if name in ("__getitem__", "__setitem__"):
        return _has_bool_tensor(args[1])
    if name == "torch.where":
        return len(args) == 1
    return True


class SyncCounter:
    """Context manager; ``calls`` lists ``(name, "file:line")`` of every counted read."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self._host: dict[int, weakref.ref] = {}
        self._saved: list[tuple[object, str, object, bool]] = []
        self._local = threading.local()

    def host(self, *tensors: torch.Tensor) -> None:
        """Mark tensors whose data live on the host in production: reading them is free."""
        for tensor in tensors:
            self._host[id(tensor)] = weakref.ref(tensor)

    def _is_host(self, value) -> bool:
        ref = self._host.get(id(value)) if isinstance(value, torch.Tensor) else None
        return ref is not None and ref() is value

    def _caller(self) -> str:
        for frame in reversed(traceback.extract_stack()):
            if not frame.filename.startswith(_TORCH_ROOT) and not frame.filename.endswith("sync_counter.py"):
                return f"{Path(frame.filename).name}:{frame.lineno}"
        return "?"

    def _wrap(self, name: str, original):
        counter = self

        def wrapper(*args, **kwargs):
            inside = getattr(counter._local, "inside", False)
            counted = not inside and _counts(name, args) and not (args and counter._is_host(args[0]))
            if counted:
                counter.calls.append((name, counter._caller()))
            counter._local.inside = True
            try:
                result = original(*args, **kwargs)
            finally:
                counter._local.inside = inside
            if name == "cpu" and isinstance(result, torch.Tensor):
                counter.host(result)
            return result

        return wrapper

    def __enter__(self) -> SyncCounter:
        for method in _TENSOR_METHODS:
            own = method in torch.Tensor.__dict__
            original = getattr(torch.Tensor, method)
            self._saved.append((torch.Tensor, method, torch.Tensor.__dict__.get(method), own))
            setattr(torch.Tensor, method, self._wrap(method, original))
        for function in _TORCH_FUNCTIONS:
            original = getattr(torch, function)
            self._saved.append((torch, function, original, True))
            setattr(torch, function, self._wrap(f"torch.{function}", original))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, original, own in reversed(self._saved):
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
        self._saved.clear()
