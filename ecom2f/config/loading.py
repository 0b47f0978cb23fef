"""Reading, validating and writing a run's configuration.

A run is configured by one YAML file (with ``_base_`` inheritance, see
:mod:`ecom2f.config.yaml_tree`) plus dot-path overrides, validated into :class:`Config`:

    config = load_config("configs/demo_cpu.yaml", ["solver.base_lr=2e-4"])
    save_config(config, config.storage.layout().config)   # resolved, atomic

Unknown keys fail with the closest valid names; bad values name the key, the value and what
is allowed (:class:`~ecom2f.config.errors.ConfigError`).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Sequence

from pydantic import ValidationError

from ecom2f.config.errors import format_validation_error
from ecom2f.config.run import Config
from ecom2f.config.yaml_tree import apply_overrides, dump_yaml, load_yaml_tree


def config_from_dict(tree: dict, source: str = "a dict") -> Config:
    """Validate a nested mapping; raise :class:`ConfigError` listing every problem."""
    try:
        return Config.model_validate(tree)
    except ValidationError as error:
        raise format_validation_error(error, Config, source) from None


def with_absolute_local_paths(config: Config) -> Config:
    """The config with its relative local paths made absolute (against the current folder).

    Ray workers and actors run in folders of their own, where ``./datasets`` is not the
    driver's; jobs call this before shipping a config to them. ``s3://`` URIs stay as they are.
    """
    from ecom2f.data import data_root

    def absolute(path: str | None) -> str | None:
        if path is None or path.startswith("s3://") or os.path.isabs(path):
            return path
        return os.path.abspath(path)

    init = config.parent.init
    backbone = config.model.backbone
    return config.model_copy(
        update={
            "data": config.data.model_copy(update={"root": absolute(config.data.root or data_root())}),
            "storage": config.storage.model_copy(update={"root": absolute(config.storage.root)}),
            "model": config.model.model_copy(
                update={"backbone": backbone.model_copy(update={"weights": absolute(backbone.weights)})}
            ),
            "parent": config.parent.model_copy(
                update={
                    "init": init.model_copy(
                        update={
                            "mask2former_checkpoint": absolute(init.mask2former_checkpoint),
                            "mask2former_config": absolute(init.mask2former_config),
                            "huggingface_checkpoint": absolute(init.huggingface_checkpoint),
                        }
                    )
                }
            ),
        }
    )


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Config:
    """Load a YAML file (with its ``_base_`` chain), apply ``key=value`` overrides, validate."""
    overrides = list(overrides)
    source = str(path) + (f" with overrides {overrides}" if overrides else "")
    tree = apply_overrides(load_yaml_tree(path), overrides)
    return config_from_dict(tree, source)


def config_to_yaml(config: Config, header: Sequence[str] = ()) -> str:
    """The fully resolved configuration as YAML (every key, defaults included)."""
    lines = "".join(f"# {line}\n" for line in header)
    return dump_yaml(config.model_dump(mode="json", by_alias=True), lines)


def save_config(config: Config, uri: str | os.PathLike, source: str | None = None) -> str:
    """Write the resolved configuration to ``uri`` (local or s3://) atomically; return the URI."""
    from ecom2f import storage

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    header = [f"Resolved ecom2f configuration, written {stamp}."]
    if source:
        header.append(f"Loaded from: {source}")
    storage.write_text(uri, config_to_yaml(config, header))
    return str(uri)


def prepare_run(config: Config, source: str | None = None):
    """Start-of-job storage work, before any Ray or GPU work: preflight the run's root,
    create its layout, save the resolved configuration. Returns the :class:`RunLayout`.

    Raises :class:`ecom2f.storage.StoragePreflightError` (missing bucket, bad or missing
    credentials, denied access, unreachable endpoint) within seconds.
    """
    from ecom2f import storage

    layout = config.storage.layout()
    storage.preflight(layout.run_uri)
    layout.create()
    save_config(config, layout.config, source=source)
    return layout

