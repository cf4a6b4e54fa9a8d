# syntax=docker/dockerfile:1
# Multi-stage build: a Rust builder, then a small Debian runtime with a non-root user.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin marketo-sync

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/marketo-sync --create-home marketo-sync
COPY --from=builder /src/target/release/marketo-sync /usr/local/bin/marketo-sync
COPY config /etc/marketo-sync
USER marketo-sync
WORKDIR /var/lib/marketo-sync
# Configuration (TOML and mapping files) and state (the SQLite store, export files) are volumes.
VOLUME ["/etc/marketo-sync", "/var/lib/marketo-sync"]
ENV MKSYNC__HTTP__LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["marketo-sync"]
CMD ["run", "--config", "/etc/marketo-sync"]
