#!/usr/bin/env bash
# Runs every test of the project (unit, end-to-end, and the service-backed ones),
# after installing and starting what they need. This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo nextest run --workspace --locked --profile ci
