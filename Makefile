# mcp-db: everything a developer or CI needs. See README.md.
#
#   make test    cargo test, then pytest in one virtualenv per supported SDK line
#   make bench   benchmarks with ratios against baselines run in the same process
#   make lint    ruff, clippy -D warnings, mypy on the package and its stubs
#   make demo    a server with the store, a client whose stream is cut and resumes

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

# OpenTelemetry's SDK and Prometheus exporter for tests/test_metrics.py (the Prometheus
# example); 1.28 is the oldest opentelemetry-api that mcp 2.x accepts.
TEST_DEPS := "pytest>=8,<10" "pytest-asyncio>=0.24,<2" "pytest-timeout>=2.3,<3" \
             "uvicorn>=0.30" "redis>=5,<9" "httpx>=0.27" \
             "opentelemetry-sdk>=1.28,<2" "opentelemetry-exporter-prometheus>=0.49b0,<1" \
             "prometheus-client>=0.20,<1" "pyyaml>=6,<7" "hypothesis>=6.100,<7"

RUST_SOURCES := $(wildcard src/*.rs) Cargo.toml Cargo.lock
PY_SOURCES   := $(shell find python -name '*.py' -o -name '*.pyi' -o -name 'py.typed')

# Keep the virtualenv stamps: they are real, slow-to-make state, not intermediates.
.SECONDARY:

.PHONY: all build test test-rust test-python bench lint demo clean
all: test

$(VENVS)/build/.ok:
	$(PYTHON) -m venv $(VENVS)/build
	$(VENVS)/build/bin/pip install -q --upgrade pip "maturin>=1.9,<2" "ruff>=0.6" "mypy>=1.11"
	touch $@

# One abi3 wheel serves every Python >= 3.10 and every virtualenv below.
$(WHEELS)/.built: $(VENVS)/build/.ok $(RUST_SOURCES) $(PY_SOURCES) pyproject.toml
	rm -f $(WHEELS)/mcp_db-*.whl
	$(VENVS)/build/bin/maturin build --release --locked -q -o $(WHEELS)
	touch $@

build: $(WHEELS)/.built

$(VENVS)/mcp-%/.ok:
	$(PYTHON) -m venv $(VENVS)/mcp-$*
	$(VENVS)/mcp-$*/bin/pip install -q --upgrade pip
	$(VENVS)/mcp-$*/bin/pip install -q "mcp==$*" $(PIN_$*) $(TEST_DEPS)
	touch $@

$(VENVS)/mcp-%/.installed: $(VENVS)/mcp-%/.ok $(WHEELS)/.built
	$(VENVS)/mcp-$*/bin/pip install -q --no-deps --force-reinstall $(WHEELS)/mcp_db-*.whl
	touch $@

test: test-rust test-python

test-rust:
	cargo test --locked -q

test-python: $(foreach v,$(MCP_VERSIONS),$(VENVS)/mcp-$(v)/.installed)
	@set -e; for v in $(MCP_VERSIONS); do \
	  echo "=== pytest with mcp $$v"; \
	  $(VENVS)/mcp-$$v/bin/python -m pytest -q $(PYTEST_ARGS); \
	done

bench: $(VENVS)/mcp-$(MCP_MAIN)/.installed
	$(VENVS)/mcp-$(MCP_MAIN)/bin/python -m benches $(BENCH_ARGS)

lint: $(VENVS)/build/.ok $(VENVS)/mcp-$(MCP_MAIN)/.installed
	$(VENVS)/build/bin/ruff check python tests benches examples
	$(VENVS)/build/bin/ruff format --check python tests benches examples
	cargo clippy --locked --all-targets -q -- -D warnings
	$(VENVS)/build/bin/mypy --python-executable $(VENVS)/mcp-$(MCP_MAIN)/bin/python python/mcp_db

demo: $(VENVS)/mcp-$(MCP_MAIN)/.installed
	$(VENVS)/mcp-$(MCP_MAIN)/bin/python examples/demo.py

clean:
	rm -rf $(VENVS) $(WHEELS)
	cargo clean
