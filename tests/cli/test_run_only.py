"""Commands that read a run need only the run: ``--run runs/demo`` alone loads the configuration the
run saved (``<run>/config.yaml``), with the run's real location and any overrides on top; and the
names ``make demo`` writes and ``configs/demo_cpu.yaml`` reads agree."""

from __future__ import annotations

import argparse
import re

import pytest

from ecom2f.cli import main
from ecom2f.cli.run_config import load_run_config, split_run_uri
from ecom2f.config import load_config, save_config
from ecom2f.errors import BadInputError
from ecom2f.storage.layout import SUCCESS
from tests.conftest import REPO_ROOT
from tests.steps.test_depth_table import EXITS, crafted_images, write_table

DEMO = REPO_ROOT / "configs" / "demo_cpu.yaml"


def _error(capsys, command: str) -> str:
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured
    assert captured.err.startswith(f"ecom2f {command}: error: "), captured.err
    return captured.err.removeprefix(f"ecom2f {command}: error: ").strip()


@pytest.fixture
def moved_run(tmp_path):
    """A run with a saved configuration and a finished depth table, moved after it was written: the
    saved storage.root still names the old place (tmp/old), the run now lives at tmp/runs/demo."""
    config = load_config(DEMO, [f"storage.root={tmp_path / 'old'}", "model.gate.exits=[1,3,6]",
                                "gate.betas=[0.0,0.5]"])
    run = tmp_path / "runs" / "demo"
    save_config(config, str(run / "config.yaml"))
    write_table(str(run / "depth"), crafted_images())
    (run / "depth" / SUCCESS).write_text('{"config_hash": "crafted"}')
    return run


def test_make_demo_writes_the_run_the_demo_config_names():
    """`make demo` passes --storage ./runs; the config names the run: together, runs/demo, the folder
    the README and every follow-up command (ecom2f report --run runs/demo) use."""
    makefile = (REPO_ROOT / "Makefile").read_text()
    (demo_line,) = [line for line in makefile.splitlines() if "ray_jobs.pipeline" in line and "demo_cpu" in line]
    storage = re.search(r"--storage (\S+)", demo_line).group(1)
    layout = load_config(DEMO, [f"storage.root={storage}"]).storage.layout()
    assert layout.run_uri == "runs/demo"
    assert load_config(DEMO).storage.layout().run_uri == "runs/demo"  # without --storage too
    assert "runs/demo" in (REPO_ROOT / "README.md").read_text()


