# The two commands of the README: `make demo` and `make test`. Both set up first.
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup test test-gpu demo bench constraints clean

setup:
	@bash scripts/setup_env.sh

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# On a machine with a GPU: the CUDA tests only.
test-gpu: setup
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

# The three ECO-M2F steps, evaluation and report on synthetic data, a local Ray cluster and
# local storage (./runs/demo); a rerun resumes or skips what is complete.
demo: setup
	RAY_AUTH_MODE=disabled $(PY) -m ray_jobs.pipeline --config configs/demo_cpu.yaml --storage ./runs --run demo

bench: setup
	$(PY) -m ecom2f.ops.bench
	$(PY) -m ecom2f.data.bench
	$(PY) -m ecom2f.modeling.bench
	$(PY) -m ecom2f.steps.depth_bench --threads 1
	$(PY) -m ecom2f.steps.gate_bench
	$(PY) -m ecom2f.steps.parent_bench --config configs/demo_cpu.yaml

# Re-pin the exact versions after changing the ranges in pyproject.toml.
constraints: setup
	{ head -n 3 constraints.txt; $(PY) -m pip freeze --all --exclude-editable | grep -v '^ecom2f'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf build .setup-stamp ecom2f/_C*.so .venv
