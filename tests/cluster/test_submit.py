"""``ecom2f submit`` without a cluster: addresses, runtime env files, entrypoint checks.

The Jobs API path itself runs against a real head in test_submit_local_head.py.
"""

from __future__ import annotations

import pytest

from ecom2f.cli import build_parser, main
from ecom2f.errors import UserError
from ecom2f.submit import SubmitError, dashboard_address, load_runtime_env, parse_env_pairs, submit
from ecom2f.submit import entrypoint_for as library_entrypoint_for
from tests.conftest import REPO_ROOT


def entrypoint_for(argv, working_dir=None):
    """The library's check with ecom2f's own parser, as ``ecom2f submit`` calls it."""
    return library_entrypoint_for(argv, working_dir, parser=build_parser())


def _cli(argv, capsys):
    code = main(["submit", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_dashboard_address_from_argument_or_environment(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.5:8265/")
    assert dashboard_address() == "http://10.0.0.5:8265"
    assert dashboard_address("https://ray.example:443") == "https://ray.example:443"
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(SubmitError, match="set RAY_ADDRESS to the cluster's dashboard"):
        dashboard_address()
    for wrong in ("ray://10.0.0.5:10001", "10.0.0.5:6379", "http://10.0.0.5"):
        with pytest.raises(SubmitError, match=f"cluster address '{wrong}' is not a dashboard URL"):
            dashboard_address(wrong)


def test_entrypoint_is_checked_with_ecom2f_own_parser():
    assert entrypoint_for(["--", "config", "show", "configs/demo_cpu.yaml", "solver.base_lr=2e-4"], str(REPO_ROOT)) == \
        "ecom2f config show configs/demo_cpu.yaml solver.base_lr=2e-4"
    # Quoting survives the shell the job runs in.
    assert entrypoint_for(["data", "synth", "/tmp/a b"]) == "ecom2f data synth '/tmp/a b'"
    with pytest.raises(SubmitError, match="no command to submit"):
        entrypoint_for(["--"])
    with pytest.raises(SubmitError, match="without 'ecom2f'"):
        entrypoint_for(["ecom2f", "config", "show", "x.yaml"])
    with pytest.raises(SubmitError, match="`ecom2f trian-parent --config c.yaml` is not a valid ecom2f command"):
        entrypoint_for(["trian-parent", "--config", "c.yaml"])
    with pytest.raises(SubmitError, match="is not a valid ecom2f command"):
        entrypoint_for(["--help"])  # argparse exits (help) instead of naming a command


def test_config_must_travel_with_the_working_dir(tmp_path):
    with pytest.raises(SubmitError, match="--config 'configs/nope.yaml' is not in the working directory"):
        entrypoint_for(["train-parent", "--config", "configs/nope.yaml"], str(REPO_ROOT))
    # s3:// and absolute paths (e.g. the image's /opt/ecom2f) are the user's business.
    assert entrypoint_for(["train-parent", "--config", "s3://b/c.yaml"], str(tmp_path)).startswith("ecom2f train-parent")
    assert "/opt/ecom2f/configs/x.yaml" in entrypoint_for(["train-parent", "--config", "/opt/ecom2f/configs/x.yaml"],
                                                         str(tmp_path))


def test_runtime_env_file_checks(tmp_path):
    env = load_runtime_env(REPO_ROOT / "cluster" / "runtime_env.yaml", working_dir=str(REPO_ROOT))
    assert env["working_dir"] == str(REPO_ROOT) and "*.so" in env["excludes"]
    with pytest.raises(SubmitError, match="does not exist; run from the repository root"):
        load_runtime_env(tmp_path / "missing.yaml")
    bad = tmp_path / "env.yaml"
    bad.write_text("working_dir: .\npip: [torch]\n")
    with pytest.raises(SubmitError, match=r"sets \['pip'\]: allowed keys are"):
        load_runtime_env(bad)
    bad.write_text("env_vars: {OMP_NUM_THREADS: 4}\n")
    with pytest.raises(SubmitError, match="must map names to strings"):
        load_runtime_env(bad)
    bad.write_text("env_vars: {RAY_ADDRESS: 'http://x:8265'}\n")
    with pytest.raises(SubmitError, match="sets RAY_ADDRESS"):
        load_runtime_env(bad)
    bad.write_text("working_dir: ./no/such/dir\n")
    with pytest.raises(SubmitError, match="is not a directory"):
        load_runtime_env(bad)
    assert parse_env_pairs(["A=1", "B=x=y"]) == {"A": "1", "B": "x=y"}
    with pytest.raises(SubmitError, match="--env 'A' must be NAME=VALUE"):
        parse_env_pairs(["A"])


def test_bad_input_fails_before_contacting_any_cluster(tmp_path, capsys, monkeypatch):
    """Nothing listens on port 9 of loopback: every failure here happens before a connection."""
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, out, err = _cli(["--", "config", "show", "configs/demo_cpu.yaml"], capsys)
    assert code == 2 and err.startswith("ecom2f submit: error: no cluster address: set RAY_ADDRESS") and not out
    code, out, err = _cli(["--address", "http://127.0.0.1:9", "--", "config", "shwo"], capsys)
    # argparse's reason folded into ecom2f's one line
    assert code == 2 and err == ("ecom2f submit: error: `ecom2f config shwo` is not a valid ecom2f command: argument "
                                 "ACTION: invalid choice: 'shwo' (choose from 'show'); check it with "
                                 "`ecom2f <command> --help`\n")
    code, out, err = _cli(["--address", "http://127.0.0.1:9", "--env", "RAY_ADDRESS=x", "--", "data", "synth", "d"],
                          capsys)
    assert code == 2 and err == ("ecom2f submit: error: --env RAY_ADDRESS=...: the job's driver gets its cluster "
                                 "from Ray; do not set it\n")
    with pytest.raises(SubmitError, match="runtime environment file"):
        submit(["data", "synth", "d"], "http://127.0.0.1:9", load_runtime_env(tmp_path / "nope.yaml"),
               parser=build_parser())


def _free_port() -> int:
    """A loopback port nothing listens on (never 8265: another test's cluster may be there)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_cluster_that_does_not_answer_is_one_line(tmp_path, capsys, monkeypatch):
    """Formerly ~80 lines of requests/urllib3 traceback."""
    monkeypatch.chdir(REPO_ROOT)
    address = f"http://127.0.0.1:{_free_port()}"
    code, out, err = _cli(["--address", address, "--", "config", "show", "configs/demo_cpu.yaml"], capsys)
    assert code == 2 and not out
    assert err == (f"ecom2f submit: error: no Ray dashboard answers at {address}: start the cluster (ray up "
                   "cluster/aws.yaml), make its dashboard reachable here (ray dashboard cluster/aws.yaml, or kubectl "
                   "port-forward svc/ecom2f-head-svc 8265:8265), or fix --address / RAY_ADDRESS\n")


def test_the_command_is_validated_here_before_anything_is_uploaded(tmp_path, capsys, monkeypatch):
    """docs/cluster.md's promise: a bad key of the config or of the overrides fails on the laptop in
    seconds, with the message the command itself would print, before any connection."""
    import time

    monkeypatch.chdir(REPO_ROOT)
    address = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    code, out, err = _cli(["--address", address, "--", "train-parent", "--config", "configs/demo_cpu.yaml",
                           "solver.base_lrr=1"], capsys)
    assert code == 2 and not out and err == (
        "ecom2f submit: error: invalid configuration (configs/demo_cpu.yaml with overrides ['solver.base_lrr=1']): "
        "solver.base_lrr: unknown key; did you mean 'base_lr'?\n")
    assert time.monotonic() - start < 10
    code, out, err = _cli(["--address", address, "--", "depth-labels", "--config", "configs/demo_cpu.yaml",
                           "--betas", "-1"], capsys)
    assert code == 2 and err.startswith("ecom2f submit: error: --betas -1: a trade-off must be a finite number >= 0")
    code, out, err = _cli(["--address", address, "--", "model-flops", "--backbone", "resnet5O"], capsys)
    assert code == 2 and "'resnet5O' is not allowed" in err
    # from another folder, a relative --config is read from the working directory the job uploads
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"solver.base_lrr: unknown key; did you mean 'base_lr'\?"):
        entrypoint_for(["train-parent", "--config", "configs/demo_cpu.yaml", "solver.base_lrr=1"], str(REPO_ROOT))
    assert entrypoint_for(["train-parent", "--config", "configs/demo_cpu.yaml", "solver.base_lr=1e-4"],
                          str(REPO_ROOT)).endswith("solver.base_lr=1e-4")


def test_what_only_the_cluster_can_read_is_left_to_the_job(tmp_path):
    """An s3:// config, an absolute path that exists only in the image, or a run named by --run alone
    (its saved config lives in the cluster's storage) cannot be read here: the job checks them."""
    assert entrypoint_for(["train-parent", "--config", "s3://b/c.yaml", "bad.key=1"], str(tmp_path))
    assert entrypoint_for(["train-parent", "--config", "/opt/ecom2f/configs/x.yaml", "bad.key=1"], str(tmp_path))
    assert entrypoint_for(["report", "--run", "s3://b/runs/demo"], str(tmp_path)) == \
        "ecom2f report --run s3://b/runs/demo"
