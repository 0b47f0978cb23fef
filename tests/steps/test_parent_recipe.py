"""Step 1 trains ECO-M2F's parent as specified: unreached layers untouched, autocast with fp32
weights, per-rank RNG, and resumes across a change in the number of workers."""

from __future__ import annotations

import os

import pytest
import torch

from ecom2f.modeling import build_model
from ecom2f.steps.datasets import training_dataset
from ecom2f.steps.parent import train_parent
from ecom2f.steps.parent.loader import training_batches
from ecom2f.steps.parent.state import ResumeError, check_resumable, rank_state_file
from ecom2f.storage.layout import PARENT_WEIGHTS
from tests import distributed
from tests.steps.conftest import tiny_config
from tests.steps.parent_ranks import RecordingDataset, SharedFolderSession, read_indices, run_ranks


@pytest.fixture(scope="module", autouse=True)
def process_group():
    with distributed.single_process_group():
        yield


def _final_weights(session) -> dict:
    return torch.load(os.path.join(session.latest_checkpoint(), PARENT_WEIGHTS), weights_only=True)


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_one_step_at_exit_2_leaves_deeper_layers_and_the_gate_bit_for_bit(tiny_data_root, tmp_path, zero_stage):
    config = tiny_config(
        tiny_data_root, tmp_path / "runs", "solver.max_iter=1", "parent.exits=[2]", "ray.num_workers=1",
        "solver.ims_per_batch=2", "solver.lr_schedule.steps=[]", f"parent.zero_stage={zero_stage}",
    )
    session = SharedFolderSession(tmp_path / "session")
    train_parent(config, session, training_dataset(config))
    torch.manual_seed(config.seed)  # the loop's initialisation on rank 0
    initial = build_model(config.model).state_dict()
    trained = _final_weights(session)
    prefix = "pixel_decoder.transformer.encoder.layers."
    for name, value in initial.items():
        same = torch.equal(value, trained[name])
        if name.startswith("gate.") or (name.startswith(prefix) and int(name[len(prefix):].split(".")[0]) >= 2):
            assert same, f"{name} moved although exit 2 never reached it"
        elif name.startswith((prefix + "0.", prefix + "1.")) and name.endswith("weight"):
            assert not same, f"{name} was reached at exit 2 but did not move"


def test_bf16_training_keeps_fp32_weights(tiny_data_root, tmp_path):
    config = tiny_config(
        tiny_data_root, tmp_path / "runs", "solver.max_iter=2", "solver.precision=bf16", "ray.num_workers=1",
        "solver.ims_per_batch=2", "solver.lr_schedule.steps=[]", "parent.log_period=1",
    )
    session = SharedFolderSession(tmp_path / "session")
    last = train_parent(config, session, training_dataset(config))
    assert last["precision"] == "bf16" and last["step"] == 2
    weights = _final_weights(session)
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}
    reference = build_model(config.model).state_dict()
    assert weights.keys() == reference.keys()


def test_each_rank_gets_back_its_own_rng_streams(tmp_path):
    states = {}
    for rank in (0, 1):
        torch.manual_seed(100 + rank)
        states[rank] = torch.get_rng_state()
        torch.save({"cpu": states[rank]}, tmp_path / rank_state_file(rank))
    from ecom2f.steps.parent.state import _restore_rng

    for rank in (1, 0):
        torch.manual_seed(7)
        _restore_rng(str(tmp_path), rank, seed=0, samples_consumed=8, device=torch.device("cpu"))
        assert torch.equal(torch.get_rng_state(), states[rank])
    # A rank the checkpoint did not have (the run grew) draws a stream of its own.
    _restore_rng(str(tmp_path), 2, seed=0, samples_consumed=8, device=torch.device("cpu"))
    assert not any(torch.equal(torch.get_rng_state(), s) for s in states.values())


