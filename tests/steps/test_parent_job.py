"""Step 1 as a Ray job: Ray Train + DeepSpeed on 2 CPU workers, S3 storage, failures."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from ecom2f import storage
from ecom2f.engine.lr_schedule import lr_multiplier
from ecom2f.modeling import build_model
from ecom2f.steps.parent import launch_parent_training
from ecom2f.steps.parent.job import check_resume_compatible
from ecom2f.steps.parent.metrics_log import read_metrics
from ecom2f.steps.parent.state import ResumeError
from tests.conftest import REPO_ROOT
from tests.faults import FailOnce, pickle_by_value
from tests.infra.s3_server import ACCESS_KEY_ID
from tests.steps.conftest import tiny_config


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(600)
def test_two_workers_on_s3_resume_after_a_worker_failure(ray_cluster, s3_bucket, tiny_data_root, tmp_path):
    config = tiny_config(
        tiny_data_root, f"{s3_bucket}/runs", "solver.max_iter=6", "parent.checkpoint_period=2",
        "parent.log_period=1", "parent.keep_last=2", "parent.max_failures=1", "ray.num_workers=2",
        "ray.cpus_per_worker=0.5", "solver.ims_per_batch=4", "solver.lr_schedule.steps=[4]",
    )
    marker = tmp_path / "failed"
    # Rank 1 raises before iteration 4 (0-based step 3): iterations 1-3 ran, the newest
    # checkpoint is after iteration 2, so the restarted group must resume from there.
    pickle_by_value()
    result = launch_parent_training(config, fault=FailOnce(step=3, marker=str(marker), rank=1))
    assert marker.read_text() == "3"

    layout = config.storage.layout()
    reports = read_metrics(layout.parent_metrics)
    assert [r["step"] for r in reports] == [1, 2, 3, 4, 5, 6]
    assert [r["resumed_from"] for r in reports] == [0, 0, 2, 2, 2, 2]
    assert [r["samples_consumed"] for r in reports] == [4 * step for step in range(1, 7)]  # 2 ranks x 2 images
    schedule = dict(max_iter=6, schedule="multistep", steps=[4], gamma=0.1, warmup_iters=0)
    base_lr = config.solver.base_lr
    assert [r["lr"] for r in reports] == pytest.approx([base_lr * lr_multiplier(s, **schedule) for s in range(1, 7)])

    # Checkpoints (the newest keep_last) and the final weights landed in the bucket.
    listing = storage.list_uris(storage.join(layout.parent, "train"))
    checkpoints = [u for u in listing if u.rstrip("/").rsplit("/", 1)[-1].startswith("checkpoint_") and u.endswith("/")]
    assert len(checkpoints) == 2, checkpoints
    assert result.weights_uri == f"{layout.parent}/model_final.pth"
    local = tmp_path / "model_final.pth"
    storage.download_file(result.weights_uri, local)
    model = build_model(config.model)
    model.load_state_dict(torch.load(local, weights_only=True), strict=True)
    assert storage.list_uris(layout.parent_tensorboard)

    # The driver reads the newest checkpoint's world size and ZeRO stage from Ray Train's run
    # folder before any worker starts: stage 0 resumes on another number of workers, a changed
    # stage (or a sharded stage on another number of workers) is refused with what to set.
    filesystem, storage_path = storage.pyarrow_filesystem(layout.parent)
    check_resume_compatible(config.model_copy(update={"ray": config.ray.model_copy(update={"num_workers": 1})}),
                            filesystem, storage_path)
    sharded = config.model_copy(update={"parent": config.parent.model_copy(update={"zero_stage": 2})})
    with pytest.raises(ResumeError, match="parent.zero_stage=0 to resume it"):
        check_resume_compatible(sharded, filesystem, storage_path)


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "ecom2f.cli", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})},
    )


DEMO = str(REPO_ROOT / "configs" / "demo_cpu.yaml")


def test_bad_config_fails_before_anything_starts(tmp_path):
    result = _cli("train-parent", "--config", DEMO, "--storage", str(tmp_path), "solver.bse_lr=2e-4")
    assert result.returncode == 2
    assert "solver.bse_lr: unknown key; did you mean 'base_lr'?" in result.stderr
    result = _cli("train-parent", "--config", DEMO, "--storage", str(tmp_path), "solver.max_iter=0")
    assert result.returncode == 2 and "solver.max_iter" in result.stderr and "0" in result.stderr
    assert "Ray" not in result.stderr and not any(tmp_path.iterdir())


def test_missing_bucket_fails_before_training(s3_server, tmp_path):
    result = _cli("train-parent", "--config", DEMO, "--storage", "s3://no-such-bucket-ecom2f/runs",
                  f"data.root={tmp_path}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "no-such-bucket-ecom2f" in result.stderr and "does not exist" in result.stderr
    assert "Started a local Ray instance" not in result.stderr + result.stdout
    assert not (tmp_path / "synthetic").exists()  # failed before generating data


def test_wrong_credentials_fail_before_training(s3_server, s3_bucket, tmp_path):
    with s3_server.enforce_auth(s3_bucket.removeprefix("s3://")):
        result = _cli("train-parent", "--config", DEMO, "--storage", f"{s3_bucket}/runs", f"data.root={tmp_path}",
                      env={"AWS_ACCESS_KEY_ID": ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": "wrong-secret"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "credentials" in result.stderr.lower() and "wrong-secret" not in result.stderr
    assert "Started a local Ray instance" not in result.stderr + result.stdout
