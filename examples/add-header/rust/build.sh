#!/usr/bin/env bash
# Usage: build.sh OUT.wasm    (any cwd; needs rustup target add wasm32-wasip2)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../../../wit/guest/rust/build.sh" "$here" "${1:?usage: build.sh OUT.wasm}"
