# Portcullis: build, run and test.
#   make run    build everything and serve policies/standard.yaml on https://127.0.0.1:8443
#   make test   build everything once and run every test (unit and end-to-end)

CARGO    ?= cargo
POLICIES := allowed-images required-labels default-labels container-defaults pod-security \
            namespace-reservation sidecar-injector image-digests blocked-images field-rules \
            misbehave
ADDR     ?= 127.0.0.1:8443
CONFIG   ?= policies/standard.yaml

.PHONY: all setup build policies host run test suites bench bench-engine lint fmt clean

all: build

# What a fresh machine needs beyond the Rust toolchain.
setup:
	@command -v rustup >/dev/null 2>&1 || { echo "error: rustup is required (https://rustup.rs)"; exit 2; }
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

# Policies: small .wasm files in target/wasm32-wasip1/policy/.
policies: setup
	$(CARGO) build --locked --target wasm32-wasip1 --profile policy $(addprefix -p ,$(POLICIES))

# The host: target/release/portcullis (release only: a debug host compiles
# wasm ~13x slower). Built with every target of the workspace so that its
# dependencies get the same features as in `make test` and are compiled once
# for both.
host:
	$(CARGO) build --locked --release --workspace --all-targets

build: policies host

run: build
	./target/release/portcullis serve --config $(CONFIG) --addr $(ADDR)

# One native profile (release) for the host, the SDK, the policies' unit
# tests and the end-to-end tests, so everything is compiled once; then
# every policy's test suite through `portcullis test`.
test: build
	$(CARGO) test --locked --release --workspace
	$(MAKE) --no-print-directory suites

# The policy test suites shipped with each policy (policies/*/suite.yaml).
suites: build
	./target/release/portcullis test policies/*/suite.yaml

# The server under load: the standard policy set against no policies, in
# one run (see README, "Performance"). BENCH_ARGS e.g. --seconds 10 --rounds 5.
bench: build
	./target/release/portcullis-bench $(BENCH_ARGS)

# Engine micro-benchmarks (criterion): evaluation per policy, compile, cache.
bench-engine: build
	$(CARGO) bench --locked -p portcullis --bench engine

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --release --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
