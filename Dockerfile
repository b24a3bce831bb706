# syntax=docker/dockerfile:1
# Portcullis: the `portcullis` binary and the policy library in a small
# runtime image that runs as a fixed non-root user.
#
#   docker build -t portcullis:0.1.0 .
#
# The build stage runs `make build`, the very commands a developer and CI
# run (tests/tests/deploy.rs checks that this file builds with the Makefile
# and not with commands of its own).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and the target directory between
# builds; the outputs are copied out of the cached target in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    make build \
    && mkdir -p /out/policies \
    && cp target/release/portcullis /out/portcullis \
    && cp target/wasm32-wasip1/policy/*.wasm /out/policies/ \
    && rm -f /out/policies/misbehave.wasm \
    && sed 's|module: \.\./target/wasm32-wasip1/policy/|module: |' \
       policies/standard.yaml >/out/policies/config.yaml

# The same Debian release as the build stage, so the glibc the binary was
# linked against is there. The server needs nothing else from the image.
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# 65532: the UID and GID the Deployment runs as (runAsUser, runAsGroup).
RUN groupadd --system --gid 65532 portcullis \
    && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent \
       --no-create-home --shell /usr/sbin/nologin portcullis
COPY --from=build /out/portcullis /usr/local/bin/portcullis
# The policy library and a default config for running the image on its own
# (policies/standard.yaml, config.yaml beside the modules). In the cluster
# the policies are ClusterAdmissionPolicy resources naming these modules
# (the Helm chart) or the ConfigMap volume's (kustomize), and the config
# file is the ConfigMap's.
COPY --from=build /out/policies/ /usr/share/portcullis/policies/
USER 65532:65532
# Without --tls-cert/--tls-key, `serve` makes a development certificate here.
ENV PORTCULLIS_DEV_CERT_DIR=/tmp/portcullis-dev-certs
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--config", "/usr/share/portcullis/policies/config.yaml", "--addr", "0.0.0.0:8443", "--metrics-addr", "0.0.0.0:9090"]
