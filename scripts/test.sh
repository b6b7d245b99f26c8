#!/usr/bin/env bash
# Runs every test of the project (unit, end-to-end, and the service-backed ones),
# after installing and starting what they need. This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

bash scripts/setup.sh
bash scripts/build-plugins.sh

cargo fmt --all -- --check
for ws in examples tests/plugins; do
  (cd "$ws" && cargo fmt --all -- --check)
  cargo clippy --quiet --locked --release --target wasm32-wasip2 --manifest-path "$ws/Cargo.toml" -- -D warnings
done
cargo clippy --workspace --all-targets --locked -- -D warnings

# The guest helpers on their own: the Python codec, and every example plugin of
# every language against the contract in Node (transpiled with jco).
python3 wit/guest/python/test_flowgate_guest.py
node wit/guest/js/test/run.mjs --allow-wasi "$FLOWGATE_PLUGINS"

cargo nextest run --workspace --locked --profile ci
