#!/usr/bin/env bash
# Fills gpu_bundle/ with the wheels of scripts/gpu_bundle.txt, for the lent GPU machine, which
# reaches no package registry (CPython 3.12, x86-64). Run it here, on a connected machine:
#   make gpu-bundle            (or: bash scripts/gpu_bundle.sh)
# Binary packages come as manylinux / pure-Python wheels for cp312; deepspeed, published as an
# sdist only, is built here into a py3-none-any wheel with none of its ops prebuilt (the check
# gives DeepSpeed a torch optimizer, so none is ever compiled). The folder is git-ignored and
# travels to the GPU machine as a carried path (carry: ["gpu_bundle"]); it must stay under
# 60 MiB (the whole working tree that travels may be 64 MiB).
# Environment: PYTHON (default .venv/bin/python, which has torch for building deepspeed),
# GPU_BUNDLE_LIST (default scripts/gpu_bundle.txt), GPU_BUNDLE_DIR (default gpu_bundle).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
LIST=${GPU_BUNDLE_LIST:-scripts/gpu_bundle.txt}
OUT=${GPU_BUNDLE_DIR:-gpu_bundle}
LIMIT_MIB=60
SDISTS=" deepspeed "  # built here into py3-none-any wheels

mapfile -t requirements < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$LIST" | awk 'NF')
binary=()
source=()
for requirement in "${requirements[@]}"; do
  case "$requirement" in
    *==*) ;;
    *) echo "gpu_bundle.sh: $LIST: '$requirement' has no pinned version (name==version)" >&2; exit 1 ;;
  esac
  name=${requirement%%==*}
  if [[ "$SDISTS" == *" $name "* ]]; then source+=("$requirement"); else binary+=("$requirement"); fi
done

staging="$OUT.tmp"
rm -rf "$staging"
mkdir -p "$staging"
echo "== gpu_bundle: ${#binary[@]} wheels for CPython 3.12 x86-64"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$staging" \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  "${binary[@]}"
for requirement in "${source[@]}"; do
  echo "== gpu_bundle: building $requirement (no ops prebuilt)"
  DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$staging" "$requirement"
done

# Exactly one wheel per requirement, each usable on the GPU machine's CPython 3.12.
count=$(find "$staging" -maxdepth 1 -name '*.whl' | wc -l)
if [ "$count" -ne "${#requirements[@]}" ]; then
  echo "gpu_bundle.sh: expected ${#requirements[@]} wheels, got $count:" >&2
  ls "$staging" >&2
  exit 1
fi
bad=$(find "$staging" -maxdepth 1 -name '*.whl' ! -name '*-py3-none-any.whl' ! -name '*-py2.py3-none-any.whl' \
  ! -name '*-cp312-*manylinux*x86_64*.whl' ! -name '*-abi3-*manylinux*x86_64*.whl')
if [ -n "$bad" ]; then
  echo "gpu_bundle.sh: wheels that CPython 3.12 on x86-64 cannot use: $bad" >&2
  exit 1
fi
size_kib=$(du -sk "$staging" | cut -f1)
if [ "$size_kib" -gt $((LIMIT_MIB * 1024)) ]; then
  echo "gpu_bundle.sh: the bundle is $((size_kib / 1024)) MiB, over its $LIMIT_MIB MiB limit" >&2
  exit 1
fi
rm -rf "$OUT"
mv "$staging" "$OUT"
ls -l "$OUT" | awk 'NR > 1 {printf "  %8.1f KiB  %s\n", $5 / 1024, $9}'
echo "== gpu_bundle: ${#requirements[@]} wheels, $((size_kib / 1024)).$(((size_kib % 1024) * 10 / 1024)) MiB in $OUT/"
