#!/usr/bin/env bash
# The deployment, built and run for real: the check to run before a release (not part of
# scripts/test.sh: it builds the image, about ten minutes on two idle cores, then runs the stack
# for ten to twenty, most of it podman making containers; one run took 29 minutes in all). With podman, no Docker engine needed:
#
#   1. the files, as scripts/check-deploy.sh --skip-install checks them;
#   2. the image, built from the Dockerfile as it is (podman build --format docker, so that its
#      HEALTHCHECK is kept); --no-build takes the clawdforge:local there is;
#   3. the services of compose.yml without a profile (nats, worker-host, two workers, the
#      sidecar), as Docker Compose resolves the file with a .env made as docs/operations.md's
#      step 1 says, started by scripts/compose-podman.py (podman-compose cannot run the file:
#      see there), under the project name clawdforge-check, on ports of their own; the model
#      is tests/fixtures/model-standin.mjs on the compose network's gateway, reached by the
#      agents through .env (ANTHROPIC_BASE_URL in agent_env, its port in agent_connect_ports);
#   4. against it: every container's health check; /healthz through the sidecar's published
#      port (two workers, agents confined); the volumes' owners; a token minted in a worker;
#      forge.health over the published NATS port as an app's user; a session on the image's
#      default agent (Claude Code's ACP adapter through acpx) with two turns and a tool call;
#      a one-shot run (claude -p); a confinement probe from inside the agent (the ledger, the
#      workers' NATS password and the workers' environment are not readable); the worker of
#      the session killed: no request right after it is lost, and the session's next turn is
#      answered by the other worker with the whole conversation;
#      a turn held in flight while the workers are stopped: answered, the stop within
#      stop_grace_period, exit code 0; every service removed and started again: the ledger,
#      the token and the session's conversation are still there;
#   5. the same image with its workers as root (user 0 by a compose override, in a project of
#      its own, clawdforge-check-root): healthy, confined, a turn with a tool call, and the
#      same probe refused.
# Everything it made but the image is removed at the end (--keep: not when a check fails, to
# look at what is left; it says how to remove it). The base images must be in podman's store or
# pullable.
#
# Podman's flags, when a machine needs them: $PODMAN (the command and its global flags, e.g.
# "podman --storage-driver=vfs --runtime runc --cgroup-manager=cgroupfs"), $PODMAN_CREATE_ARGS
# (for every container, e.g. "--ulimit nofile=4096:4096 --ulimit nproc=4096:4096"),
# $PODMAN_BUILD_ARGS (for the build, e.g. the same ulimits and "--network host").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd -P)

build=true
keep=false
for arg in "$@"; do
    case $arg in
        --no-build) build=false ;;
        --keep) keep=true ;;
        *) echo "usage: scripts/check-image.sh [--no-build] [--keep]" >&2; exit 2 ;;
    esac
done

export PODMAN=${PODMAN:-podman}
export PODMAN_CREATE_ARGS=${PODMAN_CREATE_ARGS:-}
read -r -a podman <<<"$PODMAN"
read -r -a build_args <<<"${PODMAN_BUILD_ARGS:-}"
image=clawdforge:local
project=clawdforge-check
root_project=clawdforge-check-root

