"""YAML files: _base_ inheritance, deep merge, overrides, and save/load round trips."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ecom2f import storage
from ecom2f.config import Config, ConfigError, load_config, prepare_run, save_config
from ecom2f.config.yaml_tree import apply_overrides, deep_merge, load_yaml_tree, parse_yaml
from ecom2f.storage import StoragePreflightError


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_base_chain_with_relative_paths_and_deep_merge(tmp_path):
    _write(
        tmp_path / "common" / "root.yaml",
        """
        solver: {base_lr: 1.0e-4, max_iter: 1000, lr_schedule: {name: multistep, steps: [600, 800]}}
        parent: {keep_last: 5, checkpoint_period: 50}
        """,
    )
    _write(tmp_path / "common" / "middle.yaml", "_base_: root.yaml\nsolver: {max_iter: 2000}\nparent: {keep_last: 2}\n")
    leaf = _write(
        tmp_path / "exp" / "leaf.yaml",
        """
        _base_: ../common/middle.yaml
        solver:
          lr_schedule: {steps: [1500]}   # a list replaces the base's list
        """,
    )
    tree = load_yaml_tree(leaf)
    assert tree == {
        "solver": {"base_lr": 1e-4, "max_iter": 2000, "lr_schedule": {"name": "multistep", "steps": [1500]}},
        "parent": {"keep_last": 2, "checkpoint_period": 50},
    }
    config = load_config(leaf)
    assert (config.solver.max_iter, config.solver.lr_schedule.steps, config.parent.keep_last) == (2000, [1500], 2)


def test_several_bases_merge_in_order(tmp_path):
    _write(tmp_path / "a.yaml", "solver: {base_lr: 1.0, weight_decay: 0.1}\n")
    _write(tmp_path / "b.yaml", "solver: {base_lr: 2.0}\n")
    leaf = _write(tmp_path / "c.yaml", "_base_: [a.yaml, b.yaml]\n")
    assert load_yaml_tree(leaf) == {"solver": {"base_lr": 2.0, "weight_decay": 0.1}}


def test_replace_directive_drops_the_base_mapping():
    base = {"data": {"train": {"format": "coco_panoptic", "image_root": "a", "json": "b", "png_root": "c"}}}
    override = {"data": {"train": {"_replace_": True, "format": "semantic", "image_root": "x", "label_root": "y", "classes": 3}}}
    assert deep_merge(base, override) == {
        "data": {"train": {"format": "semantic", "image_root": "x", "label_root": "y", "classes": 3}}
    }
    assert deep_merge(base, {"data": {"train": {"png_root": "d"}}})["data"]["train"]["png_root"] == "d"
    assert base["data"]["train"]["png_root"] == "c"  # inputs are not modified


def test_base_cycle_and_missing_base_fail_clearly(tmp_path):
    a = _write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    b = _write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError) as raised:
        load_yaml_tree(a)
    assert str(raised.value) == f"_base_ cycle: {a} -> {b} -> {a}; remove one of these _base_ entries"
    lonely = _write(tmp_path / "lonely.yaml", "_base_: nowhere.yaml\n")
    with pytest.raises(ConfigError) as raised:
        load_yaml_tree(lonely)
    assert str(raised.value) == f"configuration file {tmp_path / 'nowhere.yaml'} does not exist"


def test_bad_yaml_and_bad_top_level_fail_clearly(tmp_path):
    broken = _write(tmp_path / "broken.yaml", "solver: {base_lr: 1\n")
    with pytest.raises(ConfigError, match=rf"^{broken} is not valid YAML: "):
        load_yaml_tree(broken)
    listed = _write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError) as raised:
        load_yaml_tree(listed)
    assert str(raised.value) == f"{listed} must hold a mapping of sections (model:, data:, ...), not list"
    with pytest.raises(ConfigError, match=r"python/object"):
        parse_yaml("x: !!python/object/apply:os.system ['true']", "unsafe.yaml")  # never executed


def test_yaml_reads_exponent_floats_without_a_dot():
    assert parse_yaml("a: 1e-4\nb: 2E+3\nc: 1.5\nd: 7\ne: '1e-4'\n", "t") == {
        "a": 1e-4, "b": 2000.0, "c": 1.5, "d": 7, "e": "1e-4"
    }


def test_overrides_parse_values_as_yaml_and_create_sections():
    tree = {"solver": {"base_lr": 1e-4}, "parent": {"exits": None}}
    result = apply_overrides(
        tree,
        ["solver.base_lr=2e-4", "parent.exits=[2, 4, 6]", "ray.use_gpu=false", "storage.root=s3://bucket/runs",
         "parent.init.mode=scratch", "model.backbone.weights=null"],
    )
    assert result == {
        "solver": {"base_lr": 2e-4},
        "parent": {"exits": [2, 4, 6], "init": {"mode": "scratch"}},
        "ray": {"use_gpu": False},
        "storage": {"root": "s3://bucket/runs"},
        "model": {"backbone": {"weights": None}},
    }
    assert tree == {"solver": {"base_lr": 1e-4}, "parent": {"exits": None}}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("solver.base_lr", "override 'solver.base_lr' must look like dotted.key=value (e.g. solver.base_lr=2e-4)"),
        ("solver..base_lr=1", "override 'solver..base_lr=1' must look like dotted.key=value (e.g. solver.base_lr=2e-4)"),
        ("solver.base_lr.x=1", "override 'solver.base_lr.x=1': solver.base_lr is a value (0.0001), not a section with keys"),
    ],
)
def test_malformed_overrides(override, expected):
    with pytest.raises(ConfigError) as raised:
        apply_overrides({"solver": {"base_lr": 1e-4}}, [override])
    assert str(raised.value) == expected


def test_override_of_unknown_key_fails_with_suggestion(tmp_path):
    path = _write(tmp_path / "c.yaml", "seed: 3\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, ["solver.base_lrr=2e-4"])
    assert str(raised.value) == (
        f"invalid configuration ({path} with overrides ['solver.base_lrr=2e-4']):\n"
        "  - solver.base_lrr: unknown key; did you mean 'base_lr'?"
    )


def test_save_then_load_round_trips_locally(tmp_path):
    config = load_config(Path(__file__).parents[2] / "configs" / "demo_cpu.yaml", ["solver.base_lr=3e-4", "seed=7"])
    target = tmp_path / "run" / "config.yaml"
    save_config(config, target, source="configs/demo_cpu.yaml")
    text = target.read_text()
    assert text.startswith("# Resolved ecom2f configuration, written ")
    assert "# Loaded from: configs/demo_cpu.yaml\n" in text
    assert load_config(target) == config
    assert [p.name for p in target.parent.iterdir()] == ["config.yaml"]  # no temporary left behind


def test_save_and_load_through_s3_with_relative_base(s3_bucket):
    storage.write_text(f"{s3_bucket}/configs/base.yaml", "solver: {base_lr: 5.0e-5}\nseed: 11\n")
    storage.write_text(f"{s3_bucket}/configs/exp/run.yaml", "_base_: ../base.yaml\nseed: 12\n")
    config = load_config(f"{s3_bucket}/configs/exp/run.yaml")
    assert (config.solver.base_lr, config.seed) == (5e-5, 12)
    layout = config.storage.layout()
    assert layout.config == "runs/default/config.yaml"
    uri = save_config(config, f"{s3_bucket}/runs/default/config.yaml")
    assert load_config(uri) == config
    assert Config.model_validate(config.model_dump()) == config


def test_prepare_run_preflights_creates_the_layout_and_saves_the_config(tmp_path):
    config = config_with_root(str(tmp_path / "runs"))
    layout = prepare_run(config, source="test")
    assert storage.list_uris(layout.run_uri) == [
        f"{tmp_path}/runs/r1/config.yaml",
        *(f"{tmp_path}/runs/r1/{name}/" for name in ("depth", "eval", "gates", "parent", "report")),
    ]
    assert load_config(layout.config) == config


def test_prepare_run_on_s3_and_its_failure_before_anything_is_written(s3_server, s3_bucket):
    config = config_with_root(f"{s3_bucket}/runs")
    layout = prepare_run(config)
    assert storage.list_uris(f"{s3_bucket}/runs/r1", recursive=True) == [f"{s3_bucket}/runs/r1/config.yaml"]
    assert load_config(layout.config) == config
    missing = config_with_root("s3://ecom2f-no-such-bucket/runs")
    with pytest.raises(StoragePreflightError, match=r"bucket 'ecom2f-no-such-bucket' does not exist"):
        prepare_run(missing)


def config_with_root(root: str) -> Config:
    return Config.model_validate({"storage": {"root": root, "run": "r1"}})


def test_dataset_spec_survives_save_and_load_under_its_yaml_key(tmp_path):
    spec = {"format": "semantic", "image_root": "ade/images", "label_root": "ade/labels", "classes": 150}
    config = Config.model_validate({"data": {"val": spec}})
    save_config(config, tmp_path / "config.yaml")
    saved = parse_yaml((tmp_path / "config.yaml").read_text(), "saved")
    assert saved["data"]["val"] == {
        **spec, "json": None, "png_root": None, "ignore_value": 255, "image_suffix": "", "label_suffix": ".png"
    }
    assert load_config(tmp_path / "config.yaml") == config
