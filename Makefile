# The two commands of the README. Both create .venv on first use (and when pyproject.toml
# changes), so a fresh clone needs nothing but python3 (3.10+) and make.
VENV ?= .venv
CONFIG ?= configs/quick.yaml
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed-stamp

.PHONY: setup run test lint

# No --no-compile: it would halve the install (2 min 16 s -> 1 min 9 s here), but where
# PYTHONDONTWRITEBYTECODE=1 is set (the project machines) no .pyc is ever written then, and
# every Ray process compiles torch, timm and Ray from source at start-up (a fresh-clone run's
# tune stage 200 s instead of ~100 s, docs/benchmarks.md).
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
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
