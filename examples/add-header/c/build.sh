#!/usr/bin/env bash
# Usage: build.sh OUT.wasm    (any cwd)
# A plugin in C without a Flowgate helper: clang with wasi-libc makes a core
# module (Debian: clang lld wasi-libc libclang-rt-14-dev-wasm32), wasm-tools
# makes it a component. bindings/ is what `wit-bindgen c` generated from
# wit/transform.wit (see docs/plugins.md, "A language without a helper").
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(realpath -m "${1:?usage: build.sh OUT.wasm}")"
wasm_tools="${FLOWGATE_TOOLS:-$HOME/.cache/flowgate-tools}/venv/bin/wasm-tools"
[ -x "$wasm_tools" ] || wasm_tools=wasm-tools
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# A reactor: no main; the host calls the exports.
clang --target=wasm32-wasi --sysroot=/usr -mexec-model=reactor -O2 -Wall -Werror \
  -o "$tmp/core.wasm" "$here/add_header.c" "$here/bindings/transform.c" "$here/bindings/transform_component_type.o"
"$wasm_tools" component new "$tmp/core.wasm" -o "$out"
