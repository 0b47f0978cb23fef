"""Validation messages of ecom2f.config, asserted exactly: unknown keys with suggestions,
bad values with the value and what is allowed, cross-section rules."""

from __future__ import annotations

import pytest

from ecom2f.config import Config, ConfigError, config_from_dict


def _problems(tree: dict) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        config_from_dict(tree, source="test")
    header, *lines = str(raised.value).split("\n")
    assert header == "invalid configuration (test):"
    return [line.removeprefix("  - ") for line in lines]


def test_defaults_are_mask2formers_coco_recipe():
    config = Config()
    solver = config.solver
    assert (solver.optimizer, solver.base_lr, solver.weight_decay, solver.backbone_multiplier) == ("adamw", 1e-4, 0.05, 0.1)
    assert (solver.clip_gradients.type, solver.clip_gradients.value) == ("full_model", 0.01)
    assert (solver.ims_per_batch, solver.max_iter, solver.lr_schedule.steps) == (16, 368750, [327778, 355092])
    assert config.parent.alpha == "linear" and config.parent.exit_sampling == "uniform"
    assert config.parent_exits == [1, 2, 3, 4, 5, 6]
    assert config.batch_size_per_worker == 2  # 16 images / 8 workers
    assert config.ray.num_gpus_per_worker == 1.0


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        ({"solver": {"base_lrr": 1}}, "solver.base_lrr: unknown key; did you mean 'base_lr'?"),
        ({"solvr": {}}, "solvr: unknown key; did you mean 'solver'?"),
        (
            {"model": {"pixel_decoder": {"encoder_layerz": 3}}},
            "model.pixel_decoder.encoder_layerz: unknown key; did you mean 'encoder_layers'?",
        ),
        (
            {"data": {"train": {"format": "coco_panoptic", "image_root": "i", "jsonn": "j", "png_root": "p"}}},
            "data.train.jsonn: unknown key; did you mean 'json'?",
        ),
        (
            {"depth": {"dataset": {"format": "coco_panoptic", "image_root": "i", "jsn": "j", "png_root": "p"}}},
            "depth.dataset.jsn: unknown key; did you mean 'json'?",
        ),
        (
            {"x": 1},
            "x: unknown key; valid keys here: 'model', 'data', 'solver', 'parent', 'depth', 'gate', "
            "'evaluation', 'storage', 'ray', 'serving', 'seed'",
        ),
    ],
)
def test_unknown_keys_name_the_path_and_the_closest_names(tree, expected):
    assert _problems(tree) == [expected]


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        ({"solver": {"base_lr": -1}}, "solver.base_lr: -1 is not allowed: Input should be greater than 0"),
        (
            {"parent": {"exit_sampling": "uniformly"}},
            "parent.exit_sampling: 'uniformly' is not allowed; allowed: 'uniform', 'weights'; did you mean 'uniform'?",
        ),
        ({"parent": {"zero_stage": 3}}, "parent.zero_stage: 3 is not allowed; allowed: 0, 1, 2"),
        (
            {"data": {"root": "s3://b/datasets", "synthetic": {"num_train": 4}}},
            "data.synthetic generates local files, but data.root is 's3://b/datasets': set data.root to a local "
            "folder, or remove data.synthetic and upload a generated set (ecom2f data synth) to S3",
        ),
        (
            {"solver": {"clip_gradients": {"type": "norm"}}},
            "solver.clip_gradients.type: 'norm' is not allowed; allowed: 'full_model'",
        ),
        (
            {"evaluation": {"tasks": ["panoptik"]}},
            "evaluation.tasks[0]: 'panoptik' is not allowed; allowed: 'panoptic', 'instance', 'semantic'; "
            "did you mean 'panoptic'?",
        ),
        (
            {"data": {"crop_size": [512, "wide"]}},
            "data.crop_size[1]: 'wide' is not allowed: Input should be a valid integer, unable to parse string as an integer",
        ),
        (
            {"solver": {"lr_schedule": {"steps": [5, 3]}}},
            "solver.lr_schedule.steps: [5, 3] must be positive and strictly increasing",
        ),
        (
            {"storage": {"run": "a/b"}},
            "storage.run: 'a/b' must be a plain name: letters, digits, '.', '_', '-' (no '/')",
        ),
        (
            {"data": {"train": {"format": "semantic", "image_root": "images"}}},
            "data.train: format 'semantic' needs ['label_root', 'classes']",
        ),
        (
            {"evaluation": {"datasets": [{"format": "voc", "image_root": "r"}]}},
            "evaluation.datasets[0].format: 'voc' is not allowed; allowed: 'coco_panoptic', 'coco_instances', 'semantic'",
        ),
        (
            {"depth": {"dataset": {"format": "semantik", "image_root": "a"}}},
            "depth.dataset.format: 'semantik' is not allowed; allowed: 'coco_panoptic', 'coco_instances', 'semantic'; "
            "did you mean 'semantic'?",
        ),
        ({"model": {"pixel_decoder": {"conv_dim": 255}}}, "model.pixel_decoder: conv_dim 255 must be divisible by heads 8"),
        (
            {"data": {"train": "coco_2017_train_panoptc"}},
            "data.train: no dataset named 'coco_2017_train_panoptc'; did you mean 'coco_2017_train_panoptic' or "
            "'coco_2017_val_panoptic' or 'coco_2017_train'? (or give a spec: {format, image_root, json, png_root})",
        ),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(tree, expected):
    assert _problems(tree) == [expected]


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        (
            {"solver": {"max_iter": 100}},
            "solver.lr_schedule.steps [327778, 355092] must be < solver.max_iter 100; lower them or raise max_iter",
        ),
        (
            {"parent": {"exits": [1, 7]}},
            "parent.exits [1, 7]: [7] outside 1..6 (model.pixel_decoder.encoder_layers = 6)",
        ),
        (
            {"model": {"gate": {"exits": [2, 7]}}},
            "model: gate exits [7] exceed pixel_decoder.encoder_layers 6",
        ),
        (
            {"depth": {"exits": [1, 2]}},
            "depth.exits [1, 2] must include every gate exit (model.gate.exits [2, 3, 4, 5, 6]); missing [3, 4, 5, 6]",
        ),
        (
            {"ray": {"num_workers": 3}},
            "solver.ims_per_batch 16 is not divisible by ray.num_workers 3 x solver.gradient_accumulation_steps 1; "
            "change one of them or set data.batch_size_per_worker",
        ),
        (
            {"data": {"batch_size_per_worker": 4}},
            "data.batch_size_per_worker 4 x ray.num_workers 8 x solver.gradient_accumulation_steps 1 = 32, but "
            "solver.ims_per_batch is 16; make them agree (or leave data.batch_size_per_worker null to derive it)",
        ),
        (
            {"parent": {"exit_sampling": "weights", "exit_weights": [1, 1]}},
            "parent.exit_weights has 2 values but there are 6 exits [1, 2, 3, 4, 5, 6]; give one weight per exit",
        ),
        (
            {"parent": {"exit_sampling": "weights"}},
            "parent.exit_sampling 'weights' needs parent.exit_weights (one weight per exit)",
        ),
        (
            {"parent": {"init": {"mode": "backbone"}}},
            "parent.init.mode 'backbone' needs model.backbone.weights (a local file of pretrained weights); "
            "use parent.init.mode 'scratch' to start from random weights",
        ),
        (
            {"gate": {"grid_sizes": [3]}},
            "gate grid sizes [3] (gate.grid_sizes / model.gate.grid_size) must divide depth.gate_feature_grid 4, "
            "the grid the features are stored at",
        ),
        (
            {"gate": {"compute_budgets": [1.5]}},
            "gate.compute_budgets [1.5] (mean layers per image) must lie within the gate exits' range 2..6 (model.gate.exits)",
        ),
        (
            {"solver": {"precision": "fp16"}, "ray": {"use_gpu": False}},
            "solver.precision 'fp16' needs GPUs (ray.use_gpu true); use 'fp32' or 'bf16' on CPU",
        ),
        (
            {"ray": {"use_gpu": False, "gpus_per_worker": 1}},
            "ray.use_gpu is false but ray.gpus_per_worker is 1.0; set it to 0 for CPU workers",
        ),
        (
            {"data": {"recipe": "cityscapes"}},
            "data.recipe 'cityscapes' needs data.crop_size, e.g. [512, 1024]",
        ),
    ],
)
def test_cross_field_rules(tree, expected):
    assert _problems(tree) == [expected]


def test_every_problem_is_listed_at_once():
    assert _problems({"solver": {"base_lrr": 1, "weight_decay": -0.1}, "parent": {"alpha": "cubic"}}) == [
        "solver.weight_decay: -0.1 is not allowed: Input should be greater than or equal to 0",
        "solver.base_lrr: unknown key; did you mean 'base_lr'?",
        "parent.alpha: 'cubic' is not allowed; allowed: 'constant', 'linear', 'quadratic'",
    ]


def test_assignment_is_validated_too():
    config = Config()
    with pytest.raises(ValueError, match="greater than 0"):
        config.solver.base_lr = 0.0


def test_dataset_spec_is_accepted_and_exported_for_the_data_package():
    config = config_from_dict(
        {"data": {"train": {"format": "coco_panoptic", "image_root": "im", "json": "p.json", "png_root": "png"}}}
    )
    assert config.data.train.as_spec() == {
        "format": "coco_panoptic",
        "image_root": "im",
        "json": "p.json",
        "png_root": "png",
        "ignore_value": 255,
        "image_suffix": "",
        "label_suffix": ".png",
    }
