#!/usr/bin/env bash
# The GPU check: builds the deformable-attention op for this machine's GPU, runs every GPU test
# (tests/gpu and the @pytest.mark.gpu tests elsewhere in tests/) and the GPU benchmarks
# (benchmarks/gpu), and writes OUTDIR/gpu_check.{json,md,log}, after every stage, so a report
# exists even when a stage fails or runs out of time. docs/gpu_check.md says how to run it on a
# lent GPU machine.
#
#   scripts/gpu_check.sh OUTDIR            on a CUDA machine: python3 with a CUDA build of torch
#                                          (>= 2.6) and nvcc; no package registry needed: what
#                                          the machine lacks comes from gpu_bundle/ (make gpu-bundle)
#   scripts/gpu_check.sh --dry-run [OUTDIR]   anywhere (CI, via tests/infra/test_gpu_check_dry_run.py):
#                                          checks the check itself in under a minute, downloading
#                                          nothing: syntax, files, that every import resolves on the
#                                          GPU machine, that the GPU tests collect without moto,
#                                          boto3 or ray, and the benchmarks on tiny CPU problems.
#
# Environment: PYTHON (python3), GPU_CHECK_SECONDS (450: the whole check's deadline; each stage
# also has its own budget), GPU_BUNDLE_DIR (gpu_bundle), GPU_BUNDLE_LIST (scripts/gpu_bundle.txt),
# GPU_CHECK_KERNEL_VARIANTS (vectorized: values of ECOM2F_MSDA_KERNEL checked and timed too,
# when ecom2f/ops reads that variable), GPU_CHECK_ONLY (e.g. "tests-ops bench-op": run only these
# stages after device, bundle and build; for a second, shorter run), GPU_CHECK_KEEP_WORK (1: keep
# the work folder with every stage's whole log).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2

SELF="$REPO/scripts/gpu_check.sh"
usage() { sed -n '2,22p' "$SELF" | sed 's/^# \{0,1\}//'; }

MODE=${GPU_CHECK_MODE:-gpu}
STAGE_CALL=()
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  --dry-run) MODE=dry-run; shift ;;
  --stage) shift; STAGE_CALL=("$@"); set -- "${GPU_CHECK_OUTDIR:-}" ;;  # internal: one stage, in a child
  -*) echo "gpu_check.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
esac
OUTDIR=${1:-}
if [ -z "$OUTDIR" ] && [ "$MODE" = gpu ]; then
  echo "gpu_check.sh: give the folder for the report (on a lent device: \"\$OUT\")" >&2
  exit 2
fi

PYTHON=${PYTHON:-python3}
DEADLINE_S=${GPU_CHECK_SECONDS:-450}
BUNDLE_DIR=${GPU_BUNDLE_DIR:-$REPO/gpu_bundle}
BUNDLE_LIST=${GPU_BUNDLE_LIST:-$REPO/scripts/gpu_bundle.txt}
KERNEL_VARIANTS=${GPU_CHECK_KERNEL_VARIANTS:-vectorized}
REPORT_RESERVE_S=10
PER_TEST_TIMEOUT_S=150
START=${GPU_CHECK_START:-$(date +%s)}
if [ -z "${GPU_CHECK_WORK:-}" ]; then  # the top-level run; stages run in children that inherit these
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/ecom2f-gpu-check.XXXXXX")
  [ -n "$OUTDIR" ] || OUTDIR=$WORK/out
  mkdir -p "$OUTDIR"
  OUTDIR=$(cd "$OUTDIR" && pwd)
  date -u +%Y-%m-%dT%H:%M:%SZ >"$WORK/started"
  # The repository first (ecom2f, tests, benchmarks), then the carried wheels, then our plugins.
  export PYTHONPATH="$REPO:$WORK/site:$REPO/scripts/gpu${PYTHONPATH:+:$PYTHONPATH}"
  export GPU_CHECK_WORK=$WORK GPU_CHECK_OUTDIR=$OUTDIR GPU_CHECK_START=$START GPU_CHECK_MODE=$MODE
