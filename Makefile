# The one entry point for people and CI. `make help` lists the targets.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
CARGO ?= cargo

.PHONY: help install dev test test-rust test-python lint fmt docs bench bench-rust bench-python bench-stack bench-tun bench-peers demo clean

help:
	@echo "make demo    install the package and run the demo (a relay, a requestor and 3 providers as processes)"
	@echo "make test    install with dev tools, run cargo test and pytest"
	@echo "make lint    cargo fmt --check, clippy -D warnings, ruff, mypy"
	@echo "make bench   criterion benches + Python benchmarks (results: benches/RESULTS.md)"
	@echo "make bench-tun  (root) iperf3 + ping between TUN-attached payloads vs the bare veth"
	@echo "make bench-peers  (root) the same through wireguard-go, nebula, tinc and openvpn too"
	@echo "make dev     editable install with dev extras"
	@echo "make fmt     format Rust and Python sources"
	@echo "make docs    regenerate docs/net-api.md from the OpenAPI documents"

install:
	$(PIP) install --quiet .

dev:
	$(PIP) install --quiet -e '.[dev]'

test: dev test-rust test-python

test-rust:
	$(CARGO) test --locked

test-python:
	$(PYTHON) -m pytest

lint: dev
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) clippy --locked --all-targets --features python -- -D warnings
	$(PYTHON) -m ruff check python tests benches examples tools
	$(PYTHON) -m ruff format --check python tests benches examples tools
	$(PYTHON) -m mypy

fmt:
	$(CARGO) fmt
	$(PYTHON) -m ruff format python tests benches examples tools
	$(PYTHON) -m ruff check --fix python tests benches examples tools

# docs/net-api.md is generated from golem_vpn/netapi/openapi.py (tests/test_openapi.py checks).
docs:
	$(PYTHON) tools/gen_api_docs.py

bench: dev bench-rust bench-python bench-stack

bench-rust:
	$(CARGO) bench --locked --bench router --bench tunnel

bench-python:
	$(PYTHON) -m pytest benches --benchmark-only --benchmark-columns=min,median,mean,ops -p no:randomly

bench-stack:
	$(PYTHON) benches/stack_throughput.py --size 256 --runs 3
	$(PYTHON) benches/transport_throughput.py --size 128 --runs 3 --mtu 1400 9000 --buffer 1048576

# Root: make their own namespaces. QUICK=1: one round of 3 s tests (checks data moved).
bench-tun: install
	$(PYTHON) benches/peers.py --paths veth,golem-vpn $(if $(QUICK),--quick,)

bench-peers: install
	$(PYTHON) benches/peers.py $(if $(QUICK),--quick,)

demo: install
	$(PYTHON) -m golem_vpn demo

clean:
	rm -rf target dist .pytest_cache .mypy_cache .ruff_cache .hypothesis .benchmarks
