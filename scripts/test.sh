#!/usr/bin/env bash
# Runs every check and every test: formatting, clippy, unit tests and the integration tests
# (real nats-server, real acpx, the test ACP agent, worker processes).
# Installs the tools the tests need first (project-local, into .tools/, git-ignored).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo is not on PATH; install the Rust toolchain (rustup) first" >&2
    exit 1
fi

scripts/setup-tools.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
# The library's unit tests, then the integration tests (tests/it). The binary has no tests of its
# own and the crate no doc tests, so neither is run: the last line is the integration tests' count.
cargo test --locked --lib --test it -- --test-threads=2
