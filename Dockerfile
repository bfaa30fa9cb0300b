# syntax=docker/dockerfile:1
# The meshgate image: one static-ish binary on a small Debian runtime,
# running as a non-root user. `meshgate serve` by default; the migration Job
# runs the same image with `migrate` (k8s/base/migrate-job.yaml).
#
#   docker build -t meshgate .

# --- build -----------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
# Everything the build reads: Cargo.toml/Cargo.lock, src/, migrations/
# (embedded by sqlx::migrate!) and redis/ (Lua scripts, include_str!);
# .dockerignore keeps target/ and .git/ out.
COPY . .
# Cache mounts (BuildKit) keep the crates.io download and the compiled
# dependencies between builds; the binary is copied out of the cached target.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin meshgate \
    && install -D -m 0755 target/release/meshgate /out/meshgate

# --- runtime ---------------------------------------------------------------
# bookworm-slim rather than distroless: the same glibc as the builder, and a
# /bin/sleep for the Deployment's preStop hook.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/meshgate /usr/local/bin/meshgate
# A numeric uid/gid (distroless' "nonroot"), so Kubernetes' runAsNonRoot can
# verify it without a passwd entry.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/meshgate"]
CMD ["serve"]
