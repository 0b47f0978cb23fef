"""cluster/aws.yaml against the autoscaler's own schema; the KubeRay manifests; the runtime env."""

from __future__ import annotations

import copy
import json
import os
import shlex

import jsonschema
import pytest
import ray.autoscaler
import yaml

from ecom2f.cli import build_parser
from ecom2f.config import load_config
from tests.conftest import REPO_ROOT

CLUSTER = REPO_ROOT / "cluster"
# Published hardware of the instance types the configs name (AWS instance-type pages).
INSTANCES = {"g5.12xlarge": {"CPU": 48, "GPU": 4}, "p4d.24xlarge": {"CPU": 96, "GPU": 8}, "c6i.8xlarge": {"CPU": 32}}


def _yaml(path):
    return yaml.safe_load(path.read_text())


def _schema():
    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- aws.yaml


def test_aws_yaml_validates_against_the_autoscaler_schema_shipped_with_ray():
    config = _yaml(CLUSTER / "aws.yaml")
    jsonschema.validate(config, _schema())
    # And the launcher's own path: defaults filled in for the provider, then its validation.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_the_schema_check_would_catch_a_broken_config():
    config = _yaml(CLUSTER / "aws.yaml")
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_a10g_x4"]["max_worker"] = 2  # typo
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        jsonschema.validate(broken, _schema())
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_a10g_x4"]["resources"]["GPU"] = 0.5  # resources are integers
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _schema())


def test_aws_yaml_node_types_image_iam_and_loopback_dashboard():
    config = _yaml(CLUSTER / "aws.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0} and head["node_config"]["InstanceType"].startswith("m5.")
    worker_types = {name: spec for name, spec in types.items() if name != config["head_node_type"]}
    assert {spec["node_config"]["InstanceType"] for spec in worker_types.values()} == set(INSTANCES)
    assert sum("GPU" in spec["resources"] for spec in worker_types.values()) == 2
    assert sum(spec["max_workers"] for spec in worker_types.values()) <= config["max_workers"]
    for name, spec in worker_types.items():
        assert spec["resources"] == INSTANCES[spec["node_config"]["InstanceType"]], name
        assert spec["min_workers"] == 0 and 1 <= spec["max_workers"] <= config["max_workers"], name
    assert config["idle_timeout_minutes"] > 0
    assert config["docker"]["image"].endswith("/ecom2f:0.1.0")
    for name, spec in types.items():  # S3 through an instance profile on every node ...
        assert spec["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
    text = (CLUSTER / "aws.yaml").read_text()
    assert "aws_access_key_id" not in text.lower() and "AKIA" not in text  # ... and no keys in files
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start


def test_coco_parent_config_fits_the_a100_node_type():
    """ray.num_workers x (cpus, gpus) per worker of the COCO config fits the p4d node."""
    config = load_config(REPO_ROOT / "configs" / "coco_panoptic_r50.yaml")
    assert config.ray.use_gpu and config.ray.num_workers == 8 and config.ray.num_gpus_per_worker == 1
    p4d = INSTANCES["p4d.24xlarge"]
    assert config.ray.num_workers * config.ray.num_gpus_per_worker <= p4d["GPU"]
    assert config.ray.num_workers * config.ray.cpus_per_worker <= p4d["CPU"]


# ----------------------------------------------------------------------------- KubeRay


def test_raycluster_manifest_gpu_groups_image_shm_and_secret():
    cluster = _yaml(CLUSTER / "kuberay" / "raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    assert cluster["metadata"]["name"] == "ecom2f"
    assert cluster["spec"]["rayVersion"] == ray.__version__  # the image's Ray (constraints.txt)
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    pods = [("head", head["template"]["spec"])] + [
        (group["groupName"], group["template"]["spec"]) for group in cluster["spec"]["workerGroupSpecs"]
    ]
    images = set()
    for name, pod in pods:
        (container,) = pod["containers"]
        images.add(container["image"])
        shm_volumes = [v["name"] for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
        assert shm_volumes and {"name": shm_volumes[0], "mountPath": "/dev/shm"} in container["volumeMounts"], name
        secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
        assert secrets == {
            "AWS_ACCESS_KEY_ID": {"name": "ecom2f-aws", "key": "AWS_ACCESS_KEY_ID"},
            "AWS_SECRET_ACCESS_KEY": {"name": "ecom2f-aws", "key": "AWS_SECRET_ACCESS_KEY"},
        }, name
    assert len(images) == 1 and images.pop().endswith("/ecom2f:0.1.0")
    expected = {"gpu-a10g-x4": ("g5.12xlarge", 4), "gpu-a100-x8": ("p4d.24xlarge", 8)}  # GPU groups only
    assert {g["groupName"] for g in cluster["spec"]["workerGroupSpecs"]} == set(expected)
    for group in cluster["spec"]["workerGroupSpecs"]:
        instance, gpus = expected[group["groupName"]]
        pod = group["template"]["spec"]
        assert pod["nodeSelector"]["node.kubernetes.io/instance-type"] == instance
        resources = pod["containers"][0]["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == str(gpus)
        assert int(resources["limits"]["cpu"]) <= INSTANCES[instance]["CPU"]
        assert group["minReplicas"] == 0 <= group["replicas"] <= group["maxReplicas"]


def test_rayjob_entrypoint_is_a_real_ecom2f_command_with_a_valid_configuration():
    job = _yaml(CLUSTER / "kuberay" / "rayjob-train-parent.yaml")
    cluster = _yaml(CLUSTER / "kuberay" / "raycluster.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "ecom2f"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "train-parent" and args.func is not None
    # The image's /opt/ecom2f is this repository: the configuration and overrides load here.
    assert args.config.startswith("/opt/ecom2f/")
    overrides = list(args.overrides) + [f"storage.root={args.storage}", f"storage.run={args.run}"]
    config = load_config(REPO_ROOT / args.config.removeprefix("/opt/ecom2f/"), overrides)
    assert config.storage.root.startswith("s3://") and config.data.root.startswith("s3://")
    assert config.model.backbone.weights == "/opt/ecom2f/weights/R-50.pkl"
    a100 = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu-a100-x8")
    pod_resources = a100["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert config.ray.num_workers <= int(pod_resources["nvidia.com/gpu"]) * a100["maxReplicas"]
    assert config.ray.cpus_per_worker * 8 <= int(pod_resources["cpu"])  # 8 workers fit one p4d pod
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"
    assert job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["image"] == \
        cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]


# ----------------------------------------------------------------------------- runtime env


def test_runtime_env_uploads_code_but_not_builds_data_or_secrets():
    from ecom2f.submit import RUNTIME_ENV_KEYS, load_runtime_env

    raw = _yaml(CLUSTER / "runtime_env.yaml")
    assert set(raw) <= set(RUNTIME_ENV_KEYS) and raw["working_dir"] == "."
    for pattern in (".git", ".venv", "*.so", "runs/", "datasets/", "weights/"):
        assert pattern in raw["excludes"], pattern
    assert raw["env_vars"] == {"RAY_TRAIN_V2_ENABLED": "1", "PYTHONUNBUFFERED": "1",
                               "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
    loaded = load_runtime_env(CLUSTER / "runtime_env.yaml", working_dir=str(REPO_ROOT))
    assert loaded["working_dir"] == str(REPO_ROOT)
