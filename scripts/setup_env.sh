#!/usr/bin/env bash
# Creates or reuses the project's Python environment, then installs ecom2f into it.
#
# The environment (about 5.5 GB with torch's CUDA libraries) lives outside the clone, in
# ~/.cache/ecom2f/venvs/<hash of constraints.txt and the dependency lists of pyproject.toml>, so fresh clones on
# one machine (CI) reuse it; .venv in the clone is a link to it. The project itself is
# reinstalled (editable, with its C++/CUDA op compiled) whenever its build inputs or the
# clone change. Running this twice in a row does nothing the second time.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  echo "ecom2f needs Python 3.11: none found (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

# Keyed by what decides the environment's contents: the pins and the dependency lists.
python_for_key=$(find_python)
key=$({
  cat constraints.txt
  "$python_for_key" -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(p["dependencies"], p["optional-dependencies"])'
} | sha256sum | cut -c1-16)
cache=${ECOM2F_VENV_CACHE:-$HOME/.cache/ecom2f/venvs}
venv="$cache/$key"

if [ ! -f "$venv/.complete" ]; then
  python=$python_for_key
  echo "== ecom2f: creating the environment $venv (once per dependency set; a few minutes)"
  rm -rf "$venv"
  mkdir -p "$cache"
  "$python" -m venv "$venv"
  pip=("$venv/bin/python" -m pip install --quiet --constraint constraints.txt)
  "${pip[@]}" pip setuptools wheel
  # The pinned torch first, so no other requirement can pull a different build.
  "${pip[@]}" torch torchvision
  "$venv/bin/python" - <<'PY' >"$venv/requirements.txt"
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
    print(requirement)
PY
  "${pip[@]}" --requirement "$venv/requirements.txt"
  touch "$venv/.complete"
  # Keep the two most recently used environments; older ones only fill the disk.
  ls -1dt "$cache"/*/ 2>/dev/null | tail -n +3 | xargs -r rm -rf
fi
touch "$venv/.complete"
ln -sfn "$venv" .venv

# Reinstall the project when its build inputs, the environment or the clone changed.
stamp_value=$({
  echo "$key $(pwd)"
  cat pyproject.toml setup.py ecom2f/ops/csrc/*
} | sha256sum | cut -c1-32)
# The environment is shared between clones: check that `ecom2f` resolves to this one.
installed=$(cd / && "$OLDPWD/.venv/bin/python" -c 'import ecom2f, os; print(os.path.dirname(os.path.dirname(ecom2f.__file__)))' 2>/dev/null || true)
if [ "$(cat .setup-stamp 2>/dev/null)" != "$stamp_value" ] || [ "$installed" != "$(pwd)" ] ||
  ! ls ecom2f/_C*.so >/dev/null 2>&1; then
  echo "== ecom2f: installing the project and compiling its deformable-attention op"
  .venv/bin/python -m pip install --quiet --no-build-isolation --no-deps --editable .
  echo "$stamp_value" >.setup-stamp
fi
