#!/usr/bin/env bash
# Usage: build.sh OUT.wasm    (any cwd; needs scripts/guest-toolchains.sh run once)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec node "$here/../../../wit/guest/js/build.mjs" "$here/filter.js" "${1:?usage: build.sh OUT.wasm}"
