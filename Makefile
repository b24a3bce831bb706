# Portcullis: build, run and test.
#   make run    build the server and the policies, serve policies/standard.yaml on https://127.0.0.1:8443
#   make test   build everything once and run every test (unit, end-to-end, fuzz replays), then lint
#   make bench  the server under load, standard policy set against no policies
#   make deploy-render   render the Kubernetes manifests into target/deploy/
#   make publish REGISTRY=host[:port]/prefix   push the policy library to an OCI registry

CARGO    ?= cargo
# What `portcullis new policy` generates, kept in tests/scaffold/ and built
# and tested like any policy (tests/tests/scaffold.rs checks it is current).
SCAFFOLDS := new-validating new-mutating
# Every crate under policies/ (so a new one needs no edit here), by package
# name (policies/cel is `cel-policy`: `cel` is the CEL crate it uses).
LIBRARY  := $(shell sed -n 's/^name = "\(.*\)"$$/\1/p' policies/*/Cargo.toml)
# Those, the misbehaving test policy, and the scaffold's output.
POLICIES := $(LIBRARY) misbehave $(SCAFFOLDS)
ADDR     ?= 127.0.0.1:8443
# Probes, metrics and /policies (plain HTTP, never the webhook endpoints).
OPS_ADDR ?= 127.0.0.1:9090
CONFIG   ?= policies/standard.yaml
KUBECTL  ?= kubectl
DEPLOY   := deploy/kubernetes
OVERLAYS := cert-manager self-signed registry
# The version the library is published under (the workspace's).
VERSION  := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n 1)
PORTCULLIS_BIN ?= target/release/portcullis

.PHONY: all setup build policies library components host server run test test-tools test-apiserver suites scaffold-examples bench bench-engine lint fmt clean \
        deploy-policies deploy-render deploy-self-signed publish

all: build

# What a fresh machine needs beyond the Rust toolchain.
setup:
	@command -v rustup >/dev/null 2>&1 || { echo "error: rustup is required (https://rustup.rs)"; exit 2; }
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# A policy written in Python (tests/policies/required-labels-py), built into
# a component by componentize-py from PyPI, pinned, in a venv under target/:
# the host serves components from any language unchanged. Rebuilt only when
# its source or the contract changes (the tool's output differs per build).
COMPONENTIZE_PY_VERSION := 0.25.1
COMPONENTIZE_PY := target/componentize-py/bin/componentize-py
PY_COMPONENT := target/components/required_labels_py.wasm

$(COMPONENTIZE_PY):
	python3 -m venv target/componentize-py
	target/componentize-py/bin/pip install --quiet --disable-pip-version-check \
	    componentize-py==$(COMPONENTIZE_PY_VERSION)

$(PY_COMPONENT): tests/policies/required-labels-py/app.py wit/policy.wit | $(COMPONENTIZE_PY)
	mkdir -p target/components
	env -u VIRTUAL_ENV $(COMPONENTIZE_PY) -d wit -w admission-policy \
	    componentize app -p tests/policies/required-labels-py -o $@

components: $(PY_COMPONENT)

# Policies: small .wasm files in target/wasm32-wasip1/policy/. One is also
# built for wasm32-wasip2, where rustc itself makes a component: the host
# must serve ready-made components unchanged (target/wasm32-wasip2/policy/).
policies: setup
	$(CARGO) build --locked --target wasm32-wasip1 --profile policy $(addprefix -p ,$(POLICIES))
	$(CARGO) build --locked --target wasm32-wasip2 --profile policy -p allowed-images

# The host: target/release/portcullis (release only: a debug host compiles
# wasm ~13x slower). Built with every target of the workspace so that its
# dependencies get the same features as in `make test` and are compiled once
# for both.
host:
	$(CARGO) build --locked --release --workspace --all-targets

build: policies host

# Only what serving needs: the binary and the policies standard.yaml names
# (no tests, benchmarks or test policies), for a first start that is quick.
server: setup
	$(CARGO) build --locked --release -p portcullis --bin portcullis

library: setup
	$(CARGO) build --locked --target wasm32-wasip1 --profile policy $(addprefix -p ,$(LIBRARY))

run: server library
	./target/release/portcullis serve --config $(CONFIG) --addr $(ADDR) --metrics-addr $(OPS_ADDR)

# A real OCI registry for the registry tests: distribution 2.8 from
# Debian's docker-registry package. The tests start it themselves, on
# loopback with TLS and a login (tests/src/registry.rs).
test-tools:
	@command -v docker-registry >/dev/null 2>&1 || { \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get install -y --no-install-recommends docker-registry >/dev/null 2>&1 || { \
	        $$SUDO apt-get update -qq && \
	        $$SUDO apt-get install -y --no-install-recommends docker-registry; }; }
	@command -v docker-registry >/dev/null 2>&1 || { echo "error: docker-registry could not be installed"; exit 2; }

# A real kube-apiserver and etcd for the tests that need an API server
# (tests/src/kube.rs), and helm for the chart's tests: built with Go from the
# modules tests/kube/*/go.mod pin, once, into target/kube/bin (rebuilt when
# their sources change).
GO          ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
KUBE_BIN    := target/kube/bin
KUBE_VERSION := $(shell sed -n 's/^require k8s.io\/kubernetes \(v[^ ]*\).*/\1/p; s/^[[:space:]]*k8s.io\/kubernetes \(v[^ ]*\).*/\1/p' tests/kube/apiserver/go.mod | head -n 1)
KUBE_LDFLAGS := -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) \
    -X k8s.io/component-base/version.gitMajor=$(word 2,$(subst ., ,$(subst v,v ,$(KUBE_VERSION)))) \
    -X k8s.io/component-base/version.gitMinor=$(word 3,$(subst ., ,$(subst v,v ,$(KUBE_VERSION))))

$(KUBE_BIN)/kube-apiserver: tests/kube/apiserver/main.go tests/kube/apiserver/go.mod tests/kube/apiserver/go.sum
	@command -v $(GO) >/dev/null 2>&1 || { echo "error: Go is required to build the test API server"; exit 2; }
	cd tests/kube/apiserver && GOFLAGS=-mod=readonly $(GO) build -trimpath \
	    -ldflags "$(KUBE_LDFLAGS)" -o $(CURDIR)/$@ .

$(KUBE_BIN)/etcd: tests/kube/etcd/main.go tests/kube/etcd/go.mod tests/kube/etcd/go.sum
	@command -v $(GO) >/dev/null 2>&1 || { echo "error: Go is required to build the test etcd"; exit 2; }
	cd tests/kube/etcd && GOFLAGS=-mod=readonly $(GO) build -trimpath -o $(CURDIR)/$@ .

# Helm, for the chart's tests only (tests/tests/deploy.rs: lint, template,
# and the rendered chart applied to the test API server): the helm command
# of the helm.sh/helm/v4 module tests/kube/helm/go.mod pins.
HELM_VERSION := $(shell sed -n 's/^require helm.sh\/helm\/v4 \(v[^ ]*\).*/\1/p' tests/kube/helm/go.mod | head -n 1)

$(KUBE_BIN)/helm: tests/kube/helm/main.go tests/kube/helm/go.mod tests/kube/helm/go.sum
	@command -v $(GO) >/dev/null 2>&1 || { echo "error: Go is required to build the test helm"; exit 2; }
	cd tests/kube/helm && GOFLAGS=-mod=readonly $(GO) build -trimpath \
	    -ldflags "-X helm.sh/helm/v4/internal/version.version=$(HELM_VERSION)" -o $(CURDIR)/$@ .

test-apiserver: $(KUBE_BIN)/kube-apiserver $(KUBE_BIN)/etcd $(KUBE_BIN)/helm

# One native profile (release) for the host, the SDK, the policies' unit
# tests, the fuzz regression replays and the end-to-end tests, so
# everything is compiled once; then every policy's test suite through
# `portcullis test`; then fmt and clippy.
test: build components test-tools test-apiserver
	$(CARGO) test --locked --release --workspace
	$(MAKE) --no-print-directory suites
	$(MAKE) --no-print-directory lint

# The policy test suites shipped with each policy (policies/*/suite.yaml),
# and the library page's proof (policies/README.md: one case per row).
suites: build components
	./target/release/portcullis test policies/*/suite.yaml policies/cel/library-suite.yaml \
	    tests/scaffold/*/suite.yaml tests/policies/required-labels-py/suite.yaml

# Regenerates tests/scaffold/ after a change to testing/templates/policy/.
scaffold-examples: host
	rm -rf $(addprefix tests/scaffold/,$(SCAFFOLDS))
	./target/release/portcullis new policy new-validating --dir tests/scaffold/new-validating
	./target/release/portcullis new policy new-mutating --mutating --dir tests/scaffold/new-mutating

# The server under load: the standard policy set against no policies, in
# one run (see README, "Performance"). BENCH_ARGS e.g. --seconds 10 --rounds 5.
bench: build
	./target/release/portcullis-bench $(BENCH_ARGS)

# Engine micro-benchmarks (criterion): evaluation per policy, compile, cache.
bench-engine: build
	$(CARGO) bench --locked -p portcullis-engine --bench engine

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --release --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean

# Kubernetes (docs/deploy.md). The modules the deployed config names are
# build outputs: copy them where the kustomize base reads them (git-ignored).
deploy-policies: policies
	sh $(DEPLOY)/copy-policies.sh target/wasm32-wasip1/policy $(DEPLOY)/base/policies

# Renders the CRDs (applied first, on their own), the base and every overlay
# into target/deploy/<name>.yaml.
deploy-render: deploy-policies
	@command -v $(KUBECTL) >/dev/null 2>&1 || { echo "error: $(KUBECTL) not found: install kubectl (1.27 or later; it includes kustomize v5)"; exit 2; }
	@$(KUBECTL) kustomize --help >/dev/null 2>&1 || { echo "error: '$(KUBECTL) kustomize' does not work: install kubectl 1.27 or later (it includes kustomize v5)"; exit 2; }
	@mkdir -p target/deploy
	$(KUBECTL) kustomize $(DEPLOY)/crds >target/deploy/crds.yaml.tmp
	@mv target/deploy/crds.yaml.tmp target/deploy/crds.yaml
	$(KUBECTL) kustomize $(DEPLOY)/base >target/deploy/base.yaml.tmp
	@mv target/deploy/base.yaml.tmp target/deploy/base.yaml
	@for overlay in $(OVERLAYS); do \
	    echo "$(KUBECTL) kustomize $(DEPLOY)/overlays/$$overlay >target/deploy/$$overlay.yaml"; \
	    $(KUBECTL) kustomize $(DEPLOY)/overlays/$$overlay >target/deploy/$$overlay.yaml.tmp || exit 1; \
	    mv target/deploy/$$overlay.yaml.tmp target/deploy/$$overlay.yaml; \
	done

# Pushes every library policy to oci://$(REGISTRY)/policies/NAME:$(VERSION)
# in the Wasm OCI artifact layout, annotated from each module's metadata;
# SIGN_KEY=key.pem also signs each one. Registry logins and CA come from
# PORTCULLIS_REGISTRY_AUTH / PORTCULLIS_REGISTRY_CA (docs/registry.md).
publish: library
	@[ -n "$(REGISTRY)" ] || { echo "usage: make publish REGISTRY=host[:port]/prefix [SIGN_KEY=key.pem]"; exit 2; }
	@[ -x "$(PORTCULLIS_BIN)" ] || { echo "error: $(PORTCULLIS_BIN) is missing: run make server first"; exit 2; }
	@set -e; for name in $(LIBRARY); do \
	    module=target/wasm32-wasip1/policy/$$(echo $$name | tr - _).wasm; \
	    $(PORTCULLIS_BIN) push $$module oci://$(REGISTRY)/policies/$$name:$(VERSION) \
	        $(if $(SIGN_KEY),--sign-key $(SIGN_KEY)); \
	done

# Installs the self-signed overlay into the current kubectl context.
deploy-self-signed: deploy-render host
	MANIFESTS=target/deploy/self-signed.yaml PORTCULLIS=target/release/portcullis KUBECTL=$(KUBECTL) \
	    sh $(DEPLOY)/overlays/self-signed/install.sh
