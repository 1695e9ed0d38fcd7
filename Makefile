# pullwake: every target builds what it needs from the clone alone.
#   make demo   run the main job (server on SQLite, a runner, a producer)
#   make test   lint, type checks and the whole test suite (starts PostgreSQL itself)
#   make bench  benchmarks (not tests): write docs/performance.md (about 20 min;
#               make bench BENCH_ARGS=--quick for a smoke run of every section)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench diagram clean postgres-tools mutate

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m pullwake.demo

test: $(STAMP) postgres-tools lint typecheck pytest

# The server tests start a throwaway PostgreSQL; install the Debian server when it is missing.
postgres-tools:
	@if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "installing PostgreSQL (Debian package)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy cannot follow setuptools' editable finder for package-dir mappings, so it reads the
# packages through a tree of symlinks that mirrors the installed names.
typecheck: $(STAMP)
	@rm -rf $(VENV)/typecheck && mkdir -p $(VENV)/typecheck/pullwake
	@for f in pullwake/*.py pullwake/py.typed; do ln -s "$(CURDIR)/$$f" $(VENV)/typecheck/pullwake/; done
	@ln -s "$(CURDIR)/pullwake/testing" $(VENV)/typecheck/pullwake/testing
	@ln -s "$(CURDIR)/machines" $(VENV)/typecheck/pullwake/machines
	@ln -s "$(CURDIR)/runtime" $(VENV)/typecheck/pullwake/runtime
	@ln -s "$(CURDIR)/server" $(VENV)/typecheck/pullwake/server
	cd $(VENV)/typecheck && ../bin/mypy --config-file "$(CURDIR)/pyproject.toml" -p pullwake

pytest: $(STAMP)
	$(PY) -m pytest

# Benchmarks compare against PostgreSQL and the npm reference server (installed on first use).
BENCH_ARGS ?=
bench: $(STAMP) postgres-tools
	$(PY) bench/run.py $(BENCH_ARGS)

# Regenerate the generated diagrams and tables in the docs from the chart (tests fail on drift).
diagram: $(STAMP)
	$(VENV)/bin/pullwake diagram --write-docs docs/lifecycle.md
	$(VENV)/bin/pullwake diagram --write-docs README.md

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis .mutate

# Mutation testing (docs/testing.md): mutmut breaks the targets one change at a time and runs
# each target's fast tests; prints the score and every surviving mutant. Not part of `make test`.
# A target is a path, or path:function,function (only those functions of the file).
MUTATE_TARGETS ?= machines runtime/actor.py runtime/claims.py runtime/heartbeat.py \
	server/store/rules/wake_table.py

mutate: $(STAMP)
	@$(PY) -c "import mutmut" 2>/dev/null || $(PY) -m pip install --quiet -e '.[dev,mutate]'
	$(PY) -m tests.mutation $(MUTATE_TARGETS)

# Reliability (docs/reliability.md): real server and runner processes under faults.
#   make faults                        the fault matrix at full scale; writes its table to the doc
#   make soak DURATION=600 SEED=7      the chaos soak on SQLite and PostgreSQL; prints a summary
DURATION ?= 600
SEED     ?= 1
.PHONY: faults soak

faults: $(STAMP) postgres-tools
	$(PY) bench/reliability.py faults --rounds 2 --write docs/reliability.md

soak: $(STAMP) postgres-tools
	$(PY) bench/reliability.py soak --duration $(DURATION) --seed $(SEED)
