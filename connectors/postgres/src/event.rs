//! Change events in the Debezium envelope, so that consumers written for
//! Debezium's Postgres connector read them unchanged:
//! `{"before", "after", "source": {..., "db", "schema", "table", "txId", "lsn",
//! "ts_ms", "snapshot"}, "op", "ts_ms"}`; the key is the primary key columns as
//! a JSON object.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use flowgate_sdk::{Metadata, Record};
use pg_walstream::{ColumnValue, RowData};

use crate::decode::{Kind, write_str, write_value};
use crate::table::{Column, Table};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Create,
    Update,
    Delete,
    Truncate,
}

impl Op {
    fn code(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Truncate => "t",
        }
    }
}

/// What every event of one read shares.
pub struct Origin<'a> {
    pub pipeline: &'a str,
    pub db: &'a str,
    /// When the change was committed (the snapshot's start for snapshot rows).
    pub commit_ms: i64,
    pub now_ms: i64,
    pub tx_id: Option<u32>,
    /// `source.snapshot` as Debezium writes it: `false` for a streamed
    /// change; for a row of the exported snapshot `first`, `true`, `last`
    /// (and `first_in_data_collection`/`last_in_data_collection` at each
    /// table's ends); `incremental` for one of an incremental snapshot.
    pub snapshot: &'static str,
}

/// Builds change records, reusing its buffers.
#[derive(Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// One change of `table`. `before` is the old row (its key columns, or all of
    /// it under `REPLICA IDENTITY FULL`); `after` the new one, where columns
    /// missing from it are unchanged TOAST values, taken from a FULL `before`.
    pub fn change(
        &mut self,
        origin: &Origin<'_>,
        table: &Table,
        op: Op,
        lsn: u64,
        before: Option<&RowData>,
        after: Option<&RowData>,
    ) -> Record {
        let b = &mut self.buf;
        b.clear();
        b.extend_from_slice(b"{\"before\":");
        match before {
            // The old row holds only the key columns unless the identity is FULL.
            Some(row) => write_row(b, table, row, None, "null"),
            None => b.extend_from_slice(b"null"),
        }
        b.extend_from_slice(b",\"after\":");
        match after {
            Some(row) => write_row(b, table, row, before.filter(|_| table.full_identity), UNAVAILABLE_JSON),
            None => b.extend_from_slice(b"null"),
        }
        write_source(b, origin, table, lsn);
        finish(b, origin, op);
        let value = Bytes::copy_from_slice(b);
        let key = after.or(before).and_then(|row| key_of(&mut self.buf, table, row, before));
        record(origin, table, lsn, key, value)
    }

    /// A snapshot row straight from its text values in table order (`None`:
    /// NULL), as [`change`](Self::change) writes it with `Op::Read`, without
    /// building a row first.
    pub fn read_row(
        &mut self,
        origin: &Origin<'_>,
        table: &Table,
        lsn: u64,
        values: &[Option<Cow<'_, [u8]>>],
    ) -> Record {
        let b = &mut self.buf;
        b.clear();
        b.extend_from_slice(b"{\"before\":null,\"after\":");
        write_text_object(b, table.columns.iter().zip(values));
        write_source(b, origin, table, lsn);
        finish(b, origin, Op::Read);
        let value = Bytes::copy_from_slice(b);
        let key = table.has_key().then(|| {
            b.clear();
            write_text_object(b, table.columns.iter().zip(values).filter(|(c, _)| c.key));
            Bytes::copy_from_slice(b)
        });
        record(origin, table, lsn, key, value)
    }

    /// A delete's tombstone: the key with an empty value.
    pub fn tombstone(delete: &Record) -> Record {
        Record { value: Bytes::new(), ..delete.clone() }
    }
}

/// The envelope's end: `op` and `ts_ms`.
fn finish(b: &mut Vec<u8>, origin: &Origin<'_>, op: Op) {
    b.extend_from_slice(b",\"op\":\"");
    b.extend_from_slice(op.code().as_bytes());
    b.extend_from_slice(b"\",\"ts_ms\":");
    write_int(b, origin.now_ms);
    b.push(b'}');
}

fn record(origin: &Origin<'_>, table: &Table, lsn: u64, key: Option<Bytes>, value: Bytes) -> Record {
    Record {
        key,
        value,
        headers: Vec::new(),
        timestamp: Some(origin.commit_ms),
        meta: meta(&table.schema, &table.name, lsn),
        schema: table.avro.clone(),
    }
}

