//! The YAML contract of the `postgres_cdc` source.

use std::collections::BTreeMap;
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
    /// Tables to capture, `schema.table` or `table` (schema `public`). Names
    /// are taken as written, case included (`public.MixedCase`); SQL quotes
    /// are accepted too (`public."MixedCase"`, `"my.schema"."t"`). Flowgate
    /// creates the publication for them if it does not exist.
    #[serde(default)]
    #[schemars(extend("items" = {"type": "string", "format": "postgres-table", "pattern": TABLE_PATTERN}))]
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
    /// How the tables' current rows are read: a mode (`snapshot: incremental`)
    /// or a mode with its settings (`snapshot: {mode: incremental, workers: 2,
    /// chunk_size: 16384}`). Modes: `incremental` (default): stream at once and
    /// read the tables in key-ordered chunks meanwhile (no long transaction;
    /// a restart goes on from the last chunk acknowledged; the tables need
    /// primary keys or `keys`); `initial`: copy the rows through the slot's
    /// exported snapshot first (one point in time across all tables, keyless
    /// tables too; an interrupted copy is taken again from the start), then
    /// stream; `never`: stream changes only; `initial_only`: copy the rows
    /// through an exported snapshot and stop.
    #[serde(default)]
    #[schemars(with = "SnapshotForm")]
    pub snapshot: Snapshot,
    /// After each delete, also emit a record with the same key and an empty value
    /// (a Kafka tombstone, so that log compaction removes the key).
    #[serde(default)]
    pub tombstones: bool,
    /// The record key of a table, by column, where its primary key (or replica
    /// identity index) is not the key wanted, or it has none (a table under
    /// `REPLICA IDENTITY FULL`): `{"shop.events": [device_id, seq]}`, like
    /// Debezium's `message.key.columns`. Without one, such a table's records
    /// have no key, and a warning says so at start.
    #[serde(default)]
    #[schemars(extend("propertyNames" = {"format": "postgres-table", "pattern": TABLE_PATTERN}))]
    pub keys: BTreeMap<String, Vec<String>>,
    /// The schema of the source's state in the source database (default
    /// `flowgate`): a table `cdc_slots` with one row per slot, saying whether
    /// its snapshot is written. Kept with the slot, so a restart from any
    /// directory or machine continues correctly. Created when missing (the
    /// user needs `CREATE` on the database, or the schema made for it).
    #[serde(default = "default_state_schema")]
    pub state_schema: String,
}

fn default_state_schema() -> String {
    "flowgate".to_string()
}

/// A table name in `tables` and `keys`: one or two parts, each plain (no dot,
/// no quote) or SQL-quoted.
const TABLE_PATTERN: &str = r#"^("([^"]|"")+"|[^."]+)(\.("([^"]|"")+"|[^."]+))?$"#;

#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    #[default]
    Incremental,
    Initial,
    Never,
    InitialOnly,
}

/// The `snapshot` setting: a mode, and how incremental snapshots read.
#[derive(Clone, Copy, Debug, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// See `snapshot`.
    #[serde(default)]
    pub mode: SnapshotMode,
    /// Chunks read at once (default 1), each through a connection of its
    /// own; more than one splits a table into key ranges read side by side.
    /// At most this many chunks are written and not yet acknowledged, which
    /// is what a restart reads again.
    #[serde(default = "default_workers")]
    #[schemars(range(min = 1, max = 64))]
    pub workers: usize,
    /// Rows a chunk reads (default 16384); a chunk is held in memory until
    /// it is emitted (a reader reads the next meanwhile), so memory is about
    /// `3 x workers x chunk_size` rows.
    #[serde(default = "default_chunk_size")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub chunk_size: usize,
}

fn default_workers() -> usize {
    1
}

fn default_chunk_size() -> usize {
    16384
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot::from(SnapshotMode::default())
    }
}

impl From<SnapshotMode> for Snapshot {
    fn from(mode: SnapshotMode) -> Self {
        Snapshot { mode, workers: default_workers(), chunk_size: default_chunk_size() }
    }
}

impl PartialEq<SnapshotMode> for Snapshot {
    fn eq(&self, mode: &SnapshotMode) -> bool {
        self.mode == *mode
    }
}

/// What `snapshot` accepts, for the editors' schema.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Only its schema is used.
enum SnapshotForm {
    Mode(SnapshotMode),
    Settings(Snapshot),
}

// A mode alone or the settings, each with its own errors (an untagged enum
// would only say that neither matched).
impl<'de> Deserialize<'de> for Snapshot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Form;
        impl<'de> serde::de::Visitor<'de> for Form {
            type Value = Snapshot;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a snapshot mode (`incremental`, `initial`, `never`, `initial_only`) or its settings")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Snapshot, E> {
                use serde::de::IntoDeserializer;
                SnapshotMode::deserialize(s.into_deserializer()).map(Snapshot::from)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Snapshot, A::Error> {
                #[derive(Deserialize)]
                #[serde(remote = "Snapshot", deny_unknown_fields)]
                struct Settings {
                    #[serde(default)]
                    mode: SnapshotMode,
                    #[serde(default = "default_workers")]
                    workers: usize,
                    #[serde(default = "default_chunk_size")]
                    chunk_size: usize,
                }
                let s = Settings::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                if !(1..=64).contains(&s.workers) {
                    return Err(serde::de::Error::custom("`workers` is 1 to 64"));
                }
                if !(1..=1_000_000).contains(&s.chunk_size) {
                    return Err(serde::de::Error::custom("`chunk_size` is 1 to 1000000"));
                }
                Ok(s)
            }
        }
        d.deserialize_any(Form)
    }
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
            .field("keys", &self.keys)
            .field("state_schema", &self.state_schema)
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
    parse_table(table).map(drop)
}

