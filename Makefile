# The two commands of the README. Both create .venv on first use (and when pyproject.toml
# changes), so a fresh clone needs nothing but python3 (3.10+) and make.
VENV ?= .venv
CONFIG ?= configs/quick.yaml
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed-stamp

.PHONY: setup run test lint

# The packages are installed by uv (itself pip-installed into the venv first, ~5 s): the same
# versions pip resolves, unpacked in parallel: 26 s from an empty cache here against pip's 62 s
# (docs/benchmarks.md, "Install"). Bytecode: every command below runs with
# PYTHONDONTWRITEBYTECODE emptied, so Python writes a module's .pyc the first time a process
# imports it, also where the environment sets it to 1 (the project machines), where otherwise
# every Ray process would compile torch, timm and Ray from source at each start-up (a
# fresh-clone run's tune stage 200 s instead of ~100 s). A run imports ~6,400 of the venv's
# 19,500 modules: compiling them as they come costs the first run ~15 s, compiling all of them
# at install (compileall on both cores, before 2026-12-07) 28 s.
export PYTHONDONTWRITEBYTECODE =

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check uv
	$(VENV)/bin/uv pip install --quiet --python $(VENV)/bin/python -e '.[test]'
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
