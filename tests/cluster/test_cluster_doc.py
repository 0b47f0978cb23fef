"""docs/cluster.md stays consistent with the code: its commands parse, its configs load with
their overrides, the files it names exist, and its cost table follows from its assumptions."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest

from ecom2f.config import load_config
from tests.conftest import REPO_ROOT

DOC = (REPO_ROOT / "docs" / "cluster.md").read_text()
def _full_parser() -> argparse.ArgumentParser:
    from ecom2f.cli import build_parser

    return build_parser()


def _submitted_commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", DOC, re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line)[3:] for line in lines if line.startswith("ecom2f submit -- ")]


def test_every_step_is_documented_as_a_submitted_job():
    names = [argv[0] for argv in _submitted_commands()]
    for step in ("train-parent", "build-depth", "tune-gate", "evaluate", "report", "pipeline"):
        assert step in names, step


@pytest.mark.parametrize("argv", _submitted_commands(), ids=lambda argv: argv[0])
def test_documented_job_commands_parse_and_their_configs_load(argv):
    parser = _full_parser()
    if argv[0] not in parser._subparsers._group_actions[0].choices:
        pytest.skip(f"`ecom2f {argv[0]}` is not in this build yet")
    args = parser.parse_args(argv)
    assert args.func is not None
    overrides = list(args.overrides) + [f"storage.root={args.storage}", f"storage.run={args.run}"]
    config = load_config(REPO_ROOT / args.config, overrides)
    assert config.storage.root == "s3://my-ecom2f-bucket/runs" and config.storage.run == "coco_panoptic_r50"
    if any(o.startswith("data.root=") for o in args.overrides):
        assert config.data.root == "s3://my-ecom2f-bucket/datasets"


def test_files_named_in_the_guide_exist():
    for path in sorted(set(re.findall(r"`((?:cluster|configs|scripts|tests/cluster|ecom2f)/[\w./-]+\.(?:yaml|py|sh))`", DOC))):
        assert (REPO_ROOT / path).exists(), path
    for path in ("Dockerfile", ".dockerignore"):
        assert f"`{path}`" in DOC and (REPO_ROOT / path).exists()


def test_cost_table_follows_from_the_stated_schedule_and_assumptions():
    config = load_config(REPO_ROOT / "configs" / "coco_panoptic_r50.yaml")
    assert f"{config.solver.max_iter:,} iterations at {config.solver.ims_per_batch} images" in DOC
    assert round(config.solver.max_iter * config.solver.ims_per_batch / 118_287) == 50  # "about 50 epochs"
    v100_hours = 3 * 24 * 8
    assert f"about **{v100_hours} V100-hours**" in DOC
    a100, a10g = 2.0, 0.8  # speed relative to a V100, as stated
    assert f"{v100_hours / a100:.0f} A100-h = {v100_hours / a100 / 8:.0f} node-h" in DOC
    assert f"{v100_hours / a10g:.0f} A10G-h = {v100_hours / a10g / 4:.0f} node-h" in DOC
    # Dollar figures are rounded to the nearest $10 in the table.
    assert f"**~${round(v100_hours / a100 / 8 * 32.77, -1):,.0f}**" in DOC
    assert f"**~${round(v100_hours / a10g / 4 * 5.67, -1):,.0f}**" in DOC
    depth_seconds = 118_287 * 6 / 8.6  # every exit of 1..6 at the published V100 inference rate
    assert f"118,287 x 6 / 8.6 = {depth_seconds:,.0f} s = {depth_seconds / 3600:.0f} V100-hours" in DOC
    assert f"| <= {depth_seconds / 3600:.0f} |" in DOC
