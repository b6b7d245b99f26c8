#!/usr/bin/env bash
# Builds Flowgate, runs pipelines/quickstart.yaml (synthetic orders -> SQLite,
# no external service) and shows what landed in the table.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

cargo build --release --locked
rm -f quickstart.db quickstart.db-wal quickstart.db-shm quickstart-dead-letters.jsonl
"$FLOWGATE_BIN" run --state-dir .flowgate/state pipelines/quickstart.yaml

python3 - <<'PY'
import sqlite3
db = sqlite3.connect("quickstart.db")
rows, customers = db.execute("SELECT count(*), count(DISTINCT customer) FROM orders").fetchone()
print(f"\nquickstart.db: table orders has {rows} rows from {customers} customers")
print("\n  currency  orders    total amount")
for cur, n, total in db.execute("SELECT currency, count(*), round(sum(amount), 2) FROM orders GROUP BY 1 ORDER BY 1"):
    print(f"  {cur:8}  {n:6}  {total:14,.2f}")
print("\nfirst rows:")
cols = [d[1] for d in db.execute("PRAGMA table_info(orders)")]
print("  " + " | ".join(cols))
for row in db.execute("SELECT * FROM orders ORDER BY id LIMIT 3"):
    print("  " + " | ".join(str(v) for v in row))
PY