fi
WORK=$GPU_CHECK_WORK
OUTDIR=$GPU_CHECK_OUTDIR
SITE=$WORK/site
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

# Everything the check runs, so the dry run can verify it exists.
SCRIPTS=(scripts/gpu/device_info.py scripts/gpu/imports.py scripts/gpu/report.py scripts/gpu/results_plugin.py
  scripts/gpu/block_imports.py scripts/gpu/device_packages.txt scripts/gpu/lazy_only.txt scripts/gpu_bundle.sh
  setup.py ecom2f/ops/csrc tests/conftest.py tests/gpu/conftest.py tests/ops/oracle.py
  configs/demo_cpu.yaml configs/coco_panoptic_r50.yaml)
BENCHMARKS=(benchmarks.gpu.op_bench benchmarks.gpu.model_bench)

# ----------------------------------------------------------------------------- test selection
gpu_test_files() {  # folder -> the test files there that hold GPU tests
  grep -l "mark\.gpu" "$1"/test_*.py 2>/dev/null
}
OPS_TESTS=($(gpu_test_files tests/ops) tests/gpu/test_op_*.py)
MODEL_TESTS=($(gpu_test_files tests/modeling) tests/gpu/test_model_*.py)
OTHER_TESTS=($(grep -rl --include='test_*.py' "mark\.gpu" tests | grep -v -E '^tests/(ops|modeling|gpu)/'))
TRAIN_TESTS=(tests/gpu/test_train_*.py "${OTHER_TESTS[@]}")
ALL_TESTS=("${OPS_TESTS[@]}" "${MODEL_TESTS[@]}" "${TRAIN_TESTS[@]}")

# ----------------------------------------------------------------------------- stages
record() {  # stage status rc seconds budget note
  "$PYTHON" - "$WORK/stages.jsonl" "$@" <<'PY'
import json, sys
path, stage, status, rc, seconds, budget, note = sys.argv[1:8]
with open(path, "a") as f:
    f.write(json.dumps({"stage": stage, "status": status, "rc": int(rc), "seconds": float(seconds),
                        "budget": int(budget), "note": note, "log": f"{stage}.log"}) + "\n")
PY
  "$PYTHON" scripts/gpu/report.py "$WORK" "$OUTDIR" --mode "$MODE" >/dev/null 2>&1 ||
    echo "gpu_check.sh: could not write the report after stage $1" >&2
}

skip() {  # stage note
  echo "-- $1: skipped: $2"
  record "$1" skip 0 0 0 "$2"
}

STAGE_NOTE=""
run_stage() {  # name budget_s command... ; the stage passes when the command exits 0
  local name=$1 budget=$2
  shift 2
  local left=$((START + DEADLINE_S - REPORT_RESERVE_S - $(date +%s)))
  if [ "$left" -lt 15 ]; then  # not run, and the check cannot pass: a timeout
    echo "-- $name: not run: the check's ${DEADLINE_S} s deadline was reached"
    record "$name" timeout 0 0 0 "not run: the check's ${DEADLINE_S} s deadline (GPU_CHECK_SECONDS) was reached"
    return 1
  fi
  [ "$budget" -le "$left" ] || budget=$left
  echo "-- $name (at most ${budget} s)"
  local t0 t1 rc status
  t0=$(date +%s.%N)
  export ECOM2F_GPU_RESULTS="$WORK/results-$name.jsonl"
  if declare -F "$1" >/dev/null; then  # a function of this script: run it in a child, under the limit
    set -- bash "$SELF" --stage "$@"
  fi
  timeout --kill-after=10 "$budget" "$@" >"$WORK/$name.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  case $rc in
    0) status=pass ;;
    75) status=skip; STAGE_NOTE=$(tail -n 1 "$WORK/$name.log") ;;
    124 | 137) status=timeout; STAGE_NOTE="stopped after its ${budget} s budget${STAGE_NOTE:+; $STAGE_NOTE}" ;;
    *) status=fail ;;
  esac
  local summary
  summary=$(grep -E "(passed|failed|error|skipped|deselected).* in [0-9.]+s" "$WORK/$name.log" | tail -n 1)
  [ -z "$summary" ] || STAGE_NOTE="${STAGE_NOTE:+$STAGE_NOTE; }pytest: ${summary//=/}"
  echo "   $status (rc $rc, $(awk "BEGIN {printf \"%.1f\", $t1 - $t0}") s)"
  [ "$status" = pass ] || [ "$status" = skip ] || tail -n 15 "$WORK/$name.log" | sed 's/^/   | /'
  record "$name" "$status" "$rc" "$(awk "BEGIN {print $t1 - $t0}")" "$budget" "$STAGE_NOTE"
  STAGE_NOTE=""
  [ "$status" = pass ]
}