step() { printf '\n== [%d:%02d] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }
die() { printf 'check-image: FAILED: %s\n' "$*" >&2; exit 1; }
command -v "${podman[0]}" >/dev/null || die "no ${podman[0]} on PATH"
command -v curl >/dev/null || die "no curl on PATH"

# ---- 1. the files ----------------------------------------------------------------------------
step "the files (scripts/check-deploy.sh --skip-install)"
scripts/check-deploy.sh --skip-install >/dev/null || die "scripts/check-deploy.sh --skip-install"
echo "passed"
py=$repo/.tools/deploy/bin/python
node=$repo/.tools/bin/node
compose="$("$py" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')"

work=$(mktemp -d)
deploy=$work/deploy
standin_pid=
cleanup() {
    local status=$?
    [[ -n "$standin_pid" ]] && kill "$standin_pid" 2>/dev/null
    if $keep && [[ $status != 0 ]]; then
        echo "check-image: --keep: the stack is left as it failed (the model stand-in is gone); remove it with:"
        echo "  (cd $deploy && $repo/scripts/compose-podman.py -p $project down --volumes)"
        echo "  (cd $deploy && $repo/scripts/compose-podman.py -p $root_project -f compose.yml -f root.yml down --volumes)"
        echo "  rm -rf $work"
        return
    fi
    if [[ -d "$deploy" ]]; then
        (cd "$deploy" && "$repo/scripts/compose-podman.py" -p "$project" down --volumes \
            && "$repo/scripts/compose-podman.py" -p "$root_project" -f compose.yml -f root.yml \
                down --volumes) >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

# ---- 2. the image ----------------------------------------------------------------------------
if $build; then
    step "the image: podman build --format docker -t $image ."
    started=$SECONDS
    "${podman[@]}" build --format docker "${build_args[@]}" -t "$image" . \
        || die "the image does not build"
    echo "built in $((SECONDS - started)) s"
else
    step "the image: $image as it is (--no-build)"
fi
"${podman[@]}" image inspect "$image" >"$work/image.json" || die "no image $image"
"$py" - "$work/image.json" <<'PY' || die "the image is not what the Dockerfile says"
import json, sys
i = json.load(open(sys.argv[1]))[0]
c = i["Config"]
assert c["User"] == "10001:10001", c["User"]
assert c["Entrypoint"] == ["tini", "-s", "--", "setpriv", "--pdeathsig", "KILL", "--", "clawdforge"], c
assert c["Cmd"] == ["worker"], c
health = i.get("Healthcheck") or {}
assert health.get("Test") == ["CMD", "clawdforge", "healthcheck"], health
print(f"user {c['User']}, entrypoint {' '.join(c['Entrypoint'])}, health check "
      f"{' '.join(health['Test'][1:])}, {i['Size'] / 1e9:.2f} GB")
PY

# ---- 3. the stack ----------------------------------------------------------------------------
# compose-podman.py in the deployment's directory, on the main project.
stack() { (cd "$deploy" && "$repo/scripts/compose-podman.py" -p "$project" "$@"); }
free_port() { "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# A field of the JSON on stdin: `jget a.b` (strings bare, the rest as JSON).
jget() {
    "$py" -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[int(k)] if isinstance(v, list) else v[k]
print(v if isinstance(v, str) else json.dumps(v))' "$1"
}

step "a deployment directory, .env as docs/operations.md's step 1 makes it; two workers"
mkdir -p "$deploy"
cp -r compose.yml Dockerfile config "$deploy/"
(
    cd "$deploy"
    cp config/.env.example .env && chmod 600 .env
    for v in NATS_FORGE_PASSWORD NATS_SIDECAR_PASSWORD NATS_APP_NOTES_PASSWORD; do
        sed -i "s/^$v=\$/$v=$(openssl rand -hex 24)/" .env
    done
)
http_port=$(free_port)
nats_port=$(free_port)
standin_port=$(free_port)
cat >>"$deploy/.env" <<ENV
WORKERS=2
HTTP_PORT=$http_port
NATS_PORT=$nats_port
# The host reaches the sidecar from the network's gateway (docs/operations.md): its subnet.
ALLOW_CIDRS=
# The model: the stand-in on the network's gateway, given to the agents as an API key would be.
ANTHROPIC_BASE_URL=
ANTHROPIC_API_KEY=sk-ant-standin
CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1
CLAWDFORGE_AGENT_ENV=ANTHROPIC_BASE_URL,ANTHROPIC_API_KEY,CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC,DISABLE_AUTOUPDATER
CLAWDFORGE_AGENT_CONNECT_PORTS=$standin_port
ENV
forge_password=$(sed -n 's/^NATS_FORGE_PASSWORD=//p' "$deploy/.env")
notes_password=$(sed -n 's/^NATS_APP_NOTES_PASSWORD=//p' "$deploy/.env")
grace=$(cd "$deploy" && "$compose" -p "$project" config --format json | jget services.worker.stop_grace_period)
grace=${grace%s}

# network STACK: makes the stack's network and points .env at it: ALLOW_CIDRS its subnet, the
# model its gateway. The stand-in can listen there only once a container is on the network.
gateway=
network() {
    local subnet
    read -r subnet gateway < <("$@" network) || die "no network"
    sed -i "s|^ALLOW_CIDRS=.*|ALLOW_CIDRS=$subnet|; s|^ANTHROPIC_BASE_URL=.*|ANTHROPIC_BASE_URL=http://$gateway:$standin_port|" \
        "$deploy/.env"
    echo "network: $subnet, gateway $gateway"
}
# standin: the model stand-in on the gateway (again, when the gateway changed). Its stdin is a
# FIFO this script holds open (fd 7): it ends with the script.
standin_host=
standin() {
    [[ "$standin_host" == "$gateway" ]] && return
    [[ -n "$standin_pid" ]] && { kill "$standin_pid"; wait "$standin_pid" 2>/dev/null || true; }
    rm -f "$work/standin/port"
    "$node" tests/fixtures/model-standin.mjs --host "$gateway" --port "$standin_port" \
        --port-file "$work/standin/port" --log "$work/standin/requests.jsonl" \
        <"$work/standin/stdin" >>"$work/standin/out.log" 2>&1 &
    standin_pid=$!
    for _ in $(seq 1 100); do [[ -s "$work/standin/port" ]] && break; sleep 0.1; done
    [[ -s "$work/standin/port" ]] || die "the stand-in does not listen: $(cat "$work/standin/out.log")"
    standin_host=$gateway
    echo "the model stand-in on $gateway:$standin_port"
}
# healthy STACK: every health check passes, within a minute.
healthy() {
    local _
    for _ in $(seq 1 30); do
        "$@" health >"$work/health.txt" 2>&1 && { cat "$work/health.txt"; return 0; }
        sleep 2
    done
    cat "$work/health.txt"
    return 1
}
mkdir -p "$work/standin"
mkfifo "$work/standin/stdin"
exec 7<>"$work/standin/stdin"

step "the services of compose.yml (scripts/compose-podman.py up)"
network stack
echo "sidecar on 127.0.0.1:$http_port, NATS on 127.0.0.1:$nats_port"
started=$SECONDS
stack up || die "the stack does not start"
echo "up in $((SECONDS - started)) s"
standin

mapfile -t workers < <(stack names worker)
[[ ${#workers[@]} -eq 2 ]] || die "WORKERS=2 made ${#workers[@]} workers"
sidecar=$(stack names sidecar)
logs() { for c in "$@"; do echo "--- $c"; "${podman[@]}" logs --tail 40 "$c" 2>&1; done; }
on_failure() { logs "${workers[@]}" "$sidecar" >&2; }

step "health checks, /healthz through the sidecar"
healthy stack || { on_failure; die "a health check fails"; }
stack ps
base=http://127.0.0.1:$http_port
token=
# api METHOD PATH [BODY]: the sidecar's answer on stdout; fails unless it is 2xx.
api() {
    local out status
    out=$(curl -sS --max-time 300 -X "$1" -H "Authorization: Bearer $token" \
        -H 'Content-Type: application/json' ${3:+--data "$3"} -w '\n%{http_code}' "$base$2") \
        || return 1
    status=${out##*$'\n'}
    printf '%s\n' "${out%$'\n'*}"
    [[ $status == 2* ]] || { echo "HTTP $status" >&2; return 1; }
}
api GET /healthz >"$work/healthz.json" || die "/healthz: $(cat "$work/healthz.json")"
cat "$work/healthz.json"
"$py" - "$work/healthz.json" <<'PY' || die "/healthz is not what it should be"
import json, sys
h = json.load(open(sys.argv[1]))
assert h["ok"] and h["nats_connected"] and h["workers"] == 2, h
assert h["acpx_version"] == "0.19.1" and h["claude_present"], h
assert h["confined"] is True, ("agents not confined", h)
PY

step "the volumes' owners, as compose makes them"
# The volume data: the workers' user's (worker-host's chown, the image's /data); worker-tmp:
# the image's /tmp (root, sticky, writable by all).
"${podman[@]}" exec "${workers[0]}" stat -c '%n %u:%g %a' /data /data/homes /tmp | tee "$work/owners.txt"
grep -qx '/data 10001:10001 755' "$work/owners.txt" || die "/data is not the workers' user's"
grep -qx '/tmp 0:0 1777' "$work/owners.txt" || die "/tmp (worker-tmp) is not root's, 1777"

step "a token, minted in a worker (docs/operations.md, step 4)"
token=$("${podman[@]}" exec "${workers[0]}" clawdforge token create --app check --json | jget token) \
    || die "token create"
echo "token for app check: ${token:0:6}…"

step "forge.health over the published NATS port, as the app user notes"
.tools/bin/python scripts/request.py forge.health --timeout 10 \
    --url "nats://notes:$notes_password@127.0.0.1:$nats_port" | tee "$work/nats-health.json" \
    || die "forge.health over NATS"

step "a session on the default agent: two turns, a tool call"
api POST /sessions '{}' >"$work/session.json" || { on_failure; die "session create: $(cat "$work/session.json")"; }
cat "$work/session.json"
session=$(jget session_id <"$work/session.json")
turn() {
    local body
    body=$("$py" -c 'import json, sys; print(json.dumps({"prompt": sys.argv[1]}))' "$1")
    api POST "/sessions/$session/turn" "$body"
}
turn "hello from the check" >"$work/turn1.json" || { on_failure; die "turn 1: $(cat "$work/turn1.json")"; }
cat "$work/turn1.json"
[[ $(jget output <"$work/turn1.json") == "model: hello from the check [history=1]" ]] \
    || die "turn 1 answered otherwise"
turn "#bash=echo the tool ran" >"$work/turn2.json" || { on_failure; die "turn 2: $(cat "$work/turn2.json")"; }
cat "$work/turn2.json"
grep -q 'tool said: the tool ran' "$work/turn2.json" || die "turn 2: no tool result"
grep -q 'history=2' "$work/turn2.json" || die "turn 2 does not carry turn 1"

step "a one-shot run (claude -p)"
api POST /run '{"prompt": "one shot"}' >"$work/run.json" || { on_failure; die "run: $(cat "$work/run.json")"; }
cat "$work/run.json"
"$py" - "$work/run.json" <<'PY' || die "the run is not what it should be"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["ok"] and r["exit_code"] == 0 and r["result"].startswith("model: one shot"), r
assert r["cost_usd"] > 0, r
PY

# The agent's Bash tool tries the ledger, the workers' NATS password (a secret under
# /run/secrets) and the environment of every worker process it can see in the shared process
# namespace; it counts those processes, so that a refusal is not an empty loop.
# shellcheck disable=SC2016 # run by the agent's shell, not this one
probe='#bash=head -c 16 /data/clawdforge.db; cat /run/secrets/nats_forge_password; n=0; for p in /proc/[0-9]*; do case "$(tr "\0" " " <$p/cmdline 2>/dev/null)" in "clawdforge worker"*) n=$((n+1)); head -c 40 $p/environ;; esac; done; echo "workers seen: $n"'
# check_probe FILE: the turn's answer shows every read refused.
check_probe() {
    local out=$1
    grep -q 'workers seen: [1-9]' "$out" || die "the probe saw no worker process: $(cat "$out")"
    ! grep -q 'SQLite format' "$out" || die "the agent read the ledger"
    ! grep -qF "$forge_password" "$out" || die "the agent read the workers' NATS password"
    ! grep -q 'NATS_\|PATH=' "$out" || die "the agent read a worker's environment"
    [[ $(grep -o 'Permission denied' "$out" | wc -l) -ge 3 ]] || die "not every read was refused"
}

step "a confinement probe from inside the agent"
turn "$probe" >"$work/turn3.json" || { on_failure; die "turn 3: $(cat "$work/turn3.json")"; }
cat "$work/turn3.json"
check_probe "$work/turn3.json"
echo "refused: the ledger, the secret, every worker's environment"

ledger() { "${podman[@]}" exec "$1" sqlite3 -readonly /data/clawdforge.db "$2"; }
last_worker() {
    ledger "$1" "SELECT worker_id FROM session_events WHERE session_id = '$session' AND event = 'turn' ORDER BY id DESC LIMIT 1"
}
container_of() {
    local c
    for c in "${workers[@]}"; do
        [[ $1 == "$("${podman[@]}" inspect -f '{{.Config.Hostname}}' "$c")-"* ]] && { echo "$c"; return; }
    done
    return 1
}

step "two workers: the session's worker killed, its next turn answered by the other"
killed=$(container_of "$(last_worker "${workers[0]}")") || die "no worker container ran turn 3"
other=${workers[0]}
[[ $other == "$killed" ]] && other=${workers[1]}
"${podman[@]}" kill "$killed" >/dev/null
echo "killed $killed (it ran turn 3); $other is left"
sleep 1
# No request is handed to the killed worker: each of these would be, about every other one,
# while nats-server still held its subscription (they are answered in milliseconds otherwise).
for _ in $(seq 1 8); do
    curl -sS --max-time 10 -o /dev/null -w '%{http_code}\n' -H "Authorization: Bearer $token" \
        "$base/sessions/$session" >>"$work/after-kill.txt" 2>&1 || true
done
[[ $(grep -cx 200 "$work/after-kill.txt") == 8 ]] \
    || die "requests lost after the kill (nats-server still hands them to the killed worker): $(tr '\n' ' ' <"$work/after-kill.txt")"
echo "8 requests right after the kill: all answered"
turn "after the kill" >"$work/turn4.json" || { on_failure; die "turn 4: $(cat "$work/turn4.json")"; }
cat "$work/turn4.json"
grep -q 'model: after the kill \[history=4\]' "$work/turn4.json" \
    || die "turn 4 lost the conversation"
by=$(container_of "$(last_worker "$other")") || die "turn 4's worker is no container of ours"
[[ $by == "$other" ]] || die "turn 4 was answered by $by, not $other"
echo "turn 4 answered by $other, with the whole conversation"
stack up worker >/dev/null || die "the killed worker does not come back"
healthy stack >/dev/null || die "the killed worker does not come back healthy"

step "a graceful stop of the workers with a turn in flight"
hold=$work/standin/release
body=$("$py" -c 'import json, sys; print(json.dumps({"prompt": "held #hold=" + sys.argv[1]}))' "$hold")
api POST "/sessions/$session/turn" "$body" >"$work/turn5.json" 2>&1 &
turn5=$!
for _ in $(seq 1 300); do
    grep -q '"hold":' "$work/standin/requests.jsonl" && break
    sleep 0.2
done
grep -q '"hold":' "$work/standin/requests.jsonl" || die "the held turn never reached the model"
started=$SECONDS
stack stop worker >"$work/stop.txt" 2>&1 &
stopping=$!
sleep 5
touch "$hold"
wait "$turn5" || { on_failure; die "the turn in flight failed: $(cat "$work/turn5.json")"; }
wait "$stopping" || die "stop: $(cat "$work/stop.txt")"
took=$((SECONDS - started))
cat "$work/turn5.json"
grep -q 'model: held' "$work/turn5.json" || die "the turn in flight was not answered"
for c in "${workers[@]}"; do
    code=$("${podman[@]}" inspect -f '{{.State.ExitCode}}' "$c")
    [[ $code == 0 ]] || {
        logs "${workers[@]}"
        cat "$work/stop.txt"
        die "$c exited with $code after $took s (not a graceful stop)"
    }
done
((took < grace)) || die "the workers took $took s to stop, stop_grace_period is $grace s"
echo "the turn in flight answered; both workers stopped in $took s (stop_grace_period ${grace} s), exit code 0"
stack up worker >/dev/null || die "the workers do not start again"

step "every service removed and started again: what the volumes keep"
stack down >/dev/null
network stack
stack up >/dev/null || die "the stack does not start again"
standin
healthy stack >/dev/null || die "unhealthy after the restart"
api GET "/sessions/$session" >"$work/session.json" || die "the token or the session is gone: $(cat "$work/session.json")"
cat "$work/session.json"
[[ $(jget turns <"$work/session.json") == 5 ]] || die "the ledger lost turns"
turn "after the restart" >"$work/turn6.json" || { on_failure; die "turn 6: $(cat "$work/turn6.json")"; }
cat "$work/turn6.json"
grep -q 'model: after the restart \[history=6\]' "$work/turn6.json" \
    || die "the conversation did not survive the restart"
echo "token, ledger and conversation kept"
stack down --volumes >/dev/null

# ---- 5. the workers as root ------------------------------------------------------------------
step "the same image, its workers as root (project $root_project)"
cat >"$deploy/root.yml" <<'YML'
services:
  worker:
    user: "0:0"
YML
sed -i 's/^WORKERS=2$/WORKERS=1/' "$deploy/.env"
root_stack() { (cd "$deploy" && "$repo/scripts/compose-podman.py" -p "$root_project" -f compose.yml -f root.yml "$@"); }
network root_stack
root_stack up >/dev/null || die "the stack with root workers does not start"
standin
workers=("$(root_stack names worker)")
sidecar=$(root_stack names sidecar)
"${podman[@]}" exec "${workers[0]}" id -u | grep -qx 0 || die "the worker does not run as root"
healthy root_stack >/dev/null || die "root: unhealthy"
api GET /healthz | tee "$work/root-healthz.json" >/dev/null || die "root: /healthz"
[[ $(jget confined <"$work/root-healthz.json") == true ]] || die "root: agents not confined"
token=$("${podman[@]}" exec "${workers[0]}" clawdforge token create --app check --json | jget token)
session=$(api POST /sessions '{}' | jget session_id) || { on_failure; die "root: session create"; }
turn "#bash=echo root tool ran" >"$work/root-turn1.json" || { on_failure; die "root: turn 1: $(cat "$work/root-turn1.json")"; }
cat "$work/root-turn1.json"
grep -q 'tool said: root tool ran' "$work/root-turn1.json" || die "root: no tool result"
turn "$probe" >"$work/root-turn2.json" || { on_failure; die "root: the probe's turn"; }
cat "$work/root-turn2.json"
check_probe "$work/root-turn2.json"
echo "as root: the tool ran; the ledger, the secret and every worker's environment refused"
root_stack down --volumes >/dev/null

step "check-image: all checks passed in $((SECONDS / 60)) min $((SECONDS % 60)) s"