/// `table` or `schema.table` as (schema, table), schema `public` by default.
/// A part in double quotes is taken without them (`""` is a quote, and dots
/// are part of the name); one without is taken as written.
pub fn parse_table(text: &str) -> Result<(String, String), String> {
    let bad = || format!("`{text}` is not `table` or `schema.table`");
    let mut parts = Vec::new();
    let mut rest = text;
    loop {
        let (part, after) = match rest.strip_prefix('"') {
            Some(quoted) => {
                let mut name = String::new();
                let mut chars = quoted.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((i, '"')) if quoted[i + 1..].starts_with('"') => {
                            name.push('"');
                            chars.next();
                        }
                        Some((i, '"')) => break i + 1,
                        Some((_, c)) => name.push(c),
                        None => return Err(format!("{}: a quote is not closed", bad())),
                    }
                };
                (name, &quoted[end..])
            }
            None => {
                let end = rest.find('.').unwrap_or(rest.len());
                if rest[..end].contains('"') {
                    return Err(format!("{}: quote a whole name, as in `\"MixedCase\"`", bad()));
                }
                (rest[..end].to_string(), &rest[end..])
            }
        };
        if part.is_empty() {
            return Err(bad());
        }
        parts.push(part);
        match after.strip_prefix('.') {
            Some(next) => rest = next,
            None if after.is_empty() => break,
            None => return Err(bad()),
        }
    }
    match <[String; 2]>::try_from(parts) {
        Ok([schema, table]) => Ok((schema, table)),
        Err(parts) if parts.len() == 1 => Ok(("public".to_string(), parts.into_iter().next().unwrap_or_default())),
        Err(_) => Err(bad()),
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
        let tables = self.qualified_tables();
        for (name, columns) in &self.keys {
            match parse_table(name) {
                Err(e) => out.push(format!("`keys`: {e}")),
                Ok(t) if !self.tables.is_empty() && !tables.contains(&t) => {
                    out.push(format!("`keys` names `{name}`, which is not in `tables`"))
                }
                Ok(_) if columns.is_empty() => out.push(format!("`keys` gives `{name}` no columns")),
                Ok(_) => {}
            }
        }
        out
    }

    /// The tables as (schema, table); names that do not parse are left out
    /// (they are refused when the file is checked).
    pub fn qualified_tables(&self) -> Vec<(String, String)> {
        self.tables.iter().filter_map(|t| parse_table(t).ok()).collect()
    }

    /// The `keys` by (schema, table).
    pub fn key_overrides(&self) -> Vec<((String, String), Vec<String>)> {
        self.keys.iter().filter_map(|(t, columns)| Some((parse_table(t).ok()?, columns.clone()))).collect()
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
    fn table_names_are_taken_as_written_or_unquoted() {
        let t = |s: &str| parse_table(s);
        assert_eq!(t("orders"), Ok(("public".into(), "orders".into())));
        assert_eq!(t("public.MixedCase"), Ok(("public".into(), "MixedCase".into())));
        assert_eq!(t(r#"public."MixedCase""#), Ok(("public".into(), "MixedCase".into())));
        assert_eq!(t(r#""my.schema"."a""b""#), Ok(("my.schema".into(), r#"a"b"#.into())));
        for bad in ["", "a.b.c", "a.", r#""open"#, r#"a"b"#, r#""x"y"#, r#""""#] {
            assert!(t(bad).is_err(), "{bad}");
        }
        let pattern = regex_lite::Regex::new(TABLE_PATTERN).unwrap();
        for good in ["orders", "public.MixedCase", r#"public."MixedCase""#, r#""my.schema"."a""b""#] {
            assert!(pattern.is_match(good), "{good}");
        }
    }

    #[test]
    fn keys_name_captured_tables_and_columns() {
        let c = config(
            r#"{"url": "postgres://db/shop", "tables": ["shop.events"],
                "keys": {"shop.events": ["device", "seq"], "shop.other": ["id"], "public.e": []}}"#,
        );
        let problems = c.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("`shop.other`, which is not in `tables`")), "{problems:?}");
        assert_eq!(c.key_overrides()[1], (("shop".into(), "events".into()), vec!["device".into(), "seq".into()]));
    }

    #[test]
    fn snapshot_is_a_mode_or_its_settings() {
        let snapshot = |v: &str| {
            serde_json::from_str::<PostgresCdcConfig>(&format!(r#"{{"url": "postgres://db/x", "snapshot": {v}}}"#))
                .map(|c| c.snapshot)
                .map_err(|e| e.to_string())
        };
        assert_eq!(config(r#"{"url": "postgres://db/x"}"#).snapshot, Snapshot::from(SnapshotMode::Incremental));
        assert_eq!(snapshot(r#""initial""#), Ok(Snapshot::from(SnapshotMode::Initial)));
        assert_eq!(
            snapshot(r#"{"workers": 2}"#),
            Ok(Snapshot { mode: SnapshotMode::Incremental, workers: 2, chunk_size: 16384 })
        );
        assert_eq!(
            snapshot(r#"{"mode": "never", "chunk_size": 10}"#),
            Ok(Snapshot { mode: SnapshotMode::Never, workers: 1, chunk_size: 10 })
        );
        assert!(snapshot(r#""sometimes""#).unwrap_err().contains("unknown variant `sometimes`"));
        assert!(snapshot(r#"{"workerz": 2}"#).unwrap_err().contains("unknown field `workerz`"));
        assert!(snapshot(r#"{"workers": 0}"#).unwrap_err().contains("`workers` is 1 to 64"));
        assert!(snapshot("3").unwrap_err().contains("a snapshot mode"));
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
