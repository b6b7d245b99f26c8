#!/usr/bin/env bash
# Usage: wit/guest/rust/build.sh CRATE_DIR OUT.wasm
# Builds a Rust plugin crate (a cdylib using this helper) for wasm32-wasip2 and
# copies the component to OUT. Needs: rustup target add wasm32-wasip2
set -euo pipefail
[[ $# -eq 2 ]] || { echo "usage: $0 CRATE_DIR OUT.wasm" >&2; exit 2; }
crate="$(cd "$1" && pwd)"
out="$(realpath -m "$2")"
meta=$(cargo metadata --format-version 1 --no-deps --manifest-path "$crate/Cargo.toml")
read -r target name < <(python3 -c '
import json, sys
m = json.load(sys.stdin)
pkg = next(p for p in m["packages"] if p["manifest_path"] == sys.argv[1])
print(m["target_directory"], pkg["name"].replace("-", "_"))' "$crate/Cargo.toml" <<<"$meta")
cargo build --quiet --release --target wasm32-wasip2 --manifest-path "$crate/Cargo.toml"
mkdir -p "$(dirname "$out")"
cp "$target/wasm32-wasip2/release/$name.wasm" "$out"
