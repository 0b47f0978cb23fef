"""The shipped COCO recipes start and train on Ray Train in bf16 from detectron2-format backbone
pickles: only sizes are overridden (data, batch, iterations, workers), never a code path."""

from __future__ import annotations

import pytest
import torch

from ecom2f import storage
from ecom2f.config import load_config
from ecom2f.steps.parent import launch_parent_training
from ecom2f.steps.parent.metrics_log import read_metrics
from tests.conftest import REPO_ROOT
from tests.modeling.d2_files import timm_swin_t, torchvision_resnet, write_d2_resnet_pkl, write_m2f_swin_pkl

# Sizes only: the synthetic set of tests/steps/conftest.py (8 train images of 64 x 64, its 10
# classes with 7 things: step 1 refuses a classifier that does not fit the data), two CPU workers
# of one image each, two iterations, the schedule's steps and warmup inside them.
SIZE_OVERRIDES = [
    "data.train=synthetic_panoptic_train", "data.val=synthetic_panoptic_val", "data.image_size=64",
    "model.num_classes=10", "model.num_things=7",
    "data.test_min_size=64", "data.test_max_size=64", "data.loader_workers=0",
    "solver.max_iter=2", "solver.warmup_iters=0", "solver.lr_schedule.steps=[1]", "solver.ims_per_batch=2",
    "ray.num_workers=2", "ray.use_gpu=false", "ray.cpus_per_worker=0.5",
    "parent.checkpoint_period=1", "parent.log_period=1", "parent.tensorboard=false",
    "solver.precision=bf16",
]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("recipe", "weights_file"), [("coco_panoptic_r50.yaml", "R-50.pkl"),
                                                       ("coco_panoptic_swint.yaml", "swin_tiny_patch4_window7_224.pkl")])
def test_shipped_coco_recipe_trains_two_iterations_in_bf16(ray_cluster, s3_bucket, tiny_data_root, tmp_path, recipe,
                                                            weights_file):
    weights = tmp_path / weights_file
    if recipe.endswith("r50.yaml"):
        source = torchvision_resnet("resnet50", seed=3)
        write_d2_resnet_pkl(weights, source)
        first_conv = source.conv1.weight.detach()
    else:
        source = timm_swin_t(seed=3)
        write_m2f_swin_pkl(weights, source)
        first_conv = source.patch_embed.proj.weight.detach()
    config = load_config(REPO_ROOT / "configs" / recipe, [
        *SIZE_OVERRIDES, f"data.root={tiny_data_root}", f"storage.root={s3_bucket}/runs",
        f"model.backbone.weights={weights}",
    ])
    # What the recipe keeps: the published architecture and solver.
    assert (config.model.decoder.num_queries, config.model.decoder.layers) == (100, 9)
    assert config.parent.init.mode == "backbone" and config.model.criterion.num_points == 12544
    if recipe.endswith("swint.yaml"):
        assert config.model.backbone.drop_path_rate == 0.3

    result = launch_parent_training(config)

    reports = read_metrics(config.storage.layout().parent_metrics)
    assert [r["step"] for r in reports] == [1, 2]
    assert all(r["precision"] == "bf16" and r["world_size"] == 2 for r in reports)
    assert all(torch.isfinite(torch.tensor(r["loss_exit_" + str(k)])) for r in reports
               for k in range(1, 7) if f"loss_exit_{k}" in r)
    local = tmp_path / "model_final.pth"
    storage.download_file(result.weights_uri, local)
    trained = torch.load(local, weights_only=True)
    assert {v.dtype for v in trained.values() if v.is_floating_point()} == {torch.float32}
    # The first convolution started from the pickle (and moved by at most two small AdamW steps).
    key = "backbone.conv1.weight" if recipe.endswith("r50.yaml") else "backbone.patch_embed.proj.weight"
    moved = (trained[key] - first_conv).abs().max().item()
    assert moved < 2 * 2 * config.solver.base_lr * config.solver.backbone_multiplier + 1e-7, moved
