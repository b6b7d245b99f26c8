use schemars::JsonSchema;
use serde::Deserialize;

/// How hard SQLite works to keep a committed batch (its `synchronous` setting).
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    /// Every acknowledged batch survives a power loss.
    #[default]
    Full,
    /// Acknowledged batches survive a crash of Flowgate; a power loss may take the
    /// last few.
    Normal,
}

/// Inserts the top-level fields of JSON records into a SQLite table, one
/// transaction per batch.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqliteSinkConfig {
    /// Database file, as a path or a `sqlite:` URL; created when missing.
    pub url: String,
    /// Table to insert into.
    pub table: String,
    /// Columns to fill, each from the record field of the same name (a missing
    /// field gives NULL). The fields of the first record when omitted.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Create the table when it does not exist, with the columns above.
    #[serde(default)]
    pub create_table: bool,
    /// `full` (default) or `normal`.
    #[serde(default)]
    pub synchronous: Synchronous,
}
