# The two commands a user types. Each creates .venv when missing and re-installs only
# when pyproject.toml changed since the last install (a stamp file records it).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
ARGS    ?=

.PHONY: run test lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev,ray]"
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/normlab run --resume $(ARGS)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -n auto $(ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check normlab tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
