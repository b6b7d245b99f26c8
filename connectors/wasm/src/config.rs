use std::collections::BTreeMap;
use std::path::PathBuf;

use flowgate_sdk::{ByteSize, HumanDuration};
use schemars::JsonSchema;
use serde::Deserialize;

fn default_timeout() -> HumanDuration {
    HumanDuration::from_millis(250)
}

fn default_max_memory() -> ByteSize {
    ByteSize(64 << 20)
}

/// A transform plugin: a WebAssembly component built against
/// `wit/transform.wit` (`flowgate:transform@0.1.0`), in any language.
///
/// The plugin runs sandboxed: no files, no network, no environment (except the
/// variables given in `env`), no arguments; what it prints goes to Flowgate's
/// log. A trap, a batch running past `timeout` or memory growing past
/// `max_memory` fails only the records that cause it: the instance is replaced
/// and those records go to the error policy.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WasmConfig {
    /// Path of the component (`.wasm`).
    pub path: PathBuf,
    /// Settings for the plugin, handed to its `init` as JSON (`{}` when omitted).
    #[serde(default)]
    pub config: serde_json::Value,
    /// Longest time the plugin may spend on one batch (default 250ms).
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Most memory the plugin may use (default 64MiB).
    #[serde(default = "default_max_memory")]
    pub max_memory: ByteSize,
    /// Environment variables the plugin may read; it sees no others.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}