run_pytest() {  # pytest args... ; exit 5 (no test selected) becomes 75, a skip
  local timeout_args=() rc
  "$PYTHON" -c "import pytest_timeout" 2>/dev/null && timeout_args=(--timeout "$PER_TEST_TIMEOUT_S")
  "$PYTHON" -m pytest -p results_plugin -p no:cacheprovider -q -rfEs "${timeout_args[@]}" "$@"
  rc=$?
  [ $rc -ne 5 ] || { echo "no test selected"; return 75; }
  return $rc
}

pytest_stage() {  # name budget tests...
  local name=$1 budget=$2
  shift 2
  run_stage "$name" "$budget" run_pytest -m gpu "$@"
}

# ----------------------------------------------------------------------------- GPU stages
cuda_home() {  # the toolkit folder holding bin/nvcc and include/cuda_runtime.h
  local candidate nvcc
  for candidate in "${CUDA_HOME:-}" /usr/local/cuda; do
    [ -n "$candidate" ] && [ -x "$candidate/bin/nvcc" ] && [ -f "$candidate/include/cuda_runtime.h" ] &&
      { echo "$candidate"; return 0; }
  done
  nvcc=$(command -v nvcc) || return 1
  candidate=$(dirname "$(dirname "$(readlink -f "$nvcc")")")
  [ -f "$candidate/include/cuda_runtime.h" ] && echo "$candidate"
}

build_extension() {  # compiles ecom2f/_C*.so in place for the local GPU only, against this torch
  local arch home src
  arch=$("$PYTHON" scripts/gpu/device_info.py --arch) || return 1
  home=$(cuda_home) || { echo "no CUDA toolkit found (nvcc and include/cuda_runtime.h); set CUDA_HOME"; return 1; }
  echo "TORCH_CUDA_ARCH_LIST=$arch CUDA_HOME=$home"
  rm -f ecom2f/_C*.so
  # setup.py runs from a folder without pyproject.toml (ecom2f linked in), so this machine's
  # setuptools builds the extension without reading the project's metadata or resolving anything.
  src=$WORK/build-src
  mkdir -p "$src"
  cp setup.py "$src/"
  ln -s "$REPO/ecom2f" "$src/ecom2f"
  (cd "$src" && TORCH_CUDA_ARCH_LIST=$arch CUDA_HOME=$home ECOM2F_BUILD_CUDA=1 MAX_JOBS=$(nproc) \
    "$PYTHON" setup.py build_ext --inplace --build-temp "$WORK/build-temp") || return 1
  "$PYTHON" -c "import ecom2f.ops as o, sys; print('library', o.library_path()); sys.exit(0 if o.has_kernel('cuda') else 1)"
}

install_bundle() {
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --disable-pip-version-check --root-user-action=ignore \
    --find-links "$BUNDLE_DIR" --target "$SITE" --requirement "$BUNDLE_LIST" &&
    "$PYTHON" -c "import pydantic, deepspeed; print('pydantic', pydantic.VERSION, 'deepspeed', deepspeed.__version__)"
}

wanted() {  # stage -> whether GPU_CHECK_ONLY (empty: every stage) asks for it
  [ -z "${GPU_CHECK_ONLY:-}" ] || [[ " $GPU_CHECK_ONLY " == *" $1 "* ]]
}

