"""Step 1 refuses, before Ray starts, a model whose classes are not the training data's."""

import pytest

from ecom2f.errors import BadInputError
from ecom2f.steps.parent.job import prepare_parent_run
from tests.steps.conftest import tiny_config


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.num_classes=11"], "has 10 classes but model.num_classes is 11: set model.num_classes=10"),
    (["model.num_things=2", "model.thing_classes=[7,8]"],
     r"things at class ids \[0, 1, 2, 3, 4, 5, 6\], the model at \[7, 8\]: set model.num_things=7"),
])
def test_classes_that_do_not_fit_the_data_stop_the_run_before_it_saves_anything(tiny_data_root, tmp_path,
                                                                                  overrides, message):
    config = tiny_config(tiny_data_root, tmp_path / "runs", *overrides)
    with pytest.raises(BadInputError, match=message):
        prepare_parent_run(config)
    assert not (tmp_path / "runs" / config.storage.run / "config.yaml").exists()
