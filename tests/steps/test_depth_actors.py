"""The actor pools of step 2 and the evaluation (``ecom2f.steps.ray_cluster``): the resource rule from a
cluster's resources, the three stages' pools, Ray start-up; the payloads between stages
(``ecom2f.steps.packing``); a model actor's precision and device clock (``ecom2f.steps.inference``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecom2f.steps import ray_cluster as actors
from ecom2f.steps.inference import DeviceClock, network_precision
from ecom2f.steps.packing import compact_labels, pack_masks, unpack_masks
from ecom2f.steps.ray_cluster import cpu_stage_plan, load_model_score_stages, model_stage_plan, stage_plans
from tests.faults import FailOnceAtIndex, pickle_by_value

# ray.cluster_resources() of one p4d.24xlarge node (8 A100s, 96 vCPUs).
P4D = {"CPU": 96.0, "GPU": 8.0, "memory": 1.1e12, "object_store_memory": 2e11, "accelerator_type:A100": 1.0}


def test_gpu_cluster_one_model_actor_per_gpu_and_whole_cpus_for_the_cpu_stages():
    model = model_stage_plan(P4D, use_gpu=True, num_actors=None)
    assert (model.min_size, model.max_size) == (8, 8)
    assert model.resources == {"num_gpus": 1, "num_cpus": 1.0}
    two_nodes = model_stage_plan({**P4D, "GPU": 16.0, "CPU": 192.0}, use_gpu=True, num_actors=None)
    assert two_nodes.max_size == 16
    assert model_stage_plan(P4D, use_gpu=True, num_actors=3).max_size == 3  # an explicit count wins
    cpu = cpu_stage_plan(P4D, model)
    # 96 CPUs - 8 for the model actors, shared by loaders and scorers: up to 44 actors each.
    assert (cpu.min_size, cpu.max_size, cpu.resources) == (1, 44, {"num_cpus": 1.0})


def test_cpu_cluster_fractional_cpus_and_one_model_actor_by_default():
    two_cores = {"CPU": 2.0, "memory": 2e10}
    model = model_stage_plan(two_cores, use_gpu=False, num_actors=None)
    assert (model.min_size, model.max_size, model.resources) == (1, 1, {"num_cpus": 0.5})
    cpu = cpu_stage_plan(two_cores, model)
    assert (cpu.min_size, cpu.max_size, cpu.resources) == (1, 1, {"num_cpus": 0.5})
    # All three stages at their largest still leave half a CPU: no deadlock on a 2-core node.
    assert model.max_size * 0.5 + 2 * cpu.max_size * 0.5 <= 1.5
    assert model_stage_plan(two_cores, use_gpu=False, num_actors=2).max_size == 2
    # GPUs present but not asked for: CPU actors.
    assert model_stage_plan(P4D, use_gpu=False, num_actors=None).resources == {"num_cpus": 0.5}
    assert cpu_stage_plan({"CPU": 16.0}, model).max_size == 15  # (16 - 0.5) / 2 stages / 0.5


def test_gpus_asked_for_without_gpus_fail_with_a_message_unless_counted():
    with pytest.raises(ValueError, match=r"ray.use_gpu is true but the cluster has no GPU.*ray.use_gpu=false"):
        model_stage_plan({"CPU": 8.0}, use_gpu=True, num_actors=None)
    # With a count the job waits for GPU nodes that an autoscaler may add.
    assert model_stage_plan({"CPU": 8.0}, use_gpu=True, num_actors=2).resources["num_gpus"] == 1
    with pytest.raises(ValueError, match="num_actors 0"):
        model_stage_plan(P4D, use_gpu=True, num_actors=0)


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_stage_plans_read_the_running_cluster(ray_cluster):
    model, cpu = stage_plans(use_gpu=False, num_actors=None)
    assert ray_cluster.cluster_resources()["CPU"] == 2
    assert model.max_size == 1 and model.resources == {"num_cpus": 0.5}
    assert cpu.max_size == 1 and cpu.resources == {"num_cpus": 0.5}


class _Loader: ...


class _Model: ...


class _Scorer: ...


def test_both_jobs_stages_ask_for_the_same_resources_per_kind_of_actor(monkeypatch):
    """Step 2 and the evaluation build their pools with load_model_score_stages: loaders and scorers
    on the CPU stage plan, the model on the model stage plan, of the connected cluster."""
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: P4D)
    loader, model, scorer = load_model_score_stages((_Loader, {"a": 1}), (_Model, {"b": 2}), (_Scorer, {}),
                                                    use_gpu=True, num_actors=None)
    assert [stage.udf for stage in (loader, model, scorer)] == [_Loader, _Model, _Scorer]
    assert (loader.kwargs, model.kwargs, scorer.kwargs) == ({"a": 1}, {"b": 2}, {})
    expected_model = model_stage_plan(P4D, use_gpu=True, num_actors=None)
    assert model.plan == expected_model
    assert loader.plan == scorer.plan == cpu_stage_plan(P4D, expected_model)


def test_init_ray_connects_to_the_configured_address_else_ray_address(monkeypatch):
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda address=None: calls.append(address))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    actors.init_ray(None)
    actors.init_ray("head:6379")
    monkeypatch.delenv("RAY_ADDRESS")
    actors.init_ray(None)
    assert calls == ["10.0.0.5:6379", "head:6379", None]  # None: Ray starts a local cluster


def test_masks_pack_to_one_bit_per_pixel_exactly():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 5, 7)) > 0.5
    packed = pack_masks(masks)
    assert packed["bits"].nbytes == int(np.ceil(3 * 5 * 7 / 8))
    np.testing.assert_array_equal(unpack_masks(packed), masks)
    empty = unpack_masks(pack_masks(np.zeros((0, 4, 6), bool)))
    assert empty.shape == (0, 4, 6) and empty.dtype == bool


def test_label_maps_take_the_smallest_unsigned_type():
    assert compact_labels(np.array([[0, 255]])).dtype == np.uint8
    assert compact_labels(np.array([[0, 256]])).dtype == np.uint16
    coco_rgb_id = 255 + 256 * 10 + 256**2 * 3
    ids = compact_labels(np.array([[coco_rgb_id, 0]], np.int64))
    assert ids.dtype == np.uint32 and ids.tolist() == [[coco_rgb_id, 0]]
    assert compact_labels(np.array([[-1, 3]])).dtype == np.int64  # negative values: left as they are


def test_device_clock_synchronises_cuda_before_reading(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("sync", str(device))))
    read = DeviceClock(torch.device("cuda:0"), clock=lambda: events.append("read") or 7.0)
    assert read() == 7.0
    assert events == [("sync", "cuda:0"), "read"]  # kernels still queued would not count otherwise
    events.clear()
    assert DeviceClock(torch.device("cpu"), clock=lambda: events.append("read") or 1.0)() == 1.0
    assert events == ["read"]


def test_network_precision_casts_only_under_bf16():
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with network_precision("bf16", torch.device("cpu")):
        assert layer(x).dtype == torch.bfloat16
    with network_precision("fp32", torch.device("cpu")):
        assert layer(x).dtype == torch.float32
    with pytest.raises(ValueError, match="precision 'fp16'"):
        network_precision("fp16", torch.device("cpu"))


def test_fault_injectors_reach_processes_without_the_tests_package_by_value(tmp_path):
    """Ray workers unpickle what the driver sends; a test module pickled by reference would need the
    ``tests`` package there. Registered by value (tests.faults.injectors.pickle_by_value), the injector loads
    in a process that cannot import ``tests``, and still fails once."""
    import subprocess
    import sys

    import ray.cloudpickle

    import tests.faults.injectors

    marker = tmp_path / "failed"
    load_and_call = ("import pickle, sys\nfault = pickle.loads(sys.stdin.buffer.read())\nfault([0, 1])\n"
                     "for _ in range(2):\n    try:\n        fault([2, 5])\n        print('passed')\n"
                     "    except RuntimeError as error:\n        print(error)\n")

    def run_elsewhere(blob: bytes) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", load_and_call], input=blob, capture_output=True, cwd=tmp_path,
                              timeout=60)

    pickle_by_value()
    ray.cloudpickle.unregister_pickle_by_value(tests.faults.injectors)  # by reference, as without the registration
    try:
        by_reference = run_elsewhere(ray.cloudpickle.dumps(FailOnceAtIndex(5, str(marker))))
    finally:
        pickle_by_value()
    assert by_reference.returncode != 0 and "No module named 'tests'" in by_reference.stderr.decode()
    by_value = run_elsewhere(ray.cloudpickle.dumps(FailOnceAtIndex(5, str(marker))))
    assert by_value.returncode == 0, by_value.stderr.decode()[-2000:]
    assert by_value.stdout.decode().splitlines() == ["injected failure on the batch holding image index 5", "passed"]
    assert marker.read_text() == "5"


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_a_fault_hook_reaches_the_model_actors_and_fails_only_its_batch(ray_cluster, tiny_data_root, tmp_path):
    """Step 2's stages on Ray Data (load_model_score, as the job builds them) with a fault hook in
    the model stage's arguments: the batch holding image 2 comes back as error rows, the others
    are computed."""
    import io

    from ecom2f import storage
    from ecom2f.modeling import build_model
    from ecom2f.steps.depth.stages import AllExitsModel, DepthLoader, DepthScorer, depth_dataset, depth_scoring
    from tests.steps.conftest import tiny_config

    config = tiny_config(tiny_data_root, tmp_path / "runs", "depth.gate_feature_grid=2", "gate.grid_sizes=[2]")
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(build_model(config.model).state_dict(), buffer)
    weights_uri = config.storage.layout().parent_weights
    storage.write_bytes(weights_uri, buffer.getvalue())
    config_dict, marker = config.model_dump(mode="json"), tmp_path / "failed"
    pickle_by_value()
    dataset = actors.load_model_score(
        [{"index": i} for i in range(4)],
        loader=(DepthLoader, {"config_dict": config_dict}),
        model=(AllExitsModel, {"config_dict": config_dict, "weights_uri": weights_uri,
                               "fault": FailOnceAtIndex(2, str(marker))}),
        scorer=(DepthScorer, {"config_dict": config_dict, "scoring": depth_scoring(depth_dataset(config).metadata)}),
        use_gpu=False, num_actors=1, batch_size=2, job="step 2 (test)",
    )
    errors = {}
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for index, error, loss in zip(batch["index"].tolist(), batch["error"], batch["loss"]):
            errors[index] = error
            assert np.isfinite(loss).all() != bool(error)
    failure = "RuntimeError: injected failure on the batch holding image index 2"
    assert errors == {0: "", 1: "", 2: failure, 3: failure}
    assert marker.read_text() == "2"
