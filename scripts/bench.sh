#!/usr/bin/env bash
# Benchmarks, each side by side with its baseline in one run; see docs/benchmarks.md.
#   scripts/bench.sh            all benchmarks
#   scripts/bench.sh engine     generate -> null through the engine
#   scripts/bench.sh sqlite     JSON lines -> SQLite vs the sqlite3 CLI's CSV import
#   scripts/bench.sh wasm       the Wasm step: identity, PII mask vs native, Python/JS, cached start
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh
cargo build --release --locked
cargo build --release --locked -p flowgate-wasm --example wasm_bench
bash scripts/build-plugins.sh
exec python3 scripts/bench.py "$@"
