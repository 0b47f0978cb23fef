"""Every YAML file in configs/ loads, validates, and carries the published hyper-parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecom2f.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ALL = sorted(CONFIGS.glob("*.yaml"))
EXPECTED = {
    "base.yaml",
    "demo_cpu.yaml",
    "coco_panoptic_r50.yaml",
    "coco_panoptic_swint.yaml",
    "cityscapes_panoptic_r50.yaml",
    "cityscapes_panoptic_swint.yaml",
}


def test_the_expected_files_exist():
    assert EXPECTED <= {path.name for path in ALL}


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_config_loads_and_cites_its_sources(path):
    config = load_config(path)
    assert config.encoder_layers >= 1
    header = path.read_text().split("\n\n")[0]
    assert header.startswith("# ") and ("Source" in header or "sources" in header), f"{path.name} lacks a source header"


@pytest.mark.parametrize("name", ["coco_panoptic_r50.yaml", "coco_panoptic_swint.yaml", "cityscapes_panoptic_r50.yaml", "cityscapes_panoptic_swint.yaml"])
def test_shared_mask2former_solver(name):
    config = load_config(CONFIGS / name)
    solver = config.solver
    assert (solver.optimizer, solver.base_lr, solver.weight_decay, solver.backbone_multiplier) == ("adamw", 1e-4, 0.05, 0.1)
    assert solver.clip_gradients.model_dump() == {"enabled": True, "type": "full_model", "value": 0.01, "norm_type": 2.0}
    assert solver.ims_per_batch == 16
    assert config.model.gate.exits == [2, 3, 4, 5, 6] and config.encoder_layers == 6
    assert config.parent.alpha == "linear" and config.parent.init.mode == "backbone"
    assert config.model.backbone.weights  # pretrained ImageNet weights, as Mask2Former
    assert config.ray.use_gpu and config.ray.num_workers * config.batch_size_per_worker == 16


@pytest.mark.parametrize("name", ["coco_panoptic_r50.yaml", "coco_panoptic_swint.yaml"])
def test_coco_schedule_and_lsj(name):
    config = load_config(CONFIGS / name)
    assert config.solver.max_iter == 368750
    assert config.solver.lr_schedule.name == "multistep"
    assert (config.solver.lr_schedule.steps, config.solver.lr_schedule.gamma) == ([327778, 355092], 0.1)
    assert config.solver.warmup_iters == 10
    assert (config.data.recipe, config.data.image_size, config.data.min_scale, config.data.max_scale) == ("coco_lsj", 1024, 0.1, 2.0)
    assert config.data.train_transform_kwargs() == {"image_size": 1024, "scale_range": (0.1, 2.0)}
    assert (config.model.num_classes, config.model.num_things, config.model.decoder.num_queries) == (133, 80, 100)
    assert (config.data.train, config.data.val) == ("coco_2017_train_panoptic", "coco_2017_val_panoptic")


@pytest.mark.parametrize("name", ["cityscapes_panoptic_r50.yaml", "cityscapes_panoptic_swint.yaml"])
def test_cityscapes_schedule_and_crop(name):
    config = load_config(CONFIGS / name)
    assert config.solver.max_iter == 90000
    assert (config.solver.lr_schedule.name, config.solver.lr_schedule.power) == ("poly", 0.9)
    assert config.solver.warmup_iters == 0
    assert config.data.train_transform_kwargs() == {"crop_size": (512, 1024), "base_short_side": 1024}
    assert (config.model.num_classes, config.model.num_things) == (19, 8)
    assert (config.data.test_min_size, config.data.test_max_size) == (1024, 2048)


def test_backbones():
    assert load_config(CONFIGS / "coco_panoptic_r50.yaml").model.backbone.name == "resnet50"
    assert load_config(CONFIGS / "coco_panoptic_swint.yaml").model.backbone.name == "swin_t"
    assert load_config(CONFIGS / "cityscapes_panoptic_swint.yaml").model.backbone.name == "swin_t"


def test_demo_is_tiny_and_cpu_only():
    config = load_config(CONFIGS / "demo_cpu.yaml")
    model = config.model
    assert model.backbone.name == "resnet18" and model.backbone.weights is None
    assert config.encoder_layers == 6 and model.pixel_decoder.heads == 4
    assert 32 <= model.pixel_decoder.conv_dim <= 64 and 32 <= model.decoder.hidden_dim <= 64
    assert model.decoder.num_queries <= 20
    assert (config.ray.num_workers, config.ray.use_gpu, config.ray.num_gpus_per_worker) == (2, False, 0.0)
    assert config.solver.precision == "fp32" and config.parent.zero_stage == 0
    assert config.data.train == "synthetic_panoptic_train" and config.data.synthetic is not None
    assert config.storage.root == "./runs" and config.data.root == "./datasets"
