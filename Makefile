# One entry point for humans and CI. `make test` creates the virtualenv on a fresh machine,
# installs the project with its dev and devtools extras (the demo, emulator and embedded broker
# live in the devtools extra), then runs lint, mypy --strict and the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test lint typecheck pytest install demo bench clean

test: install lint typecheck pytest

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,devtools]'
	touch $@

lint: install
	$(BIN)/ruff check connector tests benchmarks

typecheck: install
	$(BIN)/mypy --strict connector

pytest: install
	$(BIN)/pytest -q

demo: install
	$(BIN)/kafka-stripe demo

bench: install
	$(BIN)/python -m benchmarks.emulator

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
