#!/usr/bin/env bash
# Usage: wit/guest/python/build.sh APP_DIR OUT.wasm
# Builds the componentize-py app module APP_DIR/app.py (with flowgate_guest.py from
# this dir) into a component of world flowgate:transform/transform that imports no
# WASI (--stub-wasi). Tools come from scripts/guest-toolchains.sh.
set -euo pipefail
[[ $# -eq 2 ]] || { echo "usage: $0 APP_DIR OUT.wasm" >&2; exit 2; }
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
app="$(cd "$1" && pwd)"
out="$(realpath -m "$2")"
tools="${FLOWGATE_TOOLS:-$HOME/.cache/flowgate-tools}"
cpy="$tools/venv/bin/componentize-py"
[[ -x "$cpy" ]] || { echo "$cpy not found: run scripts/guest-toolchains.sh" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
# Build from a copy: componentize-py's pre-init writes __pycache__ next to the sources.
# An empty VIRTUAL_ENV: no site-packages (the tools venv's or the system's) get
# bundled; the apps need only the standard library.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/venv/lib/python3/site-packages"
cp "$app"/*.py "$here/flowgate_guest.py" "$work/src/"
cd "$work/src"
VIRTUAL_ENV="$work/venv" "$cpy" -d "$root/wit" -w transform componentize --stub-wasi \
  -p "$work/src" app -o "$out"
