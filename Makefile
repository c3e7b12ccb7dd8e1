# The one entry point for people and CI. `make help` lists the targets.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
CARGO ?= cargo
# smoltcp with the project's patch series (patches/smoltcp), which Cargo.toml points at.
SMOLTCP_DIR := target/patched/smoltcp-0.14.0
# The series' own tests run with the features this crate enables (plus what the suite needs).
SMOLTCP_TEST_FEATURES := std,medium-ip,medium-ethernet,proto-ipv4,proto-ipv6,multicast,socket-tcp,socket-tcp-reno,socket-tcp-cubic,socket-udp,socket-icmp,async,auto-icmp-echo-reply,assembler-max-segment-count-32

.PHONY: help install dev test fuzz fuzz-ci test-rust test-python test-faults lint fmt docs bench bench-rust bench-python bench-stack bench-tun bench-peers bench-workers bench-loss bench-load demo wheel smoltcp test-smoltcp clean

help:
	@echo "make demo    install the package and run the demo (a relay, a requestor and 3 providers as processes)"
	@echo "make test    install with dev tools, run cargo test and pytest"
	@echo "make lint    cargo fmt --check, clippy -D warnings, ruff, mypy"
	@echo "make bench   criterion benches + Python benchmarks (results: benches/RESULTS.md)"
	@echo "make bench-tun  (root) iperf3 + ping between TUN-attached payloads vs the bare veth"
	@echo "make bench-peers  (root) the same through wireguard-go, nebula, tinc and openvpn too"
	@echo "make bench-workers  (root) the sending datapath with 1 and 2 threads per TUN device"
	@echo "make bench-loss  (root) TCP over a lossy link: the userspace stack next to the kernel's"
	@echo "make bench-load  10k networks in a daemon, 1k gate connections, 200 nodes (QUICK=1: small)"
	@echo "make fuzz    every fuzz target for FUZZ_TIME (60) s each (fuzz/README.md)"
	@echo "make dev     editable install with dev extras"
	@echo "make fmt     format Rust and Python sources"
	@echo "make docs    regenerate docs/net-api.md from the OpenAPI documents"
	@echo "make wheel   dist/: an abi3 manylinux wheel (CPython >= 3.11) and the sdist"
	@echo "make smoltcp build the patched smoltcp Cargo.toml points at (the other targets do)"

install:
	$(PIP) install --quiet .

dev:
	$(PIP) install --quiet -e '.[dev]'

# The patched smoltcp that Cargo.toml points at, made from the crates.io release and
# patches/smoltcp by tools/patch_smoltcp.py; remade only when those change.
smoltcp:
	$(PYTHON) tools/patch_smoltcp.py

test: dev test-rust test-smoltcp fuzz-ci test-python

test-rust: smoltcp
	$(CARGO) test --locked

# The patch series' tests: smoltcp's own TCP suite, on the patched tree.
test-smoltcp: smoltcp
	cd $(SMOLTCP_DIR) && $(CARGO) test --locked --lib --target-dir ../../smoltcp-tests \
		--no-default-features --features '$(SMOLTCP_TEST_FEATURES)' socket::tcp

# Fuzzing (fuzz/README.md): builds the libFuzzer targets on stable rustc and runs each for
# FUZZ_TIME seconds; fails on a crash (inputs in target/fuzz/artifacts/<target>/).
# FUZZ_TARGETS: a subset. fuzz-ci (part of make test): a short run of every target.
FUZZ_TIME ?= 60
fuzz: smoltcp
	FUZZ_TIME=$(FUZZ_TIME) fuzz/fuzz.sh $(FUZZ_TARGETS)

fuzz-ci: smoltcp
	FUZZ_TIME=8 fuzz/fuzz.sh

test-python:
	$(PYTHON) -m pytest

# The fault tests alone (part of test-python; as root for the netns, nftables and tmpfs cases).
test-faults:
	$(PYTHON) -m pytest tests/test_faults.py

lint: dev smoltcp
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) clippy --locked --all-targets --features python -- -D warnings
	$(PYTHON) -m ruff check python tests benches examples tools
	$(PYTHON) -m ruff format --check python tests benches examples tools
	$(PYTHON) -m mypy

fmt: smoltcp
	$(CARGO) fmt
	$(PYTHON) -m ruff format python tests benches examples tools
	$(PYTHON) -m ruff check --fix python tests benches examples tools

# docs/net-api.md is generated from golem_vpn/netapi/openapi.py (tests/test_openapi.py checks).
docs:
	$(PYTHON) tools/gen_api_docs.py

bench: dev bench-rust bench-python bench-stack

bench-rust: smoltcp
	$(CARGO) bench --locked --bench router --bench tunnel --bench stack --bench offload

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

# Root. QUICK=1: one round of 2 s runs.
bench-workers: install
	$(PYTHON) benches/workers.py $(if $(QUICK),--rounds 1 --seconds 2,)

# Root: namespaces and TUN devices for the kernel's side. QUICK=1: 4 MiB at 10 ms only.
bench-loss: install
	$(PYTHON) benches/loss.py $(if $(QUICK),--size 4 --rtt 10,)

# Daemons on loopback; no root. QUICK=1: 50 networks, 20 gates, 10 nodes, 3 processes.
bench-load: install
	$(PYTHON) benches/load.py $(if $(QUICK),--quick,)

demo: install
	$(PYTHON) -m golem_vpn demo

# dist/: the sdist, then one abi3 wheel (CPython >= 3.11) built from it (so the sdist is known to
# build), both through the PEP 517 backend pyproject.toml declares (python -m build). zig
# (ziglang from PyPI) links the wheel against the oldest glibc $(MANYLINUX) allows (2.17),
# whatever glibc this machine has, and maturin's auditwheel check must pass. Its own cargo
# target dir: the editable build's target/ is left alone.
MANYLINUX ?= manylinux_2_17
WHEEL_TARGET_DIR ?= $(CURDIR)/target/wheel

wheel:
	$(PIP) install --quiet 'build>=1.2' 'ziglang>=0.13,<0.18'
	rm -rf dist
	CARGO_TARGET_DIR='$(WHEEL_TARGET_DIR)' \
	CARGO_ZIGBUILD_PYTHON_PATH="$$($(PYTHON) -c 'import sys; print(sys.executable)')" \
	MATURIN_PEP517_ARGS='--zig --compatibility $(MANYLINUX) --auditwheel check --strip' \
	$(PYTHON) -m build --outdir dist .

clean:
	rm -rf target dist .pytest_cache .mypy_cache .ruff_cache .hypothesis .benchmarks
