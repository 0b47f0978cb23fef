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

demo: setup
	$(PY) -m ecom2f.ops.bench

bench: setup
	$(PY) -m ecom2f.ops.bench

# Re-pin the exact versions after changing the ranges in pyproject.toml.
constraints: setup
	{ head -n 3 constraints.txt; $(PY) -m pip freeze --all --exclude-editable | grep -v '^ecom2f'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf build .setup-stamp ecom2f/_C*.so .venv
