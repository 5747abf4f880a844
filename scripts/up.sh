#!/usr/bin/env bash
# Brings clawdforge up on this machine, in the foreground: nats-server on 127.0.0.1, and
# `clawdforge serve` (a worker and the HTTP sidecar on 127.0.0.1) driving the demo ACP agent
# (tests/fixtures/acp-agent.mjs, no credentials needed).
# Installs what it needs first (project-local, into .tools/). Ctrl-C stops everything.
#
# Environment: CLAWDFORGE_DATA (default .data), NATS_PORT (default 4222), HTTP_PORT (default 8800),
# METRICS_PORT (the worker's Prometheus metrics, default 9464; 0 picks a free one),
# OTEL_EXPORTER_OTLP_ENDPOINT (traces over OTLP/HTTP, e.g. http://127.0.0.1:4318; unset: none),
# CLAWDFORGE_BIN (a clawdforge binary to run instead of building the release one).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd -P)

if [[ -n "${CLAWDFORGE_BIN:-}" ]]; then
    bin=$CLAWDFORGE_BIN
else
    if ! command -v cargo >/dev/null 2>&1; then
        echo "up.sh: cargo is not on PATH; install the Rust toolchain (rustup) first" >&2
        exit 1
    fi
    cargo build --release --locked
    bin=$repo/target/release/clawdforge
fi
scripts/setup-tools.sh

data=$(mkdir -p "${CLAWDFORGE_DATA:-.data}" && cd "${CLAWDFORGE_DATA:-.data}" && pwd -P)
port=${NATS_PORT:-4222}
http_port=${HTTP_PORT:-8800}
metrics_port=${METRICS_PORT:-9464}
mkdir -p "$data/home" "$data/nats"
# clawdforge's log of this start; the one before is kept as clawdforge.log.1.
log=$data/clawdforge.log
[[ -e "$log" ]] && mv -f "$log" "$log.1"

