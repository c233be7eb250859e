# voxmill — `make demo` runs the main job offline; `make test` runs the suite.
# Both install what is missing first: ffmpeg (apt), a .venv with voxmill and its extras.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_PORT ?= 4200

.PHONY: setup demo test test-fast lint bench chaos clean system-deps deploy undeploy

setup: system-deps $(STAMP)

system-deps:
	@command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || { \
	  echo "installing ffmpeg (apt)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq ffmpeg >/dev/null; }
	@command -v epubcheck >/dev/null || { \
	  echo "installing epubcheck (apt; validates read-along EPUBs in the tests)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq epubcheck >/dev/null; }
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (apt: the Redis rate budget's tests, make deploy REDIS=1)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server >/dev/null; }
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -m ensurepip --version >/dev/null 2>&1 || { \
	  echo "installing python3-venv (apt)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv >/dev/null; }

# uv installs (about 4× faster than pip) from where pip would: this machine's pip configuration (find-links, extra
# indexes, constraints) as uv options, and pip's choice of the best version across indexes
UV_FROM_PIP = $$($(BIN)/python -m pip config list 2>/dev/null | \
  sed -nE "s/^[^.]*\.(find-links|extra-index-url|index-url|constraint)='(.*)'$$/\1 \2/p" | sort -u | \
  while read -r key values; do for v in $$values; do printf -- '--%s %s ' "$$key" "$$v"; done; done)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q 'uv>=0.4'
	@# --compile-bytecode: as pip does; with PYTHONDONTWRITEBYTECODE set (as here) nothing else ever writes the
	@# .pyc, and every Python the tests start would compile Prefect & co. from source (a CLI start: 2.2 s CPU, not 0.9)
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python --index-strategy unsafe-best-match \
	  $(UV_FROM_PIP) -e '.[local,dev]'
	@# warm uv's cache with a plain install: tests/test_packaging.py installs from it offline
	rm -rf $(VENV)/plain && $(BIN)/uv venv -q --python $(BIN)/python $(VENV)/plain && \
	  $(BIN)/uv pip install -q --python $(VENV)/plain/bin/python . && rm -rf $(VENV)/plain build
	@touch $(STAMP)

demo: setup
	$(BIN)/voxmill demo

# the whole suite: lint and import contracts, then every test (parallel stage, then the rate tests serially)
test: setup lint
	$(BIN)/python tests/run_suite.py

# the inner loop: unit and in-process-server tests only (no real engines, Prefect, subprocess runs or rates)
test-fast: setup lint
	$(BIN)/python tests/run_suite.py --fast

lint: setup
	$(BIN)/ruff check voxmill tasks flows tests bench
	$(BIN)/lint-imports

# voxmill on a real Prefect server: server (unless PREFECT_API_URL is set), work pool, deployments, a worker;
# `make deploy REDIS=1` also starts redis-server and shares the rate budget through it (rate_scope=redis)
deploy: setup
	$(BIN)/voxmill deploy $(if $(REDIS),--redis)

undeploy:
	$(BIN)/voxmill undeploy

bench: setup
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/upload_rss.py

chaos: setup
	$(BIN)/python bench/chaos.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .pytest-reports
