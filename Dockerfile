# syntax=docker/dockerfile:1
# The trunkline image: the one `trunkline` binary (operator, gateway and offline tools) on a
# distroless base, running as the non-root `nonroot` user (uid/gid 65532).
#
#   docker build -t ghcr.io/trunkline/trunkline:0.1.0 .
#
# The builder is Debian bookworm, like the distroless cc-debian12 base (same glibc). The binary
# needs glibc and libgcc only (TLS is rustls with ring, no OpenSSL).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Only what the build reads (.dockerignore keeps the rest out of the context).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin trunkline \
    && install -D -m 0755 target/release/trunkline /out/trunkline

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="trunkline" \
      org.opencontainers.image.description="SIP trunks as Kubernetes resources: operator and SIP/RTP gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
# On PATH: the operator starts the gateways as `trunkline gateway ...`.
COPY --from=build /out/trunkline /usr/local/bin/trunkline
USER 65532:65532
# SIP 5060 (UDP, TCP), SIP over TLS 5061, internal SIP 5080 (UDP, TCP), gateway admin 9090,
# operator admin 8080. RTP uses a UDP range (default 20000-20999).
EXPOSE 5060/udp 5060/tcp 5061/tcp 5080/udp 5080/tcp 8080/tcp 9090/tcp
# No HEALTHCHECK (checkov CKV_DOCKER_2, skipped in tests/chart/test_validate.py): Kubernetes
# ignores it and probes the admin port's /healthz and /readyz instead, and the distroless image has
# no shell or HTTP client to run one.
ENTRYPOINT ["/usr/local/bin/trunkline"]
