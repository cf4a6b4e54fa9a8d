# syntax=docker/dockerfile:1
# Multi-stage build: a Rust builder (dependencies cached in their own layer), then a small Debian
# runtime with a non-root user, the stripped binary and the production config (no demo files).
# tests/container.rs checks this file's assumptions (paths, user, health check) without Docker.

FROM rust:1.95-bookworm AS builder
WORKDIR /src

# 1. Dependencies only: the manifests and empty targets. This layer is rebuilt only when
#    Cargo.toml or Cargo.lock change, not on every source change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && for bench in $(sed -n '/^\[\[bench\]\]/,/^name/s/^name = "\(.*\)"/\1/p' Cargo.toml); do \
         echo 'fn main() {}' > "benches/$bench.rs"; \
       done \
    && cargo build --release --locked --bin marketo-sync \
    && rm -rf src benches \
       target/release/marketo-sync target/release/deps/marketo_sync-* \
       target/release/deps/libmarketo_sync-* target/release/.fingerprint/marketo-sync-*

# 2. The service itself (config/ is built in: `marketo-sync demo` embeds its files).
COPY src ./src
COPY migrations ./migrations
COPY config ./config
COPY benches ./benches
RUN cargo build --release --locked --bin marketo-sync

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/marketo-sync --create-home marketo-sync
COPY --from=builder /src/target/release/marketo-sync /usr/local/bin/marketo-sync
# The production settings and mappings only: demo.toml and demo-secrets/ stay out of the image.
COPY config/default.toml /etc/marketo-sync/default.toml
COPY config/mappings /etc/marketo-sync/mappings
USER marketo-sync
# The default store, sqlite://state/marketo-sync.db, is created under here (state/ included).
WORKDIR /var/lib/marketo-sync
# Configuration (TOML and mapping files) and state (the SQLite store, export files) are volumes.
VOLUME ["/etc/marketo-sync", "/var/lib/marketo-sync"]
ENV MKSYNC__HTTP__LISTEN=0.0.0.0:8080
EXPOSE 8080
# `marketo-sync health` reads MKSYNC__HTTP__LISTEN and asks 127.0.0.1:8080/healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["marketo-sync", "health"]
ENTRYPOINT ["marketo-sync"]
CMD ["run", "--config", "/etc/marketo-sync"]