fn write_source(b: &mut Vec<u8>, o: &Origin<'_>, table: &Table, lsn: u64) {
    b.extend_from_slice(b",\"source\":{\"version\":\"flowgate-");
    b.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    b.extend_from_slice(b"\",\"connector\":\"postgresql\",\"name\":");
    write_str(b, o.pipeline);
    b.extend_from_slice(b",\"ts_ms\":");
    write_int(b, o.commit_ms);
    b.extend_from_slice(b",\"snapshot\":\"");
    b.extend_from_slice(o.snapshot.as_bytes());
    b.push(b'"');
    b.extend_from_slice(b",\"db\":");
    write_str(b, o.db);
    b.extend_from_slice(b",\"schema\":");
    write_str(b, &table.schema);
    b.extend_from_slice(b",\"table\":");
    write_str(b, &table.name);
    b.extend_from_slice(b",\"txId\":");
    match o.tx_id {
        Some(x) => write_int(b, x),
        None => b.extend_from_slice(b"null"),
    }
    b.extend_from_slice(b",\"lsn\":");
    write_int(b, lsn);
    b.push(b'}');
}

fn write_int(b: &mut Vec<u8>, n: impl itoa::Integer) {
    b.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// What Debezium writes for a TOASTed value that an update did not change and
/// that the replica identity does not carry.
const UNAVAILABLE_JSON: &str = "\"__debezium_unavailable_value\"";

/// The columns (by index) [`Encoder::change`] writes a placeholder for:
/// unchanged TOAST values the replica identity does not carry.
pub fn left_out(table: &Table, before: Option<&RowData>, after: &RowData) -> Vec<usize> {
    if after.len() == table.columns.len() {
        return Vec::new();
    }
    let fallback = before.filter(|_| table.full_identity);
    let missing = |c: &Column| after.get(&c.name).is_none() && fallback.and_then(|f| f.get(&c.name)).is_none();
    table.columns.iter().enumerate().filter(|(_, c)| missing(c)).map(|(i, _)| i).collect()
}

/// The row as a JSON object over the table's columns, in table order; `missing`
/// (JSON) stands for columns in neither `row` nor `fallback`.
fn write_row(b: &mut Vec<u8>, table: &Table, row: &RowData, fallback: Option<&RowData>, missing: &str) {
    b.push(b'{');
    // A row of every column in table order (a snapshot's, an insert's) is
    // read in step; another (a key-only old row, one without unchanged TOAST
    // values) is looked up by name.
    let in_step = row.len() == table.columns.len()
        && row.iter().zip(&table.columns).all(|((name, _), col)| Arc::ptr_eq(name, &col.name) || **name == *col.name);
    let mut values = row.iter();
    for (i, col) in table.columns.iter().enumerate() {
        if i > 0 {
            b.push(b',');
        }
        b.extend_from_slice(&col.json_key);
        let value = if in_step {
            values.next().map(|(_, v)| v)
        } else {
            row.get(&col.name).or_else(|| fallback.and_then(|f| f.get(&col.name)))
        };
        match value {
            Some(v) => write_column(b, col.kind, v),
            None => b.extend_from_slice(missing.as_bytes()),
        }
    }
    b.push(b'}');
}

fn write_column(b: &mut Vec<u8>, kind: Kind, v: &ColumnValue) {
    match v {
        ColumnValue::Null => write_text(b, kind, None),
        ColumnValue::Text(t) => write_text(b, kind, Some(t)),
        ColumnValue::Binary(bytes) => {
            use base64::Engine as _;
            write_str(b, &base64::engine::general_purpose::STANDARD.encode(bytes));
        }
    }
}

/// `{"column": value, ...}` from columns and their values in text form.
fn write_text_object<'v>(b: &mut Vec<u8>, pairs: impl Iterator<Item = (&'v Column, &'v Option<Cow<'v, [u8]>>)>) {
    b.push(b'{');
    for (i, (col, v)) in pairs.enumerate() {
        if i > 0 {
            b.push(b',');
        }
        b.extend_from_slice(&col.json_key);
        write_text(b, col.kind, v.as_deref());
    }
    b.push(b'}');
}

/// A value in the server's text form (`None`: NULL).
fn write_text(b: &mut Vec<u8>, kind: Kind, v: Option<&[u8]>) {
    match v {
        None => b.extend_from_slice(b"null"),
        Some(t) => match std::str::from_utf8(t) {
            Ok(s) => write_value(b, kind, s),
            Err(_) => write_str(b, &String::from_utf8_lossy(t)),
        },
    }
}

