#!/usr/bin/env bash
# Builds every example plugin in every language, and the test plugins, into
# $FLOWGATE_PLUGINS (default $CARGO_TARGET_DIR/plugins) as LANG-EXAMPLE.wasm
# (rust-pii-mask.wasm, python-pii-mask.wasm, js-pii-mask.wasm, ...). An output
# newer than all of its sources is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
out=$FLOWGATE_PLUGINS
mkdir -p "$out"

stale() { # output sources...
  [ ! -f "$1" ] || [ -n "$(find "${@:2}" -type f -newer "$1" \
    -not -path '*/target/*' -not -path '*/node_modules/*' -not -path '*/__pycache__/*' 2>/dev/null | head -1)" ]
}

for dir in examples/*/*/; do
  dir=${dir%/}
  lang=$(basename "$dir")
  name=$(basename "$(dirname "$dir")")
  [ -x "$dir/build.sh" ] || continue
  target="$out/$lang-$name.wasm"
  if stale "$target" "$dir" wit; then
    echo "build-plugins: $target"
    start=$SECONDS
    "$dir/build.sh" "$target"
    echo "build-plugins:   $((SECONDS - start))s, $(($(stat -c %s "$target") / 1024)) KiB"
  fi
done

cargo build --quiet --release --target wasm32-wasip2 --manifest-path tests/plugins/Cargo.toml
for p in hostile identity forbidden_import old_contract misanswer malformed; do
  cp "$CARGO_TARGET_DIR/wasm32-wasip2/release/$p.wasm" "$out/$p.wasm"
done
