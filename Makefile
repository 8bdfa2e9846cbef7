# The two commands of the README: `make up` (run the whole system) and `make test` (run every check).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
ARGS ?=

.PHONY: up wipe test lint check-generated gen pytest chaos clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

up: $(VENV)/.installed
	$(BIN)/rtask-stack up $(ARGS)

wipe: $(VENV)/.installed
	$(BIN)/rtask-stack wipe $(ARGS)

gen: $(VENV)/.installed
	PYTHON=$(PY) scripts/gen-python

check-generated: $(VENV)/.installed
	PYTHON=$(PY) scripts/gen-python
	git diff --exit-code -- clients/python/resilienttask/v1 || (echo "generated code is stale: run 'make gen'" && exit 1)
	test -z "$$(git status --porcelain -- clients/python/resilienttask/v1)" || (echo "untracked generated files: run 'make gen' and commit" && exit 1)

lint: $(VENV)/.installed check-generated
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code
	if git rev-parse --verify --quiet HEAD~1 >/dev/null; then $(BIN)/buf breaking --against '.git#ref=HEAD~1'; fi
	$(BIN)/envoy --version >/dev/null

pytest: $(VENV)/.installed
	$(BIN)/pytest -m 'not chaos' $(ARGS)

test: lint pytest

chaos: $(VENV)/.installed
	$(BIN)/pytest -m chaos $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