export HOME="$data/home"
export NATS_URL="nats://127.0.0.1:$port"
export DB_PATH="$data/clawdforge.db"
export ACPX_SESSIONS_CWD="$data/acpx-cwds"
export RUNS_DIR="$data/runs"
# Each app's agents get their own home under $data/homes; they may read and run the system's
# directories, the tools and the demo agent, and nothing else of the checkout or of $data.
export CLAWDFORGE_AGENT_HOMES_DIR="$data/homes"
export CLAWDFORGE_AGENT_READ_DIRS="/usr,/bin,/sbin,/lib,/lib32,/lib64,/etc,/opt,$repo/.tools,$repo/tests/fixtures"
export ACPX_BIN="$repo/.tools/bin/acpx"
export ACPX_AGENT="$repo/.tools/bin/node $repo/tests/fixtures/acp-agent.mjs"
# Claude Code beside the demo agent, as setup-tools.sh installed it: `claude` through acpx (its
# built-in agent runs the installed adapter), `claude-native` on the native backend, and the
# claude CLI for one-shot runs. They need credentials: ANTHROPIC_API_KEY or
# CLAUDE_CODE_OAUTH_TOKEN in up.sh's environment (ANTHROPIC_BASE_URL too, for a proxy or a
# stand-in; its port is then the one agents may connect to besides 443).
export PATH="$repo/.tools/agents/bin:$PATH"
export CLAUDE_BIN="$repo/.tools/agents/bin/claude"
export CLAWDFORGE_AGENT_ENV="ANTHROPIC_API_KEY,CLAUDE_CODE_OAUTH_TOKEN,ANTHROPIC_BASE_URL,CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC,DISABLE_AUTOUPDATER"
export DISABLE_AUTOUPDATER=1
connect_ports=443
if [[ "${ANTHROPIC_BASE_URL:-}" =~ ^https?://[^/:]+:([0-9]+) ]]; then
    connect_ports="443,${BASH_REMATCH[1]}"
fi
export CLAWDFORGE_AGENT_CONNECT_PORTS="$connect_ports"
export CLAWDFORGE_CONFIG="$data/agents.toml"
cat >"$CLAWDFORGE_CONFIG" <<'TOML'
# Written by scripts/up.sh at every start.
[agents.claude]
command = "claude"

[agents.claude-native]
command = "claude"
backend = "acp"
TOML
export BIND_HOST=127.0.0.1
export BIND_PORT="$http_port"
# The worker's own /metrics (the sidecar serves its own at $http/metrics always).
export METRICS_ADDR="127.0.0.1:$metrics_port"
export RUST_LOG="${RUST_LOG:-info,async_nats=warn}"

# The admin token is an admin token of the ledger, minted once and kept (readable by you only).
# An earlier up.sh kept a bootstrap token there instead: it is replaced once.
if [[ ! -s "$data/admin-token" || ! -e "$data/admin-token.minted" ]]; then
    [[ -s "$data/admin-token" ]] && echo "up.sh: replacing the bootstrap token in $data/admin-token by a ledger admin token"
    minted=$("$bin" token create --app admin --admin 2>/dev/null | awk '$1 == "token" { print $2 }')
    [[ -n "$minted" ]] || { echo "up.sh: could not mint the admin token on $DB_PATH" >&2; exit 1; }
    (umask 077 && printf '%s\n' "$minted" >"$data/admin-token" && : >"$data/admin-token.minted")
fi
admin_token=$(cat "$data/admin-token")

nats_pid=""
serve_pid=""
# Stops clawdforge first and waits for it (it drains within shutdown_grace_secs, and its last
# replies go out over NATS), then NATS. A second Ctrl-C stops clawdforge at once.
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n "$serve_pid" ]] && kill -0 "$serve_pid" 2>/dev/null; then
        echo "up.sh: stopping clawdforge (it finishes what is in flight; Ctrl-C again to stop it at once)"
        trap 'kill -KILL "$serve_pid" 2>/dev/null || true' INT TERM
        kill -TERM "$serve_pid" 2>/dev/null || true
        wait "$serve_pid" 2>/dev/null || true
        trap - INT TERM
    fi
    if [[ -n "$nats_pid" ]]; then
        kill -TERM "$nats_pid" 2>/dev/null || true
        wait "$nats_pid" 2>/dev/null || true
    fi
    # acpx keeps agents warm in detached processes, in the apps' homes under $data/homes.
    for env in /proc/[0-9]*/environ; do
        if { tr '\0' '\n' <"$env"; } 2>/dev/null | grep -q -e "^HOME=$data/home\$" -e "^HOME=$data/homes/"; then
            pid=${env#/proc/}; kill "${pid%/environ}" 2>/dev/null || true
        fi
    done
    echo "up.sh: stopped"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Exits with the status of `pid` (named `what`) and the last lines of `file` when it has died.
exit_if_dead() {
    local pid=$1 what=$2 file=$3 status=0
    kill -0 "$pid" 2>/dev/null && return 0
    wait "$pid" || status=$?
    echo "up.sh: $what exited (status $status) before it was up; its last lines ($file):" >&2
    tail -n 15 "$file" | sed 's/^/  /' >&2
    [[ "$pid" == "$serve_pid" ]] && serve_pid=""
    [[ "$pid" == "$nats_pid" ]] && nats_pid=""
    exit 1
}

# NATS runs in a session of its own, so that Ctrl-C reaches only clawdforge: NATS must stay up
# until clawdforge has sent its last replies.
setsid "$repo/.tools/bin/nats-server" -a 127.0.0.1 -p "$port" -js -sd "$data/nats" >"$data/nats.log" 2>&1 &
nats_pid=$!
echo "$nats_pid" >"$data/nats.pid"

"$bin" serve 2> >(tee -i -a "$log" >&2) &
serve_pid=$!

up=""
for _ in $(seq 1 150); do
    exit_if_dead "$nats_pid" nats-server "$data/nats.log"
    exit_if_dead "$serve_pid" "clawdforge serve" "$log"
    if .tools/bin/python scripts/request.py forge.health --timeout 1 >/dev/null 2>&1 \
        && .tools/bin/python -c 'import sys, urllib.request as u; u.build_opener(u.ProxyHandler({})).open(sys.argv[1], timeout=1)' \
            "http://127.0.0.1:$http_port/healthz" >/dev/null 2>&1; then
        up=yes
        break
    fi
    sleep 0.2
done
if [[ -z "$up" ]]; then
    echo "up.sh: clawdforge did not come up within 30 s; its last lines ($log):" >&2
    tail -n 15 "$log" | sed 's/^/  /' >&2
    exit 1
fi
http="http://127.0.0.1:$http_port"
# Where the worker serves its metrics, as it says (the port it picked, for METRICS_PORT=0).
metrics_addr=$(sed -n 's/.*metrics ready addr=\([^ ]*\).*/\1/p' "$log" | tail -n 1)
metrics="http://${metrics_addr:-$METRICS_ADDR}/metrics"

# Each configured agent started once as a worker starts it (initialize and session/new, no
# prompt): what it is, and whether it is ready. A broken agent does not stop the service.
echo
echo "up.sh: clawdforge agents check"
RUST_LOG=warn "$bin" agents check 2>&1 | sed 's/^/  /' || true

if [[ -n "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]]; then
    traces="to $OTEL_EXPORTER_OTLP_ENDPOINT (OTLP/HTTP)"
else
    traces="off (set OTEL_EXPORTER_OTLP_ENDPOINT for up.sh, e.g. http://127.0.0.1:4318)"
fi

if [[ -n "${ANTHROPIC_API_KEY:-}${CLAUDE_CODE_OAUTH_TOKEN:-}" ]]; then
    claude_creds="set"
else
    claude_creds="not set"
fi

cat <<MSG

clawdforge is up.
  NATS:         $NATS_URL
  HTTP:         $http   (loopback only: set ALLOW_CIDRS to open it to your LAN)
  console:      $http/console   (log in with the admin token below)
  metrics:      $metrics (the worker's), $http/metrics (the sidecar's)
  traces:       $traces
  admin token:  $admin_token   (also in $data/admin-token)
  ledger:       $DB_PATH
  agents:       default: the demo ACP agent (it answers "echo: <your prompt>"; no credentials)
                claude, claude-native: Claude Code through acpx, and natively (they need
                ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN set for up.sh: $claude_creds)

Try it from another terminal (nats-py is in .tools/venv):
  export CLAWDFORGE_TOKEN=$admin_token
  .tools/bin/python scripts/request.py forge.health
  .tools/bin/python scripts/request.py forge.admin.token.create '{"app": "demo"}'
  .tools/bin/python scripts/request.py forge.session.create '{}'
  .tools/bin/python scripts/request.py forge.session.turn '{"session_id": "<id>", "prompt": "hello"}'
  .tools/bin/python scripts/request.py forge.session.create '{"agent": "claude-native"}'
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
  curl -s $metrics

Ctrl-C stops clawdforge (within its grace period), then nats-server.
MSG

status=0
wait "$serve_pid" || status=$?
serve_pid=""
echo "up.sh: clawdforge serve exited (status $status)" >&2
exit "$status"
