#!/usr/bin/env bash
# The confinement tests once more as an unprivileged user, when the suite runs as root: what
# keeps an agent away from the worker's /proc/<pid> differs between root (its agents lose every
# capability) and any other user (the worker is not dumpable), and operators run both.
# Run by scripts/test.sh after the test binary is built; as another user than root it does
# nothing, since the main run is then the unprivileged one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ "$(id -u)" != 0 ]]; then
    echo "== confinement as an unprivileged user: the whole suite runs as $(id -un)"
    exit 0
fi
user=nobody
id "$user" >/dev/null 2>&1 || { echo "test-unprivileged.sh: no user '$user' on this machine" >&2; exit 1; }
binary="$(cargo test --locked --test it --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "it" and m.get("executable"):
        print(m["executable"])')"
[[ -x "$binary" ]] || { echo "test-unprivileged.sh: the integration test binary was not found" >&2; exit 1; }
as_user=(setpriv --reuid="$user" --regid="$(id -g "$user")" --clear-groups --inh-caps=-all)
# Every directory on the way to the checkout must let the user through, or nothing can run.
# A checkout under a closed directory (a private temporary one, say) cannot be tested this
# way: that is said loudly, and the main run as root still proves the root half.
if ! "${as_user[@]}" test -x "$binary" -a -r tests/fixtures/acp-agent.mjs -a -x .tools/bin/acpx; then
    echo "== SKIPPED confinement as an unprivileged user: '$user' cannot reach $PWD (a parent" \
        "directory is closed to other users); run the suite from an open directory to check it"
    exit 0
fi
echo "== confinement as an unprivileged user ($user)"
home="$(mktemp -d)"
chown "$user" "$home"
trap 'rm -rf "$home"' EXIT
HOME="$home" "${as_user[@]}" "$binary" confinement:: --test-threads=2
