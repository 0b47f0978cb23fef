"""YAML configuration files: ``_base_`` inheritance, deep merge, dot-path overrides.

- ``_base_: base.yaml`` (or a list) names files relative to the including file; bases
  load first (chains allowed, cycles are errors), then the file's own keys merge on top.
- Mappings merge key by key; lists and scalars replace. A mapping holding
  ``_replace_: true`` replaces the base's mapping wholesale instead of merging.
- Overrides ``solver.base_lr=2e-4`` set one dotted key; the value is read as YAML
  (``[2, 4]``, ``true``, ``null``, ``2e-4``).

Files may be local paths or storage URIs (``s3://...``), read through ``ecom2f.storage``.
"""

from __future__ import annotations

import copy
import posixpath
import re
from collections.abc import Iterable
from pathlib import Path

import yaml

from ecom2f.config.errors import ConfigError

BASE_KEY = "_base_"
REPLACE_KEY = "_replace_"


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.2; PyYAML's 1.1 wants ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str):
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source} is not valid YAML: {error}") from None


def _read(location: str) -> str:
    from ecom2f import storage

    try:
        return storage.read_text(location)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {location} does not exist") from None


def _resolve_relative(including: str, name: str) -> str:
    if "://" in name or Path(name).is_absolute():
        return name
    if "://" in including:
        return posixpath.normpath(posixpath.join(posixpath.dirname(including), name)).replace(":/", "://", 1)
    return str((Path(including).parent / name).resolve())


def deep_merge(base: dict, override: dict) -> dict:
    """A new dict: ``override`` merged into ``base`` (mappings recurse, the rest replaces)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and value.get(REPLACE_KEY):
            merged[key] = strip_directives({k: v for k, v in value.items() if k != REPLACE_KEY})
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = strip_directives(copy.deepcopy(value))
    return merged


def strip_directives(tree):
    """Drop ``_replace_`` markers left in mappings that had no base to replace."""
    if isinstance(tree, dict):
        return {key: strip_directives(value) for key, value in tree.items() if key != REPLACE_KEY}
    if isinstance(tree, list):
        return [strip_directives(value) for value in tree]
    return tree


def load_yaml_tree(location: str | Path, _chain: tuple[str, ...] = ()) -> dict:
    """The merged mapping of a YAML file and its ``_base_`` chain."""
    location = str(location) if "://" in str(location) else str(Path(location).resolve())
    if location in _chain:
        cycle = " -> ".join([*_chain, location])
        raise ConfigError(f"_base_ cycle: {cycle}; remove one of these _base_ entries")
    tree = parse_yaml(_read(location), location)
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{location} must hold a mapping of sections (model:, data:, ...), not {type(tree).__name__}")
    bases = tree.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(base, str) for base in bases):
        raise ConfigError(f"{location}: _base_ must be a file name or a list of file names, not {bases!r}")
    merged: dict = {}
    for base in bases:
        merged = deep_merge(merged, load_yaml_tree(_resolve_relative(location, base), (*_chain, location)))
    return deep_merge(merged, tree)


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def apply_overrides(tree: dict, overrides: Iterable[str]) -> dict:
    """A new tree with each ``dotted.key=value`` override set."""
    result = copy.deepcopy(tree)
    for override in overrides:
        key, separator, raw = override.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not separator or not key or not all(_KEY.match(part) for part in parts):
            raise ConfigError(
                f"override {override!r} must look like dotted.key=value (e.g. solver.base_lr=2e-4)"
            )
        value = parse_yaml(raw, f"the value of override {override!r}") if raw.strip() else ""
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                section = ".".join(parts[: depth + 1])
                raise ConfigError(
                    f"override {override!r}: {section} is a value ({child!r}), not a section with keys"
                )
            node = child
        node[parts[-1]] = value
    return result


def dump_yaml(tree: dict, header: str = "") -> str:
    body = yaml.safe_dump(tree, sort_keys=False, default_flow_style=None, allow_unicode=True, width=100)
    return header + body
