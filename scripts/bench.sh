#!/usr/bin/env bash
# Benchmarks, each side by side with its baseline in one run; see docs/benchmarks.md.
#   scripts/bench.sh            all benchmarks
#   scripts/bench.sh engine     generate -> null through the engine
#   scripts/bench.sh sqlite     JSON lines -> SQLite vs the sqlite3 CLI's CSV import
#   scripts/bench.sh wasm       the Wasm step: identity, PII mask vs native, Python/JS, cached start
#   scripts/bench.sh kafka      Kafka -> PII mask -> Kafka vs raw librdkafka and Python loops
#   scripts/bench.sh cdc        Postgres CDC -> null / Kafka vs pg_recvlogical; commit-to-Kafka latency
#   scripts/bench.sh sql        Kafka -> Postgres / MariaDB / SQLite vs COPY, LOAD DATA, sqlite3 .import
#   scripts/bench.sh scale      10, 50 and 200 pipelines in one process: start-up, idle RSS and CPU, busy rate
#   scripts/bench.sh wide       10 to 1,000 partitions, 10 to 500 tables (SQL sink, CDC)
#   scripts/bench.sh kafka-limit  Kafka -> Kafka vs raw librdkafka pipe-acked / pipe-acked-mask, interleaved
#   scripts/bench.sh avro       validate + encode to Confluent Avro vs Python's AvroSerializer; registry under wrk
#   scripts/bench.sh registry   the registry with 50k-field schemas: check time, reads meanwhile, memory per schema
#   scripts/bench.sh metrics    what metrics cost: generate -> null and Kafka -> Kafka with and without --metrics-addr
#   scripts/bench.sh workers    generate -> Wasm PII mask (Rust, Python) -> null with 1 and 2 transform workers
#   scripts/bench.sh compare REV [engine wasm avro kafka cdc]
#                               before/after: the release binary of REV and of the
#                               working tree, run by run on the same cases
# The Kafka peers come from ../shared/peers (override with FLOWGATE_PEERS).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh
if [[ "${1:-}" == compare ]]; then
  rev="${2:?usage: scripts/bench.sh compare REV [case...]}"
  shift 2
  before="$CARGO_TARGET_DIR/compare/flowgate-$(git rev-parse --short "$rev")"
  # The plugins as built at REV: a plugin speaks the contract of its tree.
  export FLOWGATE_PLUGINS_BEFORE="$CARGO_TARGET_DIR/compare/plugins-$(git rev-parse --short "$rev")"
  if [[ ! -x "$before" || ! -d "$FLOWGATE_PLUGINS_BEFORE" ]]; then
    tree="$(mktemp -d)"
    git worktree add --detach -f "$tree" "$rev" >/dev/null
    if [[ ! -x "$before" ]]; then
      (cd "$tree" && cargo build --release --locked --bin flowgate)
      mkdir -p "$(dirname "$before")"
      cp "$CARGO_TARGET_DIR/release/flowgate" "$before"
    fi
    (cd "$tree" && FLOWGATE_PLUGINS="$FLOWGATE_PLUGINS_BEFORE" bash scripts/build-plugins.sh)
    git worktree remove --force "$tree"
  fi
  cargo build --release --locked --bin flowgate
  bash scripts/build-plugins.sh
  exec python3 scripts/bench_compare.py "$before" "$FLOWGATE_BIN" "$@"
fi
cargo build --release --locked
cargo build --release --locked -p flowgate-wasm --example wasm_bench
cargo build --release --locked -p flowgate-avro --example avro_bench
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
bash scripts/build-plugins.sh
export FLOWGATE_PEERS="${FLOWGATE_PEERS:-$(cd .. && pwd)/shared/peers}"
if [[ -d "$FLOWGATE_PEERS/rawkafka" ]]; then
  CARGO_TARGET_DIR="$CARGO_TARGET_DIR/peers" cargo build --release --quiet --manifest-path "$FLOWGATE_PEERS/rawkafka/Cargo.toml"
  "$FLOWGATE_TOOLS/venv/bin/python" -m pip install -q --disable-pip-version-check aiokafka==0.14.0 kafka-python==3.0.12
fi
exec python3 scripts/bench.py "$@"
