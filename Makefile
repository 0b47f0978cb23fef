# The two commands of the README: `make demo` and `make test`. Both set up first.
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup test test-gpu gpu-check gpu-bundle demo bench constraints clean

setup:
	@bash scripts/setup_env.sh

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# On a machine with a GPU: the CUDA tests only.
test-gpu: setup
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

# On a lent GPU machine with no package registry (docs/gpu_check.md): build the op for its GPU,
# run the GPU tests and benchmarks, write $(OUTDIR)/gpu_check.{json,md,log}. No setup: it uses
# the machine's python3 and torch, plus the wheels of gpu_bundle/ (made by gpu-bundle).
OUTDIR ?= gpu_check_out
gpu-check:
	bash scripts/gpu_check.sh "$(OUTDIR)"

# Here, with a registry: the wheels the GPU check needs that the GPU machine lacks.
gpu-bundle: setup
	bash scripts/gpu_bundle.sh

# The three ECO-M2F steps, evaluation and report on synthetic data, a local Ray cluster and
# local storage (./runs/demo); a rerun resumes or skips what is complete.
demo: setup
	RAY_AUTH_MODE=disabled $(PY) -m ray_jobs.pipeline --config configs/demo_cpu.yaml --storage ./runs

bench: setup
	$(PY) -m benchmarks.ops_msda
	$(PY) -m benchmarks.data_loading
	$(PY) -m benchmarks.model_depths
	$(PY) -m benchmarks.depth_table --threads 1
	$(PY) -m benchmarks.gate_training
	$(PY) -m benchmarks.parent_throughput --config configs/demo_cpu.yaml

# Re-pin the exact versions after changing the ranges in pyproject.toml.
constraints: setup
	{ head -n 3 constraints.txt; $(PY) -m pip freeze --all --exclude-editable | grep -v '^ecom2f'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf build .setup-stamp ecom2f/_C*.so .venv