kernel_variants() {  # the ECOM2F_MSDA_KERNEL values to check, when the op reads that variable
  grep -rqs ECOM2F_MSDA_KERNEL ecom2f/ops && echo "$KERNEL_VARIANTS"
}

gpu_check() {
  run_stage device 60 "$PYTHON" scripts/gpu/device_info.py --json "$WORK/device.json"
  if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "-- rest: torch sees no CUDA device here (try --dry-run)"
    record rest fail 1 0 0 "torch sees no CUDA device here: nothing else can run (try --dry-run)"
    return
  fi
  if [ -d "$BUNDLE_DIR" ]; then
    run_stage bundle 60 install_bundle
  else
    skip bundle "no $BUNDLE_DIR: run make gpu-bundle on a connected machine and carry it; tests that need pydantic or deepspeed fail"
  fi
  run_stage build 240 build_extension || { skip rest "the op did not build: no GPU test can run"; return; }
  wanted tests-ops && pytest_stage tests-ops 150 "${OPS_TESTS[@]}"
  local variant
  for variant in $(kernel_variants); do
    wanted "tests-ops-$variant" || continue
    export ECOM2F_MSDA_KERNEL=$variant
    pytest_stage "tests-ops-$variant" 90 -k "oracle or coco or finite" "${OPS_TESTS[@]}"
    unset ECOM2F_MSDA_KERNEL
  done
  wanted tests-model && pytest_stage tests-model 120 "${MODEL_TESTS[@]}"
  wanted tests-train && pytest_stage tests-train 180 "${TRAIN_TESTS[@]}"
  wanted bench-op && run_stage bench-op 90 "$PYTHON" -m benchmarks.gpu.op_bench --json "$WORK/bench-op.json"
  wanted bench-model && run_stage bench-model 120 "$PYTHON" -m benchmarks.gpu.model_bench --json "$WORK/bench-model.json"
  wanted sanitizer && sanitizer_stage
  for variant in $(kernel_variants); do
    wanted "bench-op-$variant" || continue
    export ECOM2F_MSDA_KERNEL=$variant
    run_stage "bench-op-$variant" 60 "$PYTHON" -m benchmarks.gpu.op_bench --json "$WORK/bench-op-$variant.json"
    unset ECOM2F_MSDA_KERNEL
  done
}

sanitizer_stage() {
  if ! command -v compute-sanitizer >/dev/null; then
    skip sanitizer "no compute-sanitizer on this machine"
  elif ! ls tests/ops/test_*bounds*.py >/dev/null 2>&1; then
    skip sanitizer "no bounds test in tests/ops (select: -k bounds)"
  else
    run_stage sanitizer 120 sanitized_bounds_tests
  fi
}

sanitized_bounds_tests() {  # the op's bounds tests under compute-sanitizer's memcheck (exit 86: it found errors)
  local rc
  compute-sanitizer --tool memcheck --error-exitcode 86 --print-limit 20 \
    "$PYTHON" -m pytest -m gpu -k bounds -p results_plugin -p no:cacheprovider -q -rfEs tests/ops 2>&1 |
    tee "$WORK/sanitizer.out"
  rc=${PIPESTATUS[0]}
  if grep -q "Device not supported" "$WORK/sanitizer.out"; then
    echo "compute-sanitizer does not support this device (it fails so under gVisor)"
    return 75
  fi
  return "$rc"
}

# ----------------------------------------------------------------------------- dry-run stages
check_files() {
  local missing=0 path
  for path in "${SCRIPTS[@]}" "$BUNDLE_LIST" "${ALL_TESTS[@]}"; do
    [ -e "$path" ] || { echo "missing: $path"; missing=1; }
  done
  for path in "${BENCHMARKS[@]}"; do
    [ -f "${path//.//}.py" ] || { echo "missing: ${path//.//}.py"; missing=1; }
  done
  [ "${#OPS_TESTS[@]}" -gt 1 ] && [ "${#MODEL_TESTS[@]}" -gt 1 ] && [ "${#TRAIN_TESTS[@]}" -gt 0 ] ||
    { echo "no GPU tests found"; missing=1; }
  echo "GPU test files: ${ALL_TESTS[*]}"
  return $missing
}

