#!/usr/bin/env bash
# A local PostgreSQL for trying pipelines/postgres-to-kafka.yaml: a private
# server on 127.0.0.1:5432 (or PORT) with `wal_level = logical`, its data under
# ~/.cache/flowgate-tools/postgres, and a `shop` schema (customers, orders) with
# a few rows. Runs in the foreground; Ctrl-C stops it. Uses the machine's
# PostgreSQL binaries (scripts/setup.sh installs them).
#   scripts/postgres-local.sh [PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
port="${1:-5432}"
bin="${FLOWGATE_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}"
dir="$FLOWGATE_TOOLS/postgres"
as_pg=()
if [[ $EUID -eq 0 ]]; then as_pg=(runuser -u postgres --); fi
if [[ ! -d "$dir/data" ]]; then
  mkdir -p "$dir" && chmod 777 "$dir"
  "${as_pg[@]}" "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
  cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
CONF
fi
"${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -o "-p $port" -l "$dir/server.log" -w start >/dev/null
trap '"${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null' EXIT INT TERM
"$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -qX -v ON_ERROR_STOP=1 <<'SQL'
CREATE SCHEMA IF NOT EXISTS shop;
CREATE TABLE IF NOT EXISTS shop.customers (id int PRIMARY KEY, name text NOT NULL, email text);
CREATE TABLE IF NOT EXISTS shop.orders (id bigserial PRIMARY KEY, customer int REFERENCES shop.customers,
  amount numeric(10,2) NOT NULL, status text NOT NULL DEFAULT 'new', placed_at timestamptz NOT NULL DEFAULT now());
INSERT INTO shop.customers SELECT g, 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 100) g
  ON CONFLICT DO NOTHING;
INSERT INTO shop.orders (customer, amount) SELECT 1 + g % 100, g * 1.25 FROM generate_series(1, 1000) g
  WHERE NOT EXISTS (SELECT 1 FROM shop.orders);
SQL
echo "postgres-local: postgres://postgres@127.0.0.1:$port/postgres (wal_level = logical), tables shop.customers, shop.orders"
echo "postgres-local: try  psql -h 127.0.0.1 -p $port -U postgres -c \"UPDATE shop.orders SET status = 'paid' WHERE id < 10\""
while true; do sleep 3600; done
