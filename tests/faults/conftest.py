"""The step tests' tiny run and its synthetic data, for the fault tests."""

from tests.steps.conftest import tiny_data_root  # noqa: F401
