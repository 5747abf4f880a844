#!/usr/bin/env bash
# Brings clawdforge up on this machine, in the foreground: nats-server on 127.0.0.1, and
# `clawdforge serve` (a worker and the HTTP sidecar on 127.0.0.1) driving the demo ACP agent
# (tests/fixtures/acp-agent.mjs, no credentials needed).
# Installs what it needs first (project-local, into .tools/). Ctrl-C stops everything.
#
# Environment: CLAWDFORGE_DATA (default .data), NATS_PORT (default 4222), HTTP_PORT (default 8800).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd -P)

if ! command -v cargo >/dev/null 2>&1; then
    echo "up.sh: cargo is not on PATH; install the Rust toolchain (rustup) first" >&2
    exit 1
fi
scripts/setup-tools.sh
cargo build --release --locked

data=$(mkdir -p "${CLAWDFORGE_DATA:-.data}" && cd "${CLAWDFORGE_DATA:-.data}" && pwd -P)
port=${NATS_PORT:-4222}
http_port=${HTTP_PORT:-8800}
mkdir -p "$data/home" "$data/nats"

# The admin token is made once and kept (readable by you only).
if [[ ! -s "$data/admin-token" ]]; then
    (umask 077 && .tools/bin/python -c 'import secrets; print("cf_admin_" + secrets.token_urlsafe(32))' >"$data/admin-token")
fi
admin_token=$(cat "$data/admin-token")

pids=()
cleanup() {
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    # acpx keeps agents warm in detached processes; they share the demo's HOME.
    for env in /proc/[0-9]*/environ; do
        if { tr '\0' '\n' <"$env"; } 2>/dev/null | grep -qx "HOME=$data/home"; then
            pid=${env#/proc/}; kill "${pid%/environ}" 2>/dev/null || true
        fi
    done
    echo "up.sh: stopped"
}
trap cleanup EXIT INT TERM

.tools/bin/nats-server -a 127.0.0.1 -p "$port" -js -sd "$data/nats" >"$data/nats.log" 2>&1 &
pids+=($!)

export HOME="$data/home"
export NATS_URL="nats://127.0.0.1:$port"
export ADMIN_BOOTSTRAP_TOKEN="$admin_token"
export DB_PATH="$data/clawdforge.db"
export ACPX_SESSIONS_CWD="$data/acpx-cwds"
export RUNS_DIR="$data/runs"
export ACPX_BIN="$repo/.tools/bin/acpx"
export ACPX_AGENT="$repo/.tools/bin/node $repo/tests/fixtures/acp-agent.mjs"
export BIND_HOST=127.0.0.1
export BIND_PORT="$http_port"
export RUST_LOG="${RUST_LOG:-info}"

target/release/clawdforge serve &
pids+=($!)

for _ in $(seq 1 100); do
    if .tools/bin/python scripts/request.py forge.health --timeout 1 >/dev/null 2>&1; then
        break
    fi
    sleep 0.2
done
.tools/bin/python scripts/request.py forge.health --timeout 5 >/dev/null
http="http://127.0.0.1:$http_port"
for _ in $(seq 1 50); do
    if .tools/bin/python -c 'import sys, urllib.request as u; u.build_opener(u.ProxyHandler({})).open(sys.argv[1], timeout=1)' \
        "$http/healthz" >/dev/null 2>&1; then
        break
    fi
    sleep 0.2
done

cat <<MSG

clawdforge is up.
  NATS:         $NATS_URL
  HTTP:         $http   (loopback only: set ALLOW_CIDRS to open it to your LAN)
  admin token:  $admin_token   (also in $data/admin-token)
  ledger:       $DB_PATH
  agent:        the demo ACP agent (it answers "echo: <your prompt>")

Try it from another terminal (nats-py is in .tools/venv):
  export CLAWDFORGE_TOKEN=$admin_token
  .tools/bin/python scripts/request.py forge.health
  .tools/bin/python scripts/request.py forge.admin.token.create '{"app": "demo"}'
  .tools/bin/python scripts/request.py forge.session.create '{}'
  .tools/bin/python scripts/request.py forge.session.turn '{"session_id": "<id>", "prompt": "hello"}'
  .tools/bin/python tests/clients/contract_check.py $NATS_URL $admin_token

Or over HTTP, as the old service's callers do:
  curl -s $http/healthz
  curl -s -H "Authorization: Bearer $admin_token" -d '{"app": "web"}' $http/admin/tokens
  export TOKEN=<the token it printed>
  curl -s -H "Authorization: Bearer \$TOKEN" -d '{}' $http/sessions
  curl -s -H "Authorization: Bearer \$TOKEN" -d '{"prompt": "hello"}' $http/sessions/<id>/turn
  curl -s -H "Authorization: Bearer \$TOKEN" -F prompt='read it #cat' -F file=@README.md $http/sessions/<id>/turn
  curl -s -H "Authorization: Bearer \$TOKEN" -X DELETE $http/sessions/<id>
  curl -s $http/openapi.json

Ctrl-C stops nats-server and clawdforge.
MSG

wait "${pids[1]}"
