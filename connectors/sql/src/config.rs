//! The YAML contract of the database sinks `postgres`, `mysql` and `sqlite`.

use std::collections::BTreeMap;

use flowgate_sdk::{Problem, RecordTemplate};
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

/// What a record does to the table.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Each record is a new row.
    #[default]
    Insert,
    /// Each record is the row with its `key`: inserted, or replacing the row.
    Upsert,
    /// Each record is a Debezium-style change event (`op`, `before`, `after`):
    /// `c`/`r` upsert `after`, `u` updates (moving the row when its key
    /// changed), `d` deletes `before`, `t` empties the table.
    Cdc,
}

/// Whether the source position is stored with the rows.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Rows are committed, then the source position advances: after a crash the
    /// last batches may be applied again.
    #[default]
    AtLeastOnce,
    /// The source position (Kafka offsets, Postgres LSN) is committed in the same
    /// transaction as the rows, in table `flowgate_source_positions`; on restart the
    /// source resumes from it, so nothing is applied twice.
    EffectivelyOnce,
}

/// What happens to a record with fields the table has no column for.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnknownFields {
    /// The record goes to the error policy, with the fields that have no column.
    #[default]
    DeadLetter,
    /// The pipeline stops at the first such record.
    Fail,
    /// The fields are left out and the rest of the row is written.
    Ignore,
}

/// Which record fields fill which columns.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(untagged)]
pub enum Columns {
    /// Columns filled from the fields of the same name.
    Names(Vec<String>),
    /// `column: field`, where a field may be a dotted path into nested objects.
    Map(BTreeMap<String, String>),
}

/// Writes records to a table, one transaction per batch.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlSinkConfig {
    /// `postgres://user:password@host/db`, `mysql://user:password@host/db`, or a
    /// SQLite file (a path or a `sqlite:` URL; created when missing).
    pub url: String,
    /// The table: fixed, or filled from each record, e.g. `${meta.table}` for
    /// one table per captured source table.
    pub table: RecordTemplate,
    /// `insert` (default), `upsert` or `cdc`.
    #[serde(default)]
    pub mode: Mode,
    /// The key columns, for `upsert` and `cdc`. In `cdc` mode they default to the
    /// fields of the record's key (`{"id": 1}`).
    #[serde(default)]
    pub key: Vec<String>,
    /// The columns to fill: names (each from the field of the same name) or a
    /// map of column to field. Default: each record's fields (the `after` row
    /// in `cdc` mode) that the table has.
    #[serde(default)]
    pub columns: Option<Columns>,
    /// Create a missing table from the first record: a column per field, typed
    /// from its JSON value, with the key as primary key.
    #[serde(default)]
    pub create_table: bool,
    /// `at_least_once` (default) or `effectively_once`.
    #[serde(default)]
    pub delivery: Delivery,
    /// SQLite only: `full` (default) or `normal`.
    #[serde(default)]
    pub synchronous: Synchronous,
    /// A record field with no column of that exact name (names are matched
    /// exactly, case included, in every database): `dead_letter` (default),
    /// `fail` or `ignore`.
    #[serde(default)]
    pub unknown_fields: UnknownFields,
    /// For a `table` filled from records: the names it may take, as patterns
    /// where `*` is any run of characters but `.` and `?` any one. Default: the
    /// template with each field as `*` (`orders_*` for `orders_${value.region}`).
    /// Flowgate's own tables (`flowgate_*`) and the databases' system schemas and
    /// tables are never targets.
    #[serde(default)]
    pub tables_allowed: Option<Vec<String>>,
}

impl SqlSinkConfig {
    /// Problems of the settings as written for sink `kind` (`postgres`, `mysql`,
    /// `sqlite`).
    pub fn problems(&self, kind: &str) -> Vec<Problem> {
        let problem =
            |field: &str, message: String, help: Option<String>| Problem { at: vec![field.into()], message, help };
        let mut out = Vec::new();
        let url_kind = if self.url.starts_with("postgres://") || self.url.starts_with("postgresql://") {
            "postgres"
        } else if self.url.starts_with("mysql://") || self.url.starts_with("mariadb://") {
            "mysql"
        } else if self.url.contains("://") {
            "other"
        } else {
            "sqlite"
        };
        if url_kind != kind {
            let example = match kind {
                "postgres" => "postgres://user:password@host:5432/database",
                "mysql" => "mysql://user:password@host:3306/database",
                _ => "a file path such as data/out.db, or sqlite:data/out.db",
            };
            out.push(problem("url", format!("not a {kind} URL"), Some(format!("expected {example}"))));
        }
        if self.mode == Mode::Upsert && self.key.is_empty() {
            out.push(problem("mode", "`mode: upsert` needs the `key` columns".into(), Some("e.g. `key: [id]`".into())));
        }
        if self.synchronous != Synchronous::Full && kind != "sqlite" {
            out.push(problem("synchronous", "`synchronous` is a SQLite setting".into(), None));
        }
        let dialect = crate::dialect::dialect_of(&self.url);
        if let Some(table) = self.table.fixed()
            && let Err(reason) = crate::names::check_table(dialect, table)
        {
            out.push(problem("table", reason, None));
        }
        if self.table.fixed().is_some() && self.tables_allowed.is_some() {
            out.push(problem(
                "tables_allowed",
                "`tables_allowed` is for a `table` filled from records, such as `orders_${value.region}`".into(),
                None,
            ));
        }
        let columns = match &self.columns {
            Some(Columns::Names(n)) => n.iter().collect::<Vec<_>>(),
            Some(Columns::Map(m)) => m.keys().collect(),
            None => Vec::new(),
        };
        let named = self.key.iter().map(|k| ("key", k)).chain(columns.into_iter().map(|c| ("columns", c)));
        for (field, name) in named {
            if let Err(reason) = dialect.check_name(name) {
                out.push(problem(field, format!("column `{}`: {reason}", name.escape_debug()), None));
            }
        }
        out
    }
}
