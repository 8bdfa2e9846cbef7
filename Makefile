# The two commands of the README: `make up` (run the whole system) and `make test` (run every check).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
ARGS ?=

.PHONY: up wipe test lint check-generated gen pytest pytest-cluster chaos chaos-ci clean web gen-web check-web e2e-deps bench bench-quick bench-checks bench-scheduling bench-observability bench-dashboard bench-logs bench-fairness bench-saturation deploy-deps

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./clients/python -e '.[dev]'
	touch $@

up: $(VENV)/.installed web
	$(BIN)/rtask-stack up $(ARGS)

wipe: $(VENV)/.installed
	$(BIN)/rtask-stack wipe $(ARGS)

# The stubs from proto/, and the blocking SDK client from the asyncio one (unasync).
gen: $(VENV)/.installed
	PYTHON=$(PY) scripts/gen-python
	$(PY) scripts/gen-sync-client
	$(PY) scripts/gen-settings-table

check-generated: $(VENV)/.installed
	PYTHON=$(PY) scripts/gen-python
	$(PY) scripts/gen-sync-client
	$(PY) scripts/gen-settings-table --check
	git diff --exit-code -- clients/python/resilienttask/v1 clients/python/resilienttask/worker clients/python/resilienttask/client.py || (echo "generated code is stale: run 'make gen'" && exit 1)
	test -z "$$(git status --porcelain -- clients/python/resilienttask/v1 clients/python/resilienttask/worker)" || (echo "untracked generated files: run 'make gen' and commit" && exit 1)

lint: $(VENV)/.installed check-generated check-web
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code
	if git rev-parse --verify --quiet HEAD~1 >/dev/null; then $(BIN)/buf breaking --against '.git#ref=HEAD~1'; fi
	$(BIN)/envoy --version >/dev/null

pytest: $(VENV)/.installed e2e-deps deploy-deps
	$(BIN)/pytest -m 'not chaos' $(ARGS)

# The heart of the suite again on a Valkey Cluster (3 primaries, 3 replicas) instead of one Valkey server, with
# each kind's dispatch streams in 3 shards (one per primary); the failover under load
# (tests/integration/test_redis_cluster.py) runs in `pytest` above, on a cluster of its own with one shard.
CLUSTER_SUITE := tests/integration/test_lifecycle.py tests/integration/test_watch.py tests/integration/test_dispatch_shards.py \
	tests/unit/test_dispatch_lanes.py
pytest-cluster: $(VENV)/.installed
	$(BIN)/pytest --redis-cluster --dispatch-shards 3 $(CLUSTER_SUITE) $(ARGS)

test: lint pytest pytest-cluster chaos-ci

# Fault injection and sustained load on private stacks (tests/chaos/profile.py): a short run for CI, and
# the long one (2,000 tasks, every fault, 5 minutes of load with 200 watchers) whose report is committed.
chaos-ci: $(VENV)/.installed
	RTASK_CHAOS_PROFILE=ci $(BIN)/pytest -m chaos tests/chaos $(ARGS)

chaos: $(VENV)/.installed
	RTASK_CHAOS_PROFILE=long RTASK_CHAOS_REPORT=docs/chaos-report.md RTASK_CHAOS_COMMAND='make chaos' \
		$(BIN)/pytest -m chaos tests/chaos $(ARGS)

# -- the browser dashboard (clients/web): Node from the machine, packages from the npm lockfile --------
WEB := clients/web
WEB_SOURCES := $(shell find $(WEB)/src -type f 2>/dev/null) $(addprefix $(WEB)/,index.html build.mjs package.json tsconfig.json)

$(WEB)/node_modules/.installed: $(WEB)/package.json $(WEB)/package-lock.json
	npm --prefix $(WEB) ci --no-audit --no-fund
	touch $@

# The bundle Envoy serves at /, rebuilt whenever a source changed.
web: $(WEB)/dist/index.html

$(WEB)/dist/index.html: $(WEB)/node_modules/.installed $(WEB_SOURCES)
	npm --prefix $(WEB) run build

gen-web: $(VENV)/.installed $(WEB)/node_modules/.installed
	$(BIN)/buf generate

check-web: gen-web
	git diff --exit-code -- $(WEB)/src/gen || (echo "generated web code is stale: run 'make gen-web'" && exit 1)
	test -z "$$(git status --porcelain -- $(WEB)/src/gen)" || (echo "untracked generated web files: run 'make gen-web' and commit" && exit 1)
	npm --prefix $(WEB) run typecheck
	npm --prefix $(WEB) test

# Browser tests drive Debian's Chromium through Playwright (never a downloaded browser).
# Chromium drives the dashboard tests; certutil (libnss3-tools) lets them trust the stack's development CA.
e2e-deps: $(VENV)/.installed web
	(test -x /usr/bin/chromium && test -x /usr/bin/certutil) || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium libnss3-tools)

# promtool (Debian's prometheus package) checks the scrape config and alert rules and runs the rules' unit tests.
deploy-deps:
	test -x /usr/bin/promtool || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus)

# -- benchmarks side by side with Celery, RQ, arq, Dramatiq and Procrastinate (bench/, docs/benchmarks.md) -----------
$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet -e ./clients/python -e '.[dev,bench]'
	touch $@

# The full run (about forty minutes) rewrites docs/benchmarks.md, then measures delayed tasks
# (docs/benchmarks-scheduling.md) and what observability costs (docs/observability-cost.md);
# bench-quick only writes bench/results/.
bench: $(VENV)/.bench-installed
	$(PY) -m bench.run --doc docs/benchmarks.md $(ARGS)
	$(PY) -m bench.scheduling --doc docs/benchmarks-scheduling.md
	$(PY) -m bench.observability_ab --doc docs/observability-cost.md
	$(PY) -m bench.fairness --doc docs/benchmarks-fairness.md

# Fair sharing alone (about five minutes): another user's start while one floods, and what priorities and the
# fair share cost the drain (on against off, alternated), into docs/benchmarks-fairness.md.
bench-fairness: $(VENV)/.bench-installed
	$(PY) -m bench.fairness --doc docs/benchmarks-fairness.md $(ARGS)

# Where one machine saturates (docs/scaling.md): drain, start latency and CPU per tier as processes are added.
bench-saturation: $(VENV)/.bench-installed
	$(PY) -m bench.saturation $(ARGS)

# Delayed tasks alone (a few minutes): due-time precision and the 10,000-due burst, into docs/benchmarks-scheduling.md.
bench-scheduling: $(VENV)/.bench-installed
	$(PY) -m bench.scheduling --doc docs/benchmarks-scheduling.md

# What metrics and tracing cost (two live stacks, on and off, alternated; about five minutes; docs/observability-cost.md).
bench-observability: $(VENV)/.bench-installed
	$(PY) -m bench.observability_ab --doc docs/observability-cost.md $(ARGS)

# What the trust boundaries cost against the code before them, alternated (about fifteen minutes; docs/checks-cost.md).
bench-checks: $(VENV)/.bench-installed
	$(PY) -m bench.checks_ab --doc docs/checks-cost.md

# The dashboard with 10,000 tasks of one user in Chromium (about a minute; docs/benchmarks-dashboard.md).
bench-dashboard: $(VENV)/.installed e2e-deps
	$(PY) -m bench.dashboard_scale $(ARGS)

# A handler printing as fast as it can (a minute or two): what is stored, dropped and what it costs
# (docs/benchmarks-logs.md).
bench-logs: $(VENV)/.bench-installed
	$(PY) -m bench.logs $(ARGS)

bench-quick: $(VENV)/.bench-installed
	$(PY) -m bench.run --quick $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
