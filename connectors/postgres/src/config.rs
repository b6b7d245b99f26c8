//! The YAML contract of the `postgres_cdc` source.

use std::fmt;

use schemars::JsonSchema;
use serde::Deserialize;

/// Streams row changes of Postgres tables through logical replication (`pgoutput`).
#[derive(Clone, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PostgresCdcConfig {
    /// Connection URL, `postgres://user:password@host:5432/database`. The user needs
    /// the `REPLICATION` attribute and `SELECT` on the tables (and ownership of them
    /// or `CREATE` on the database if Flowgate is to create the publication).
    #[schemars(extend("format" = "postgres-url", "pattern" = "^postgres(ql)?://"))]
    pub url: String,
    /// Tables to capture, `schema.table` or `table` (schema `public`). Flowgate
    /// creates the publication for them if it does not exist.
    #[serde(default)]
    #[schemars(extend("items" = {"type": "string", "format": "postgres-table", "pattern": "^[^.]+(\\.[^.]+)?$"}))]
    pub tables: Vec<String>,
    /// The publication to stream. Without `tables` it must exist already; with
    /// `tables` it is created when missing. Default: the slot's name.
    #[serde(default)]
    pub publication: Option<String>,
    /// Replication slot name (lower-case letters, digits, `_`). Created when
    /// missing. Default: `flowgate_<pipeline name>`.
    #[serde(default)]
    #[schemars(extend("format" = "postgres-slot", "pattern" = "^[a-z0-9_]{1,63}$"))]
    pub slot: Option<String>,
    /// `initial` (default): copy the tables' current rows, then stream changes;
    /// `never`: stream changes only; `initial_only`: copy the rows and stop.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// After each delete, also emit a record with the same key and an empty value
    /// (a Kafka tombstone, so that log compaction removes the key).
    #[serde(default)]
    pub tombstones: bool,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    #[default]
    Initial,
    Never,
    InitialOnly,
}

impl fmt::Debug for PostgresCdcConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresCdcConfig")
            .field("url", &redact_url(&self.url))
            .field("tables", &self.tables)
            .field("publication", &self.publication)
            .field("slot", &self.slot)
            .field("snapshot", &self.snapshot)
            .field("tombstones", &self.tombstones)
            .finish()
    }
}

/// The `postgres-slot` format: what Postgres accepts as a slot name.
pub fn check_slot(slot: &str) -> Result<(), String> {
    let ok = !slot.is_empty()
        && slot.len() <= 63
        && slot.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok { Ok(()) } else { Err(format!("`{slot}` is not a slot name: use 1 to 63 lower-case letters, digits or `_`")) }
}

/// The `postgres-url` format.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(())
    } else {
        Err("expected a URL such as `postgres://user:password@host:5432/database`".to_string())
    }
}

/// The `postgres-table` format: `table` or `schema.table`.
pub fn check_table(table: &str) -> Result<(), String> {
    if table.is_empty() || table.split('.').count() > 2 || table.split('.').any(str::is_empty) {
        Err(format!("`{table}` is not `table` or `schema.table`"))
    } else {
        Ok(())
    }
}

pub use flowgate_sdk::redact_url;

impl PostgresCdcConfig {
    pub fn slot_name(&self, pipeline: &str) -> String {
        self.slot.clone().unwrap_or_else(|| {
            let cleaned: String = pipeline
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
                .collect();
            let mut name = format!("flowgate_{cleaned}");
            name.truncate(63);
            name
        })
    }

    pub fn publication_name(&self, slot: &str) -> String {
        self.publication.clone().unwrap_or_else(|| slot.to_string())
    }

    /// Problems that concern more than one field (single fields are checked
    /// by their `format`).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.tables.is_empty() && self.publication.is_none() {
            out.push("list the `tables` to capture, or name an existing `publication`".to_string());
        }
        out
    }

    /// The tables as (schema, table).
    pub fn qualified_tables(&self) -> Vec<(String, String)> {
        self.tables
            .iter()
            .map(|t| match t.split_once('.') {
                Some((s, n)) => (s.to_string(), n.to_string()),
                None => ("public".to_string(), t.clone()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // JSON keeps the test free of a YAML dependency; the root crate tests the YAML.
    fn config(json: &str) -> PostgresCdcConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn passwords_never_show_in_debug_output() {
        let c = config(r#"{"url": "postgres://app:s3cret@db:5432/shop", "tables": ["orders"]}"#);
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("postgres://app:***@db:5432/shop"), "{shown}");
        assert_eq!(redact_url("postgres://db/shop"), "postgres://db/shop");
        assert_eq!(
            redact_url("postgres://u@db/x?sslmode=require&password=1"),
            "postgres://u@db/x?sslmode=require&password=***"
        );
    }

    #[test]
    fn names_default_from_the_pipeline() {
        let c = config(r#"{"url": "postgres://db/shop", "tables": ["orders", "audit.log"]}"#);
        assert_eq!(c.slot_name("Orders-CDC"), "flowgate_orders_cdc");
        assert_eq!(c.publication_name("flowgate_orders_cdc"), "flowgate_orders_cdc");
        assert_eq!(c.qualified_tables(), vec![("public".into(), "orders".into()), ("audit".into(), "log".into())]);
        assert!(c.problems().is_empty());
    }

    #[test]
    fn fields_are_checked() {
        let c = config(r#"{"url": "postgres://db/shop"}"#);
        assert_eq!(c.problems().len(), 1);
        assert!(check_slot("Bad-Slot").is_err());
        assert!(check_slot(&"s".repeat(64)).is_err());
        assert!(check_slot("flowgate_orders_2").is_ok());
        assert!(check_url("mysql://db").is_err());
        assert!(check_url("postgresql://u@h/db").is_ok());
        assert!(check_table("a.b.c").is_err());
        assert!(check_table("a.").is_err());
        assert!(check_table("shop.orders").is_ok());
    }
}
