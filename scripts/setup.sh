#!/usr/bin/env bash
# Installs what the tests need on a fresh machine of the project's kind (Debian,
# Rust stable, Python 3). Idempotent: does nothing that is already done.
set -euo pipefail

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
command -v sqlite3 >/dev/null || need_apt+=(sqlite3)
command -v npm >/dev/null || need_apt+=(nodejs npm)
python3 -c 'import ensurepip' 2>/dev/null || need_apt+=(python3-venv)
# libpq to build the replication client against; a PostgreSQL server, of which
# each Postgres test starts a private instance (scripts/postgres-local.sh).
[[ -e /usr/include/postgresql/libpq-fe.h ]] || need_apt+=(libpq-dev)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
# MariaDB, of which each MySQL-sink test starts a private server.
command -v mariadbd >/dev/null || [[ -x /usr/sbin/mariadbd ]] || need_apt+=(mariadb-server)
# C plugins (examples/*/c): clang, wasm-ld and wasi-libc, with compiler-rt for wasm32.
command -v clang >/dev/null || need_apt+=(clang)
command -v wasm-ld >/dev/null || need_apt+=(lld)
[[ -e /usr/lib/wasm32-wasi/libc.a ]] || need_apt+=(wasi-libc)
compgen -G '/usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a' >/dev/null ||
  need_apt+=(libclang-rt-14-dev-wasm32)
# A real browser for the status page's test, and a real Prometheus (with
# promtool) for the shipped alert rules and the scrape test.
command -v chromium >/dev/null || need_apt+=(chromium)
command -v prometheus >/dev/null && command -v promtool >/dev/null || need_apt+=(prometheus)
if ((${#need_apt[@]})); then
  echo "setup: installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "setup: adding the wasm32-wasip2 Rust target"
  rustup target add wasm32-wasip2
fi

# Python and JavaScript plugin toolchains (componentize-py, componentize-js, jco).
bash "$(dirname "$0")/guest-toolchains.sh"

# The Kafka-protocol test broker (tansu) and a local S3 endpoint for it.
bash "$(dirname "$0")/broker-tools.sh"

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
