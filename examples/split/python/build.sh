#!/usr/bin/env bash
# Usage: build.sh OUT.wasm    (any cwd; needs scripts/guest-toolchains.sh run once)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../../../wit/guest/python/build.sh" "$here" "${1:?usage: build.sh OUT.wasm}"
