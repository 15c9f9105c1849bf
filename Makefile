# The two commands of the README. Both create .venv on first use (and when pyproject.toml
# changes), so a fresh clone needs nothing but python3 (3.10+) and make.
VENV ?= .venv
CONFIG ?= configs/quick.yaml
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed-stamp

.PHONY: setup run test lint

# --no-compile: byte-compiling every installed module (torch, ray, ...) took half of the
# install's 2 min 16 s on the 2-core laptop; Python compiles what it imports on first use.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-compile -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

## The main job on the embedded dataset (configs/quick.yaml unless CONFIG=...).
run: $(STAMP)
	$(VENV)/bin/logo-train run --config $(CONFIG)

## Lint, format check and the whole test suite.
test: $(STAMP) lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
