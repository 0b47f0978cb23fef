from __future__ import annotations

import pytest

from tests.data.helpers import make_panoptic


@pytest.fixture(scope="session")
def panoptic_template(tmp_path_factory):
    """A valid 3-image synthetic panoptic set; copy it before corrupting it."""
    root = tmp_path_factory.mktemp("panoptic_template")
    make_panoptic(root, num_images=3)
    return root
