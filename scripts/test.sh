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
echo "== every file under tests/it is compiled"
# tests/it is one test binary: a file that tests/it/main.rs does not declare is never compiled,
# its tests never run. Refuse that, naming the file.
undeclared=0
for file in tests/it/*.rs; do
    name="$(basename "$file" .rs)"
    [ "$name" = main ] && continue
    if ! grep -Eq "^[[:space:]]*(pub[[:space:]]+)?mod[[:space:]]+${name}[[:space:]]*;" tests/it/main.rs; then
        echo "test.sh: $file is not declared in tests/it/main.rs (add \`mod $name;\`), so it is never compiled" >&2
        undeclared=1
    fi
done
[ "$undeclared" = 0 ]
echo "== cargo test"
# The doc tests (examples in the library's doc comments) first, then the library's unit tests,
# then the integration tests (tests/it), so the last line is the integration tests' count. The
# binary has no tests of its own.
cargo test --locked --doc
cargo test --locked --lib --test it --no-run
scripts/test-unprivileged.sh
cargo test --locked --lib --test it -- --test-threads=2