def test_zero_sharded_checkpoints_refuse_another_world_size_with_the_fix_in_the_message():
    check_resumable(2, 0, 1, 0, "ckpt")  # stage 0: any number of workers
    check_resumable(2, 2, 2, 2, "ckpt")
    with pytest.raises(ResumeError, match=r"written by 2 workers with ZeRO stage 2.*ray.num_workers=2.*zero_stage=0"):
        check_resumable(2, 2, 1, 2, "ckpt")
    with pytest.raises(ResumeError, match="parent.zero_stage=0.*this run has 2"):
        check_resumable(2, 0, 2, 2, "ckpt")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_workers_then_one_consume_the_same_samples_as_one_worker_throughout(tiny_data_root, tmp_path):
    common = ["data.recipe=none", "solver.max_iter=4", "solver.ims_per_batch=4", "parent.checkpoint_period=2",
              "parent.log_period=1", "solver.lr_schedule.steps=[]"]
    # Two ranks train steps 1-2 (a checkpoint after step 2) and stop before step 3.
    two = tiny_config(tiny_data_root, tmp_path / "runs", *common, "ray.num_workers=2")
    run_ranks(2, two.model_dump(mode="json"), str(tmp_path / "resumed"), str(tmp_path / "logs_two"), stop_step=2)
    written = sorted(os.listdir(tmp_path / "resumed"))
    assert written == ["checkpoint_000000002"]
    assert {rank_state_file(0), rank_state_file(1), "train_state.json"} <= set(os.listdir(tmp_path / "resumed" / written[0]))

    # One rank resumes (2 -> 1 workers, the same global batch of 4) and finishes.
    one = tiny_config(tiny_data_root, tmp_path / "runs", *common, "ray.num_workers=1")
    resumed = SharedFolderSession(tmp_path / "resumed")
    train_parent(one, resumed, RecordingDataset(training_dataset(one), str(tmp_path / "logs_one.txt")))
    assert [r["step"] for r in resumed.reported] == [3, 4]
    assert [r["samples_consumed"] for r in resumed.reported] == [12, 16]
    assert all(r["resumed_from"] == 2 and r["world_size"] == 1 for r in resumed.reported)

    # The same run on one worker from the start reads the same 16 samples in the same order.
    straight = SharedFolderSession(tmp_path / "straight")
    train_parent(one, straight, RecordingDataset(training_dataset(one), str(tmp_path / "logs_straight.txt")))
    rank0, rank1 = read_indices(tmp_path / "logs_two" / "rank_0.txt"), read_indices(tmp_path / "logs_two" / "rank_1.txt")
    two_ranks = [i for step in range(2) for i in rank0[2 * step: 2 * step + 2] + rank1[2 * step: 2 * step + 2]]
    assert two_ranks + read_indices(tmp_path / "logs_one.txt") == read_indices(tmp_path / "logs_straight.txt")
    assert len(read_indices(tmp_path / "logs_straight.txt")) == 16


def test_a_zero2_checkpoint_of_two_workers_is_refused_by_one(tiny_data_root, tmp_path):
    common = ["data.recipe=none", "solver.max_iter=2", "solver.ims_per_batch=2", "parent.checkpoint_period=1",
              "solver.lr_schedule.steps=[]", "parent.zero_stage=2"]
    (tmp_path / "session" / "checkpoint_000000001").mkdir(parents=True)
    (tmp_path / "session" / "checkpoint_000000001" / "train_state.json").write_text(
        '{"world_size": 2, "zero_stage": 2, "samples_consumed": 2, "exit_loss_sums": {}, "exit_counts": {}}')
    config = tiny_config(tiny_data_root, tmp_path / "runs", *common, "ray.num_workers=1")
    with pytest.raises(ResumeError, match="written by 2 workers with ZeRO stage 2"):
        train_parent(config, SharedFolderSession(tmp_path / "session"), training_dataset(config))


def test_loader_workers_read_training_batches_from_s3(s3_server, s3_bucket, tiny_data_root, tmp_path):
    from ecom2f import storage

    storage.upload_dir(str(tiny_data_root / "synthetic"), f"{s3_bucket}/datasets/synthetic")
    batches = {}
    for workers in (0, 2):
        config = tiny_config(tiny_data_root, tmp_path / "runs", "data.recipe=none", "ray.num_workers=1",
                             "solver.ims_per_batch=2", f"data.root={s3_bucket}/datasets", "data.synthetic=null",
                             f"data.loader_workers={workers}")
        stream = training_batches(config, training_dataset(config), 0, 1, torch.device("cpu"), samples_consumed=0)
        batches[workers] = [next(stream) for _ in range(5)]  # crosses the 8-image epoch
    for ours, theirs in zip(batches[2], batches[0]):
        assert torch.equal(ours["images"], theirs["images"])
        assert [t["labels"].tolist() for t in ours["targets"]] == [t["labels"].tolist() for t in theirs["targets"]]
