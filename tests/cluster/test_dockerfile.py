"""The Dockerfile, read statically (CI has no container engine): it must follow the install
path of scripts/setup_env.sh that CI exercises, and build the op for sm_75/sm_80/sm_90 plus PTX."""

from __future__ import annotations

import re
import tomllib

import torch

from tests.conftest import REPO_ROOT


def _instructions(text: str) -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), " ".join(rest.split())))
    return out


def _pip_installs(instructions) -> list[str]:
    """Every `pip install ...` command of the RUN lines, in order."""
    commands = []
    for keyword, args in instructions:
        if keyword == "RUN":
            commands += [part.strip() for part in args.split("&&") if "pip install" in part]
    return commands


def test_base_image_carries_the_cuda_toolkit_of_the_pinned_torch():
    instructions = _instructions((REPO_ROOT / "Dockerfile").read_text())
    arg = next(args for keyword, args in instructions if keyword == "ARG" and args.startswith("CUDA_IMAGE="))
    image = arg.split("=", 1)[1]
    match = re.fullmatch(r"nvidia/cuda:(\d+\.\d+)\.\d+-(?:cudnn-)?devel-ubuntu\d\d\.\d\d", image)
    assert match, f"{image}: a CUDA *devel* image (nvcc) is needed to compile the op"
    assert instructions[[k for k, _ in instructions].index("FROM")][1] == "${CUDA_IMAGE}"
    pinned = re.search(r"^torch==(.+)$", (REPO_ROOT / "constraints.txt").read_text(), re.M).group(1)
    # This environment holds the pinned torch; its CUDA version must match the toolkit's.
    assert torch.__version__.split("+")[0] == pinned
    assert torch.version.cuda is not None and match.group(1) == torch.version.cuda, (image, torch.version.cuda)
    assert any(k == "RUN" and "python3.11-venv" in a and "python3.11-dev" in a for k, a in instructions)


def test_install_order_matches_setup_env_sh():
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    instructions = _instructions(dockerfile)
    installs = _pip_installs(instructions)
    # 1. build tools, then the pinned torch first, both under the constraints
    assert installs[0].endswith("--constraint constraints.txt pip setuptools wheel")
    assert installs[1].endswith("--constraint constraints.txt torch torchvision")
    # 2. the dependency lists setup_env.sh installs (dependencies + dev), same constraints
    assert "--constraint constraints.txt --requirement /tmp/requirements.txt" in installs[2]
    assert 'p["dependencies"] + p["optional-dependencies"]["dev"]' in dockerfile
    # 3. the project: editable, against the installed torch, no dependency changes
    assert installs[3] == "python -m pip install --no-build-isolation --no-deps --editable ."
    assert len(installs) == 4
    # The same three phases, in the same order, are what setup_env.sh (CI) runs.
    script = (REPO_ROOT / "scripts" / "setup_env.sh").read_text()
    torch_at = script.index('"${pip[@]}" torch torchvision')
    requirements_at = script.index('"${pip[@]}" --requirement')
    project_at = script.index("pip install --quiet --no-build-isolation --no-deps --editable .")
    assert "--constraint constraints.txt" in script and torch_at < requirements_at < project_at
    assert 'project["dependencies"] + project["optional-dependencies"]["dev"]' in script
    # pyproject's dev extra has ninja, which setup.py's BuildExtension(use_ninja=True) needs.
    dev = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert any(requirement.startswith("ninja") for requirement in dev)


def test_op_is_built_for_sm80_and_sm90_and_checked():
    instructions = _instructions((REPO_ROOT / "Dockerfile").read_text())
    keywords = [k for k, _ in instructions]
    env = " ".join(args for keyword, args in instructions if keyword == "ENV")
    assert 'TORCH_CUDA_ARCH_LIST="7.5;8.0;9.0+PTX"' in env and "ECOM2F_BUILD_CUDA=1" in env and "CUDA_HOME=/usr/local/cuda" in env
    copy_all = instructions.index(("COPY", ". /opt/ecom2f"))
    project = next(i for i, (k, a) in enumerate(instructions) if k == "RUN" and "--no-build-isolation" in a)
    arch_env = next(i for i, (k, a) in enumerate(instructions) if k == "ENV" and "TORCH_CUDA_ARCH_LIST" in a)
    assert arch_env < project and copy_all < project
    # The dependency layer only sees the pins (cached across code changes).
    deps = next(i for i, (k, a) in enumerate(instructions) if k == "RUN" and "torch torchvision" in a)
    assert instructions.index(("COPY", "constraints.txt pyproject.toml ./")) < deps < copy_all
    check = instructions[project][1]
    assert '_dispatch_has_kernel_for_dispatch_key("ecom2f::ms_deform_attn", "CUDA")' in check
    assert "grep -q sm_80" in check and "grep -q sm_90" in check and "--list-ptx" in check
    assert keywords.count("FROM") == 1


def test_dockerignore_keeps_local_builds_and_data_out_but_not_weights():
    patterns = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for pattern in (".git", ".venv", "*.so", "runs/", "datasets/", "build/"):
        assert pattern in patterns, pattern
    assert not any("weights" in pattern for pattern in patterns)  # the image carries ./weights
