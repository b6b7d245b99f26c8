use std::path::PathBuf;

use flowgate_sdk::{ByteSize, HumanDuration};
use schemars::JsonSchema;
use serde::Deserialize;

/// How each input line becomes a record.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LineFormat {
    /// Each line must be one JSON value; a line that is not goes to the error policy.
    #[default]
    Json,
    /// Each line is taken as it is.
    Text,
}

/// Reads a JSON-lines file. Its position is kept in the state directory, so a
/// restarted pipeline continues after the last line the sink acknowledged.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Path of the file to read.
    pub path: PathBuf,
    /// Keep reading as the file grows, like `tail -f`; otherwise stop at its end.
    #[serde(default)]
    pub follow: bool,
    /// `json` (default) or `text`.
    #[serde(default)]
    pub format: LineFormat,
    /// The longest line taken as a record (default 16MiB). A longer one goes to
    /// the error policy with its size and first bytes, and is never held whole.
    #[serde(default = "default_max_record_size")]
    pub max_record_size: ByteSize,
}

/// Records are held whole, in a few copies, on their way through: a limit keeps
/// one hostile line from taking the process's memory.
pub fn default_max_record_size() -> ByteSize {
    ByteSize(16 << 20)
}

/// Reads JSON lines from standard input until it closes. Standard input cannot be
/// replayed, so records in flight when the process dies are lost with it; use a
/// file source when that matters.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinConfig {
    /// `json` (default) or `text`.
    #[serde(default)]
    pub format: LineFormat,
    /// The longest line taken as a record (default 16MiB), as for `file`.
    #[serde(default = "default_max_record_size")]
    pub max_record_size: ByteSize,
}

impl Default for StdinConfig {
    fn default() -> Self {
        StdinConfig { format: LineFormat::default(), max_record_size: default_max_record_size() }
    }
}

/// What a line of output holds.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// The record's value, as it is.
    #[default]
    Value,
    /// The whole record as JSON: key, value, headers, timestamp and source.
    Record,
}

const fn yes() -> bool {
    true
}

/// Appends each record as one line.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Path of the file to append to; created when missing.
    pub path: PathBuf,
    /// Sync the file to disk before acknowledging a batch (default true), so that
    /// acknowledged records survive a power loss, not only a crash of Flowgate.
    #[serde(default = "yes")]
    pub fsync: bool,
    /// `value` (default) or `record`.
    #[serde(default)]
    pub format: OutputFormat,
}

/// Writes each record as one line to standard output.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    /// `value` (default) or `record`.
    #[serde(default)]
    pub format: OutputFormat,
}

/// Discards records (benchmarks, dry runs).
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NullSinkConfig {
    /// Pause this long per batch, to simulate a slow sink (backpressure tests).
    #[serde(default)]
    pub delay: Option<HumanDuration>,
}