check_syntax() {
  bash -n "$SELF" && bash -n scripts/gpu_bundle.sh &&
    "$PYTHON" -c "import ast, sys; [ast.parse(open(f).read(), f) for f in sys.argv[1:]]" \
      scripts/gpu/*.py benchmarks/gpu/*.py tests/gpu/*.py && echo "syntax ok"
}

check_imports() {
  "$PYTHON" scripts/gpu/imports.py --bundle "$BUNDLE_LIST" --write-allowed "$WORK/allowed.txt" \
    "${ALL_TESTS[@]}" benchmarks/gpu scripts/gpu
}

check_entry_points() {  # each Python entry point imports, with only the GPU machine's modules, and --help works
  local module
  for module in "${BENCHMARKS[@]}"; do
    ECOM2F_GPU_ALLOWED=$WORK/allowed.txt "$PYTHON" -c "import block_imports, runpy, sys; sys.argv = ['$module', '--help']; runpy.run_module('$module', run_name='__main__')" >/dev/null || { echo "$module --help failed"; return 1; }
  done
  for module in device_info imports report; do
    "$PYTHON" "scripts/gpu/$module.py" --help >/dev/null || { echo "scripts/gpu/$module.py --help failed"; return 1; }
  done
  # The bundle's packages import with nothing but the GPU machine's modules and each other.
  local bundled
  bundled=$("$PYTHON" scripts/gpu/imports.py --bundle "$BUNDLE_LIST" --bundle-modules | paste -sd, -)
  ECOM2F_GPU_ALLOWED=$WORK/allowed.txt ECOM2F_GPU_BLOCK_STRICT=1 \
    "$PYTHON" -c "import block_imports, torch, $bundled" || { echo "the bundle's packages do not import"; return 1; }
  echo "entry points ok; the bundle imports: $bundled"
}

check_collection() {  # the GPU tests collect with only the GPU machine's modules: no moto, boto3, ray
  ECOM2F_GPU_ALLOWED=$WORK/allowed.txt "$PYTHON" -m pytest --collect-only -q -m gpu -p block_imports \
    -p no:cacheprovider "${ALL_TESTS[@]}"
}

check_benchmark_smoke() {  # the benchmarks' code paths on tiny CPU problems
  local module name
  for module in "${BENCHMARKS[@]}"; do
    name=${module##*.}
    ECOM2F_GPU_ALLOWED=$WORK/allowed.txt "$PYTHON" -c "import block_imports, runpy, sys; sys.argv = ['$module', '--smoke', '--json', '$WORK/bench-smoke-$name.json']; runpy.run_module('$module', run_name='__main__')" || return 1
  done
}

dry_run() {
  run_stage device 30 "$PYTHON" scripts/gpu/device_info.py --json "$WORK/device.json"
  run_stage syntax 30 check_syntax
  run_stage files 10 check_files
  run_stage imports 30 check_imports || { skip rest "the imports do not resolve"; return; }
  run_stage entry-points 60 check_entry_points
  run_stage collect 60 check_collection
  run_stage bench-smoke 60 check_benchmark_smoke
}

if [ "${#STAGE_CALL[@]}" -gt 0 ]; then
  "${STAGE_CALL[@]}"
  exit $?
fi

echo "== gpu_check ($MODE): report in $OUTDIR, work in $WORK"
if [ "$MODE" = dry-run ]; then dry_run; else gpu_check; fi
"$PYTHON" scripts/gpu/report.py "$WORK" "$OUTDIR" --mode "$MODE" --final
status=$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['status'])" "$OUTDIR/gpu_check.json")
echo "== gpu_check ($MODE): $status in $(($(date +%s) - START)) s"
# The report holds each stage's log tail; the whole logs go unless asked for (or the report is there).
if [ "${GPU_CHECK_KEEP_WORK:-0}" = 1 ] || [[ "$OUTDIR" == "$WORK"/* ]]; then
  echo "== full logs in $WORK"
else
  rm -rf "$WORK"
fi
[ "$status" = pass ]
