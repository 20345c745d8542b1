# mcp-db: everything a developer or CI needs. See README.md; `make help` lists the targets.
#
# A line `## text` right above a target is its entry in `make help`.

PYTHON ?= python3
VENVS  := .venvs
WHEELS := target/wheels

# The support matrix: the oldest supported 1.x, the newest 1.x and the newest 2.x.
MCP_VERSIONS ?= 1.12.4 1.30.0 2.3.0
# The SDK the demo and benchmarks run on.
MCP_MAIN ?= 2.3.0
# mcp 1.12.4 imports a pydantic internal that pydantic 2.14 removed.
PIN_1.12.4 := "pydantic<2.14"
# The newest SDK runs on uvicorn[standard] (httptools, uvloop), as most deployments do; the
# older lines on plain uvicorn (h11, asyncio). The suite covers both stacks this way, and
# the benchmarks (on MCP_MAIN) measure the production one.
PIN_2.3.0 := "uvicorn[standard]"

# FastMCP (PrefectHQ's `fastmcp`): its newest 4.x, on the mcp 2.x it requires. Its own
# virtualenv runs the tests marked `fastmcp` only: the rest is the SDK's, run above.
FASTMCP_VERSION ?= 4.2.3
FASTMCP_MCP ?= 2.3.0
FASTMCP_VENV := $(VENVS)/fastmcp-$(FASTMCP_VERSION)

# The expensive multi-node scenarios (marked `multinode`) run once per SDK line: on the
# newest 1.x and the newest 2.x, not again on the oldest 1.x. The rest runs everywhere.
MARKS_1.12.4 := -m "not slow and not multinode"

# The test suite's dependencies are the `test` extra in pyproject.toml, the only list of them.

RUST_SOURCES := $(shell find src crates -name '*.rs') Cargo.toml Cargo.lock crates/core/Cargo.toml
PY_SOURCES   := $(shell find python -name '*.py' -o -name '*.pyi' -o -name 'py.typed')

# Keep the virtualenv stamps: they are real, slow-to-make state, not intermediates.
.SECONDARY:

.PHONY: all help build test test-envs test-rust test-python test-lane-main test-lane-others \
  bench lint format demo clean
all: test

## this list
help:
	@awk '/^## /{doc=substr($$0, 4); next} \
	      /^[a-z][a-z-]*:/{if (doc != "") printf "  make %-12s %s\n", substr($$1, 1, length($$1) - 1), doc} \
	      {doc=""}' $(MAKEFILE_LIST)

$(VENVS)/build/.ok:
	$(PYTHON) -m venv $(VENVS)/build
	$(VENVS)/build/bin/pip install -q --upgrade pip "maturin>=1.9,<2" "ruff>=0.6" "mypy>=1.11"
	touch $@

# One abi3 wheel serves every Python >= 3.10 and every virtualenv below.
$(WHEELS)/.built: $(VENVS)/build/.ok $(RUST_SOURCES) $(PY_SOURCES) pyproject.toml
	rm -f $(WHEELS)/mcp_db-*.whl
# `+`: cargo shares make's job slots (without it, make -j closes them and cargo warns).
	+$(VENVS)/build/bin/maturin build --release --locked -q -o $(WHEELS)
	touch $@

## the abi3 wheel, in target/wheels
build: $(WHEELS)/.built

$(VENVS)/mcp-%/.ok:
	$(PYTHON) -m venv $(VENVS)/mcp-$*
	$(VENVS)/mcp-$*/bin/pip install -q --upgrade pip
	touch $@

# The wheel's dependencies and its `test` extra first (pip leaves what is already there), then
# the wheel itself, always, since a rebuild keeps the version number. The wheel's name is
# read when the recipe runs: make's $(wildcard) may have cached target/wheels before the build.
$(VENVS)/mcp-%/.installed: $(VENVS)/mcp-%/.ok $(WHEELS)/.built
	wheel=$$(ls $(WHEELS)/mcp_db-*.whl) && \
	$(VENVS)/mcp-$*/bin/pip install -q "mcp==$*" $(PIN_$*) "$$wheel[test]" && \
	$(VENVS)/mcp-$*/bin/pip install -q --no-deps --force-reinstall "$$wheel"
	touch $@

$(FASTMCP_VENV)/.installed: $(WHEELS)/.built
	test -d $(FASTMCP_VENV) || $(PYTHON) -m venv $(FASTMCP_VENV)
	$(FASTMCP_VENV)/bin/pip install -q --upgrade pip
	wheel=$$(ls $(WHEELS)/mcp_db-*.whl) && \
	$(FASTMCP_VENV)/bin/pip install -q "fastmcp==$(FASTMCP_VERSION)" "mcp==$(FASTMCP_MCP)" \
	  "uvicorn[standard]" "$$wheel[test]" && \
	$(FASTMCP_VENV)/bin/pip install -q --no-deps --force-reinstall "$$wheel"
	touch $@

