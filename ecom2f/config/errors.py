"""Turn pydantic's validation errors into messages a user can act on.

Every line names the dotted key (``solver.lr_schedule.steps[1]``); an unknown key comes
with the closest valid names (difflib); a bad value comes with the value and what is
allowed.
"""

from __future__ import annotations

import difflib
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from ecom2f.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration file, override or value is invalid; the message lists every problem."""


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _strip_annotated(annotation: Any) -> tuple[Any, tuple]:
    if get_origin(annotation) is Annotated:
        base, *metadata = get_args(annotation)
        inner, more = _strip_annotated(base)
        return inner, tuple(metadata) + more
    return annotation, ()


def _union_member(annotation: Any, tag: str) -> Any | None:
    """The member of a union that pydantic names ``tag`` in an error location, if any."""
    for member in get_args(annotation):
        inner, metadata = _strip_annotated(member)
        tags = {getattr(item, "tag", None) for item in metadata}
        names = {getattr(inner, "__name__", None), repr(inner)}
        if tag in tags or tag in names:
            return inner
    return None


def _field_annotation(model: type[BaseModel], key: str) -> Any | None:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            if field.metadata:  # pydantic moves Annotated metadata (e.g. a Discriminator) here
                return Annotated[(field.annotation, *field.metadata)]
            return field.annotation
    return None


def valid_keys(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def describe_location(root: type[BaseModel], loc: tuple) -> tuple[str, type[BaseModel] | None, Any]:
    """``("solver", "lr_schedule", "steps", 1)`` -> ``("solver.lr_schedule.steps[1]", holder, annotation)``.

    ``holder`` is the model owning the last key (its valid names make the suggestions);
    ``annotation`` is the type expected at the location (None when unknown). Union-member
    names that pydantic inserts into locations are dropped from the path.
    """
    path = ""
    annotation: Any = root
    holder: type[BaseModel] | None = None
    for item in loc:
        annotation, _ = _strip_annotated(annotation)
        consumed = False
        while _is_union(annotation):  # Optional[...] around a tagged union: unwrap, then match
            member = _union_member(annotation, item) if isinstance(item, str) else None
            if member is not None:
                annotation, consumed = member, True
                break
            members = [m for m in get_args(annotation) if m is not type(None)]
            annotation = _strip_annotated(members[0])[0] if len(members) == 1 else None
        if consumed:
            continue
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            holder = annotation
            path = f"{path}.{item}" if path else str(item)
            annotation = _field_annotation(annotation, str(item))
            continue
        origin = get_origin(annotation)
        if isinstance(item, int) and origin in (list, tuple, set):
            path += f"[{item}]"
            args = get_args(annotation)
            homogeneous = origin is not tuple or (len(args) == 2 and args[1] is Ellipsis)
            annotation = args[0] if homogeneous else args[min(item, len(args) - 1)]
        elif origin is Literal:
            continue  # pydantic names Literal members in mixed int/str literals; not a key
        else:
            path = f"{path}.{item}" if path else str(item)
            annotation = get_args(annotation)[1] if origin is dict else None
    annotation, _ = _strip_annotated(annotation)
    if _is_union(annotation):
        members = [m for m in get_args(annotation) if m is not type(None)]
        annotation = _strip_annotated(members[0])[0] if len(members) == 1 else annotation
    return path, holder, annotation


def _closest(word: str, choices: list[str]) -> list[str]:
    return difflib.get_close_matches(word, choices, n=3, cutoff=0.6)


def _quoted(names: list) -> str:
    return ", ".join(repr(name) for name in names)


def _line(root: type[BaseModel], error: dict) -> str:
    loc = tuple(error["loc"])
    path, holder, annotation = describe_location(root, loc)
    kind = error["type"]
    value = error.get("input")
    message = error["msg"]
    if kind == "extra_forbidden":
        names = valid_keys(holder) if holder else []
        close = _closest(str(loc[-1]), names)
        if close:
            return f"{path}: unknown key; did you mean {' or '.join(repr(name) for name in close)}?"
        return f"{path}: unknown key; valid keys here: {_quoted(names)}"
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind == "literal_error":
        choices = list(get_args(annotation)) if get_origin(annotation) is Literal else []
        hint = ""
        if isinstance(value, str):
            close = _closest(value, [str(choice) for choice in choices])
            hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{path}: {value!r} is not allowed; allowed: {_quoted(choices)}{hint}"
    if kind in ("value_error", "assertion_error"):
        text = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if not path or text.startswith(path.split("[")[0] + ".") or text.startswith(path + " "):
            return text
        return f"{path}: {text}"
    return f"{path}: {value!r} is not allowed: {message}"


def format_validation_error(error: ValidationError, root: type[BaseModel], source: str) -> ConfigError:
    """One ConfigError listing every problem of ``error``, one line each."""
    lines = []
    for item in error.errors(include_url=False):
        line = _line(root, item)
        if line not in lines:
            lines.append(line)
    return ConfigError(f"invalid configuration ({source}):\n" + "\n".join(f"  - {line}" for line in lines))


__all__ = ["ConfigError", "describe_location", "format_validation_error", "valid_keys"]
