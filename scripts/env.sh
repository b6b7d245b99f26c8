# Sourced by the other scripts: one shared build directory outside the clone, so
# repeated runs and fresh clones on the same machine reuse compiled dependencies.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flowgate-target}"
FLOWGATE_BIN="$CARGO_TARGET_DIR/release/flowgate"
export FLOWGATE_BIN
# Built plugins (scripts/build-plugins.sh), found by the tests and benchmarks here.
export FLOWGATE_PLUGINS="${FLOWGATE_PLUGINS:-$CARGO_TARGET_DIR/plugins}"
# Toolchains and test services (scripts/guest-toolchains.sh, scripts/broker-tools.sh).
export FLOWGATE_TOOLS="${FLOWGATE_TOOLS:-$HOME/.cache/flowgate-tools}"
