#!/usr/bin/env bash
# Builds {{name}}.wasm from app.py. Needs componentize-py 0.25.1
# (pip install componentize-py==0.25.1), on PATH or in $FLOWGATE_TOOLS/venv/bin.
set -euo pipefail
cd "$(dirname "$0")"
tools=${FLOWGATE_TOOLS:-$HOME/.cache/flowgate-tools}
cpy=$(command -v componentize-py || echo "$tools/venv/bin/componentize-py")
# An empty virtual environment: only the standard library and this directory are
# bundled, not the packages of whatever environment componentize-py lives in.
empty=$(mktemp -d)
trap 'rm -rf "$empty"' EXIT
mkdir -p "$empty/lib/python3/site-packages"
VIRTUAL_ENV="$empty" "$cpy" -d wit -w transform componentize --stub-wasi -p . app -o {{name}}.wasm
echo "built {{name}}.wasm"