## cargo test, then pytest on every SDK line and on FastMCP (PYTEST_ARGS="..." for pytest)
test: test-rust test-python

## cargo test of the Rust workspace: the core (against throwaway redis-servers) and the binding
test-rust:
	+cargo test --workspace --locked -q

# Every virtualenv the tests run in (CI builds them side by side, with lint and the Rust
# tests: see .ci/run).
test-envs: $(foreach v,$(MCP_VERSIONS),$(VENVS)/mcp-$(v)/.installed) $(FASTMCP_VENV)/.installed

# pytest runs in two lanes side by side (TEST_LANES=1: one after the other). Most of a
# test's time is spent waiting (leases, restarts, streams), so two cores carry both. One
# lane runs the newest SDK line's suite, the longest, but for LANE_FILES; the other runs
# the other lines, FastMCP's tests and LANE_FILES on the newest line, so the two end at
# about the same time. Each lane's output is printed whole when it ends.
TEST_LANES ?= 2
LANE_FILES := tests/test_relay_security.py tests/test_redis_deployments.py

## pytest in one virtualenv per SDK line of MCP_VERSIONS and FastMCP's in its own, two lanes at once
test-python: test-envs
	@$(MAKE) --no-print-directory -j$(TEST_LANES) --output-sync=target \
	  test-lane-main test-lane-others

# Each lane picks its servers' ports from a range of its own.
test-lane-main: export MCP_DB_TEST_PORTS = 20000-25999
test-lane-main:
	@$(call pytest_line,$(MCP_MAIN),$(addprefix --ignore=,$(LANE_FILES)))

test-lane-others: export MCP_DB_TEST_PORTS = 26000-31999
test-lane-others:
	@set -e; $(foreach v,$(filter-out $(MCP_MAIN),$(MCP_VERSIONS)),$(call pytest_line,$(v));)
	@echo "=== pytest with fastmcp $(FASTMCP_VERSION) (mcp $(FASTMCP_MCP)): the fastmcp tests"
	@$(FASTMCP_VENV)/bin/python -m pytest -q -m fastmcp $(PYTEST_ARGS)
	@$(call pytest_line,$(MCP_MAIN),$(LANE_FILES))

# pytest on one SDK line, with its marks, then $(2) (paths, or --ignore= of paths).
pytest_line = echo '=== pytest with mcp $(1) $(MARKS_$(1)) $(2)'; \
  $(VENVS)/mcp-$(1)/bin/python -m pytest -q $(MARKS_$(1)) $(PYTEST_ARGS) $(2)

## benchmarks: ratios against baselines run in the same process (BENCH_ARGS="...")
bench: $(VENVS)/mcp-$(MCP_MAIN)/.installed $(FASTMCP_VENV)/.installed
	$(VENVS)/mcp-$(MCP_MAIN)/bin/python -m benches $(BENCH_ARGS)
	$(FASTMCP_VENV)/bin/python -m benches --only fastmcp $(BENCH_ARGS)

## ruff, ruff format --check, cargo fmt --check, clippy -D warnings, mypy, stubtest of _core.pyi
lint: $(VENVS)/build/.ok $(VENVS)/mcp-$(MCP_MAIN)/.installed
	$(VENVS)/build/bin/ruff check python tests benches examples
	$(VENVS)/build/bin/ruff format --check python tests benches examples
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -q -- -D warnings
	$(VENVS)/build/bin/mypy --python-executable $(VENVS)/mcp-$(MCP_MAIN)/bin/python python/mcp_db
	@# stubtest imports the built module, so it runs on the SDK virtualenv's packages.
	PYTHONPATH=$$($(VENVS)/mcp-$(MCP_MAIN)/bin/python -c \
	  'import sysconfig; print(sysconfig.get_path("purelib"))') \
	  $(VENVS)/build/bin/python -m mypy.stubtest --concise \
	  --allowlist python/stubtest-allowlist.txt mcp_db._core

## ruff check --fix, ruff format, cargo fmt --all
format: $(VENVS)/build/.ok
	$(VENVS)/build/bin/ruff check --fix -q python tests benches examples
	$(VENVS)/build/bin/ruff format -q python tests benches examples
	cargo fmt --all

## one client session across two nodes behind nginx (or two workers), a resumed stream
demo: $(VENVS)/mcp-$(MCP_MAIN)/.installed
	$(VENVS)/mcp-$(MCP_MAIN)/bin/python examples/demo.py

## remove the virtualenvs, the wheels and cargo's target
clean:
	rm -rf $(VENVS) $(WHEELS)
	cargo clean