/// `{"id": 1}` from the key columns, looked up in `row` and then in `old` (an
/// update that did not change the key sends it only in the new row).
fn key_of(buf: &mut Vec<u8>, table: &Table, row: &RowData, old: Option<&RowData>) -> Option<Bytes> {
    if !table.has_key() {
        return None;
    }
    buf.clear();
    buf.push(b'{');
    let mut first = true;
    for col in table.columns.iter().filter(|c| c.key) {
        if !first {
            buf.push(b',');
        }
        first = false;
        buf.extend_from_slice(&col.json_key);
        match row.get(&col.name).or_else(|| old.and_then(|o| o.get(&col.name))) {
            Some(v) => write_column(buf, col.kind, v),
            None => buf.extend_from_slice(b"null"),
        }
    }
    buf.push(b'}');
    Some(Bytes::copy_from_slice(buf))
}

/// A change's metadata: its table and the LSN it was read at.
pub(crate) fn meta(schema: &Arc<str>, table: &Arc<str>, lsn: u64) -> Metadata {
    Metadata::default()
        .with("schema", Arc::clone(schema))
        .with("table", Arc::clone(table))
        .with("lsn", i64::try_from(lsn).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn table() -> Table {
        Table::new(
            "public".into(),
            "orders".into(),
            false,
            [("id".into(), 23, -1, true), ("note".into(), 25, -1, false), ("doc".into(), 3802, -1, false)],
        )
    }

    fn row(cols: &[(&str, Option<&str>)]) -> RowData {
        RowData::from_pairs(cols.iter().map(|(n, v)| (*n, v.map_or(ColumnValue::Null, ColumnValue::text))).collect())
    }

    fn origin() -> Origin<'static> {
        Origin {
            pipeline: "p",
            db: "shop",
            commit_ms: 1_700_000_000_000,
            now_ms: 1_700_000_000_005,
            tx_id: Some(7),
            snapshot: "false",
        }
    }

    #[test]
    fn a_row_read_from_text_values_is_the_same_event_as_a_row() {
        let mut enc = Encoder::default();
        let o = Origin { snapshot: "incremental", tx_id: None, ..origin() };
        let row = row(&[("id", Some("1")), ("note", Some("a \"b\"\n\u{1}")), ("doc", None)]);
        let from_row = enc.change(&o, &table(), Op::Read, 5, None, Some(&row));
        let text = [Some(Cow::Borrowed(&b"1"[..])), Some(Cow::Borrowed(&b"a \"b\"\n\x01"[..])), None];
        let from_text = enc.read_row(&o, &table(), 5, &text);
        assert_eq!(from_text.value, from_row.value);
        assert_eq!(from_text.key, from_row.key);
        assert_eq!(format!("{:?}", from_text.meta), format!("{:?}", from_row.meta));
    }

    #[test]
    fn an_update_has_debeziums_shape() {
        let mut enc = Encoder::default();
        let before = row(&[("id", Some("1")), ("note", Some("a")), ("doc", None)]);
        let after = row(&[("id", Some("1")), ("note", Some("b")), ("doc", Some(r#"{"x":1}"#))]);
        let r = enc.change(&origin(), &table(), Op::Update, 99, Some(&before), Some(&after));
        let v: Value = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(v["before"], json!({"id": 1, "note": "a", "doc": null}));
        assert_eq!(v["after"], json!({"id": 1, "note": "b", "doc": {"x": 1}}));
        assert_eq!(v["op"], "u");
        assert_eq!(v["ts_ms"], 1_700_000_000_005i64);
        assert_eq!(
            v["source"],
            json!({"version": concat!("flowgate-", env!("CARGO_PKG_VERSION")), "connector": "postgresql",
                   "name": "p", "ts_ms": 1_700_000_000_000i64, "snapshot": "false", "db": "shop",
                   "schema": "public", "table": "orders", "txId": 7, "lsn": 99})
        );
        assert_eq!(&r.key.unwrap()[..], br#"{"id":1}"#);
        assert_eq!(r.meta, meta(&"public".into(), &"orders".into(), 99));
    }

    #[test]
    fn events_fit_the_tables_avro_schema_and_decode_unchanged() {
        let numeric_10_2 = (10 << 16 | 2) + 4;
        let t = crate::avro::with_schema(Table::new(
            "public".into(),
            "edge".into(),
            false,
            [
                ("id".into(), 20, -1, true),
                ("price".into(), 1700, numeric_10_2, false),
                ("free".into(), 1700, -1, false),
                ("at".into(), 1184, -1, false),
                ("local".into(), 1114, -1, false),
                ("day".into(), 1082, -1, false),
                ("t".into(), 1083, -1, false),
                ("name".into(), 25, -1, false),
                ("flag".into(), 16, -1, false),
                ("ratio".into(), 700, -1, false),
                ("raw".into(), 17, -1, false),
                ("doc".into(), 3802, -1, false),
                ("tags".into(), 1009, -1, false),
                ("ints".into(), 1007, -1, false),
                ("ref".into(), 2950, -1, false),
            ],
        ));
        let codec = flowgate_avro::Codec::parse(&t.avro.as_ref().unwrap().avro).unwrap();
        let mut enc = Encoder::default();
        let specs: [&[(&str, Option<&str>)]; 3] = [
            &[
                ("id", Some("-9223372036854775808")),
                ("price", Some("-12345678.90")),
                ("free", Some("3.14159265358979323846")),
                ("at", Some("1969-12-31 23:59:59.999999+00")),
                ("local", Some("1900-01-01 00:00:00")),
                ("day", Some("0001-01-01")),
                ("t", Some("23:59:59.999999")),
                ("name", Some("ü€𝄞 \"quoted\"")),
                ("flag", Some("f")),
                ("ratio", Some("NaN")),
                ("raw", Some("\\x00ff")),
                ("doc", Some(r#"{"a": [1, null]}"#)),
                ("tags", Some(r#"{a,"",NULL}"#)),
                ("ints", Some("{}")),
                ("ref", Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
            ],
            &[("id", Some("0")), ("price", Some("0.00")), ("name", Some(""))],
            &[("id", Some("1"))],
        ];
        // Columns a spec does not name are nulls (a missing one would be TOAST).
        let rows = specs.map(|spec| {
            let cols: Vec<(&str, Option<&str>)> = t
                .columns
                .iter()
                .map(|c| (&*c.name, spec.iter().find(|(k, _)| *k == &*c.name).and_then(|(_, v)| *v)))
                .collect();
            row(&cols)
        });
        for after in &rows {
            let r = enc.change(&origin(), &t, Op::Create, 5, None, Some(after));
            let v: Value = serde_json::from_slice(&r.value).unwrap();
            let mut bytes = Vec::new();
            codec.encode_value(&v, &mut bytes).unwrap_or_else(|e| panic!("{e}: {v}"));
            assert_eq!(codec.decode(&bytes).unwrap(), v);
            assert!(r.schema.as_ref().is_some_and(|s| s.name.as_deref() == Some("public.edge.Envelope")));
        }
    }

    #[test]
    fn unchanged_toast_values_come_from_the_old_row_or_a_placeholder() {
        let mut enc = Encoder::default();
        let after = row(&[("id", Some("1")), ("note", Some("b"))]);
        let r = enc.change(&origin(), &table(), Op::Update, 1, None, Some(&after));
        let v: Value = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(v["after"]["doc"], "__debezium_unavailable_value");

        // A key change under the default identity sends the old key with nulls:
        // those must not stand in for the unchanged value.
        let old_key = row(&[("id", Some("0")), ("note", None), ("doc", None)]);
        let r = enc.change(&origin(), &table(), Op::Update, 1, Some(&old_key), Some(&after));
        let v: Value = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(v["after"]["doc"], "__debezium_unavailable_value");

        let full = Table { full_identity: true, ..table() };
        let full_old = row(&[("id", Some("1")), ("note", Some("a")), ("doc", Some("[1]"))]);
        let r = enc.change(&origin(), &full, Op::Update, 1, Some(&full_old), Some(&after));
        let v: Value = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(v["after"]["doc"], json!([1]));
        assert_eq!(left_out(&full, Some(&full_old), &after), [0usize; 0]);
        assert_eq!(left_out(&table(), Some(&old_key), &after), [2]);
        assert_eq!(left_out(&table(), None, &after), [2]);
        assert_eq!(left_out(&table(), None, &row(&[("id", Some("1")), ("note", None), ("doc", None)])), [0usize; 0]);
    }

    #[test]
    fn a_delete_is_keyed_by_the_old_row_and_can_have_a_tombstone() {
        let mut enc = Encoder::default();
        let old = row(&[("id", Some("5"))]);
        let r = enc.change(&origin(), &table(), Op::Delete, 1, Some(&old), None);
        let v: Value = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(v["after"], Value::Null);
        assert_eq!(v["before"], json!({"id": 5, "note": null, "doc": null}));
        assert_eq!(&r.key.clone().unwrap()[..], br#"{"id":5}"#);
        let t = Encoder::tombstone(&r);
        assert!(t.value.is_empty());
        assert_eq!(t.key, r.key);
    }
}
