"""``ecom2f submit`` without a cluster: addresses, runtime env files, entrypoint checks.

The Jobs API path itself runs against a real head in test_submit_local_head.py.
"""

from __future__ import annotations

import pytest

from ecom2f.cli import build_parser, main
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
    # argparse's own two lines about `config shwo`, then ecom2f's one line.
    assert code == 2 and "invalid choice: 'shwo'" in err
    assert err.splitlines()[-1].startswith("ecom2f submit: error: `ecom2f config shwo` is not a valid ecom2f command")
    code, out, err = _cli(["--address", "http://127.0.0.1:9", "--env", "RAY_ADDRESS=x", "--", "data", "synth", "d"],
                          capsys)
    assert code == 2 and err == ("ecom2f submit: error: --env RAY_ADDRESS=...: the job's driver gets its cluster "
                                 "from Ray; do not set it\n")
    with pytest.raises(SubmitError, match="runtime environment file"):
        submit(["data", "synth", "d"], "http://127.0.0.1:9", load_runtime_env(tmp_path / "nope.yaml"),
               parser=build_parser())
