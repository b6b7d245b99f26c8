#!/usr/bin/env bash
# Builds this plugin as a WebAssembly component: build.sh OUT.wasm
# Needs: rustup target add wasm32-wasip2
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUT.wasm}
name=$(basename "$(dirname "$here")")
cargo build --quiet --release --target wasm32-wasip2 --manifest-path "$here/Cargo.toml"
target=$(cargo metadata --format-version 1 --no-deps --manifest-path "$here/Cargo.toml" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
cp "$target/wasm32-wasip2/release/${name//-/_}.wasm" "$out"