def test_depth_labels_with_run_alone_uses_the_saved_config_at_the_runs_real_place(moved_run, tmp_path, capsys):
    assert main(["depth-labels", "--run", str(moved_run)]) == 0
    by_run = capsys.readouterr().out
    # the saved gate.betas (0, 0.5) and gate exits ([1, 3, 6]) were used; the table was found where the run is
    assert re.search(r"^0\.00* ", by_run, re.MULTILINE) and re.search(r"^0\.50* ", by_run, re.MULTILINE), by_run
    assert "exit_1" in by_run and "exit_6" in by_run and "exit_2" not in by_run
    # the same as naming the config and the storage explicitly
    assert main(["depth-labels", "--config", str(DEMO), "--storage", str(tmp_path / "runs"),
                 "model.gate.exits=[1,3,6]", "gate.betas=[0.0,0.5]"]) == 0
    assert capsys.readouterr().out == by_run
    # overrides apply on top of the saved configuration; a name under --storage works too
    assert main(["depth-labels", "--run", "demo", "--storage", str(tmp_path / "runs"), "gate.betas=[0.25]"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^0\.250* ", out, re.MULTILINE) and not re.search(r"^0\.50* ", out, re.MULTILINE)


def test_load_run_config_resolves_root_and_name_from_the_run(moved_run, tmp_path):
    args = argparse.Namespace(config=None, storage=None, run=f"{moved_run}/", overrides=["solver.base_lr=1e-3"])
    config = load_run_config(args)
    assert (config.storage.root, config.storage.run) == (str(tmp_path / "runs"), "demo")
    assert config.solver.base_lr == 1e-3 and config.model.gate.exits == [1, 3, 6]
    # with --config, a run folder sets both storage.root and storage.run
    args = argparse.Namespace(config=str(DEMO), storage=None, run=str(tmp_path / "x" / "mine"), overrides=[])
    assert load_run_config(args).storage.layout().run_uri == str(tmp_path / "x" / "mine")


@pytest.mark.parametrize(("command", "artifact"), [
    ("evaluate", "parent/model_final.pth"),
    ("report", "eval/summary.parquet"),
])
def test_commands_that_read_a_run_take_run_alone_and_name_its_missing_parts(command, artifact, moved_run, capsys):
    assert main([command, "--run", str(moved_run)]) == 2
    message = _error(capsys, command)
    assert f"{moved_run}/{artifact}" in message, message
    assert str(moved_run.parent.parent / "old") not in message  # the saved root is not where the run is


def test_model_flops_of_a_run_uses_its_saved_model(moved_run, capsys):
    """The run's saved model, here with a width no shipped config has: only its saved config knows it."""
    from tests.cli.test_model_flops import _depth_6_row

    saved = load_config(moved_run / "config.yaml")
    save_config(load_config(moved_run / "config.yaml", ["model.pixel_decoder.ffn_dim=96"]),
                str(moved_run / "config.yaml"))
    assert main(["model-flops", "--run", str(moved_run)]) == 0
    out = capsys.readouterr().out
    size = (saved.data.test_min_size, saved.data.test_max_size)
    assert out.startswith(f"{saved.model.backbone.name} ({moved_run}), {size[0]}x{size[1]}\n")
    wider = load_config(moved_run / "config.yaml").model
    assert wider.pixel_decoder.ffn_dim == 96 and _depth_6_row(wider, *size) in out
    assert _depth_6_row(saved.model, *size) not in out


def test_a_run_that_does_not_exist_is_one_line(tmp_path, capsys):
    missing = tmp_path / "runs" / "nope"
    assert main(["report", "--run", str(missing)]) == 2
    assert _error(capsys, "report") == (
        f"--run {missing}: no run at {missing} (its saved configuration {missing}/config.yaml does not exist; step 1 "
        "writes it when it starts). Give the run's folder (e.g. --run runs/demo), or --config CONFIG to start a new run")
    assert not missing.exists()


def test_naming_no_run_and_no_config_is_one_line(capsys):
    assert main(["evaluate"]) == 2
    assert _error(capsys, "evaluate") == ("name the run: --run RUN (its folder, e.g. runs/demo, or "
                                          "s3://bucket/runs/demo) to use the configuration it saved, or --config "
                                          "CONFIG (e.g. configs/demo_cpu.yaml)")


def test_a_run_folder_with_storage_is_refused(moved_run, capsys):
    assert main(["report", "--run", str(moved_run), "--storage", "s3://b/runs"]) == 2
    assert _error(capsys, "report").startswith(f"--run '{moved_run}' is a run's folder, which already says where")


def test_split_run_uri():
    assert split_run_uri("runs/demo") == ("runs", "demo")
    assert split_run_uri("runs/demo/") == ("runs", "demo")
    assert split_run_uri("/abs/runs/demo") == ("/abs/runs", "demo")
    assert split_run_uri("demo") == (".", "demo")
    assert split_run_uri("./demo") == (".", "demo")
    assert split_run_uri("s3://bucket/runs/demo") == ("s3://bucket/runs", "demo")
    assert split_run_uri("s3://bucket/demo") == ("s3://bucket", "demo")
    for bad in ("s3://bucket", "s3://bucket/", "runs/..", "/"):
        with pytest.raises(BadInputError):
            split_run_uri(bad)
    assert EXITS == [1, 3, 6]  # the crafted table's exits, which the fixture's config names
