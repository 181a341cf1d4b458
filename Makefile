# Onward: the commands the README shows.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test bench bench-tick bench-console soak previews lint format install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Onward needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

run: $(STAMP)
	$(PY) -m app.dev.launcher

test: $(STAMP)
	$(PY) -m pytest

# The import's rate first: other tools read the last lines, the end-to-end sending figures.
# BENCH_ARGS passes --emails N, --workers K, --no-dkim to the last part;
# `$(PY) -m bench.throughput --memory 100000` gives a worker's peak RSS after 100,000 emails.
bench: $(STAMP)
	$(PY) -m bench.importing
	$(PY) -m bench.sending
	$(PY) -m bench.throughput $(BENCH_ARGS)

# One tick over a million subscriptions, 50,000 of them due, on PostgreSQL:
# BENCH_DATABASE_URL names a database of its own (it is emptied and reseeded).
bench-tick: $(STAMP)
	$(PY) -m bench.tick $(BENCH_TICK_ARGS)

# The console's overview and funnel over a million subscriptions on PostgreSQL:
# BENCH_DATABASE_URL names a database of its own (it is emptied and reseeded).
bench-console: $(STAMP)
	$(PY) -m bench.console

# The fault soak; `make soak SOAK_ARGS=--short` is the form CI runs.
soak: $(STAMP)
	$(PY) -m bench.soak $(SOAK_ARGS)

previews: $(STAMP)
	$(PY) -m app.dev.previews

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) instance previews .pytest_cache .mypy_cache .ruff_cache *.egg-info
