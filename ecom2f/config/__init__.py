"""Typed, validated configuration of an ECO-M2F run (pydantic), loaded from YAML plus overrides.

| file | what |
|---|---|
| ``section.py`` | the base of every section: unknown keys and bad assignments are errors |
| ``model.py`` | the ``model`` section (Mask2Former's architecture, gate, loss, inference) |
| ``data.py``, ``solver.py``, ``steps.py``, ``runtime.py`` | the other sections |
| ``run.py`` | :class:`Config` and the rules across sections |
| ``loading.py`` | YAML + overrides -> :class:`Config`, and back to YAML |
| ``yaml_tree.py``, ``errors.py`` | ``_base_`` inheritance and overrides; messages a user can act on |
"""

from ecom2f.config.data import DatasetSpec, dataset_spec
from ecom2f.config.errors import ConfigError
from ecom2f.config.loading import (
    config_from_dict,
    config_to_yaml,
    load_config,
    prepare_run,
    save_config,
    with_absolute_local_paths,
)
from ecom2f.config.run import Config

__all__ = [
    "Config",
    "ConfigError",
    "DatasetSpec",
    "config_from_dict",
    "config_to_yaml",
    "dataset_spec",
    "load_config",
    "prepare_run",
    "save_config",
    "with_absolute_local_paths",
]
