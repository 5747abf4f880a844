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

scripts/setup-tools.sh --browser

# CI builds a clean clone once: incremental state would be written and never read.
if [[ "${CI:-}" == true ]]; then
    export CARGO_INCREMENTAL=0
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== every file under tests/it is compiled"
# tests/it is one test binary: a file that its parent module does not declare is never compiled,
# its tests never run. Refuse that, naming the file. The parent of tests/it/a.rs is
# tests/it/main.rs; of tests/it/a/b.rs (or tests/it/a/b/mod.rs), tests/it/a/mod.rs or tests/it/a.rs.
undeclared=0
while IFS= read -r file; do
    [ "$file" = tests/it/main.rs ] && continue
    dir="$(dirname "$file")"
    name="$(basename "$file" .rs)"
    if [ "$name" = mod ]; then
        name="$(basename "$dir")"
        dir="$(dirname "$dir")"
    fi
    if [ "$dir" = tests/it ]; then
        parents=(tests/it/main.rs)
    else
        parents=("$dir/mod.rs" "$dir.rs")
    fi
    declared=0
    for parent in "${parents[@]}"; do
        if [ -f "$parent" ] && [ "$parent" != "$file" ] &&
            grep -Eq "^[[:space:]]*(pub(\([a-z]+\))?[[:space:]]+)?mod[[:space:]]+${name}[[:space:]]*;" "$parent"; then
            declared=1
        fi
    done
    if [ "$declared" = 0 ]; then
        echo "test.sh: $file is not declared in ${parents[0]} (add \`mod $name;\`), so it is never compiled" >&2
        undeclared=1
    fi
done < <(find tests/it -name '*.rs' | sort)
[ "$undeclared" = 0 ]
echo "== cargo test"
# The doc tests (examples in the library's doc comments) first, then the library's unit tests,
# then the integration tests (tests/it), so the last line is the integration tests' count. The
# binary has no tests of its own.
cargo test --locked --doc
cargo test --locked --lib --test it --no-run
scripts/test-unprivileged.sh
# Three tests at a time on two cores: most of a test's time is spent waiting for the processes
# it started (nats-server, workers, agents). All 185 took 508 s so against 625 s two at a time,
# on this 2-core machine.
cargo test --locked --lib --test it -- --test-threads=3
