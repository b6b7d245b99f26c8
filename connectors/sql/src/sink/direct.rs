//! Postgres inserts encoded straight into `COPY` text by the prepare step.
//!
//! Parsing each record into a row (a map of owned values) and walking that
//! map again to write it was most of the sink's CPU in a profile of Kafka ->
//! Postgres inserts. For the common batch, records filling the named
//! `columns:` of one fixed table, the prepare step writes each record's
//! values as `COPY` text in one pass, borrowing its strings, and the sink
//! sends that text as it is.
//!
//! Only a batch the general path would write as one `COPY` into the table
//! takes this path, and it is written as the same text. A record that would
//! go otherwise (not an object, not JSON, a column missing) sends its batch
//! down the general path, and so does a `COPY` the database refuses, so that
//! refusals stay per record, with the database's message.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use flowgate_sdk::{ConnectorError, Record};
use serde::de::{self, Deserialize, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

use super::cell::{Cell, is_json};
use super::copy::{COPY_MIN_ROWS, copy_cell};
use super::{SqlSink, TableInfo, Tx};
use crate::change::FieldName;
use crate::config::{Columns, Mode, SqlSinkConfig};
use crate::dialect::Dialect;
use crate::error::{SqlError, is_row_error};

/// What a batch's records are encoded for: the table, and its named columns
/// with their types as the sink last described them.
#[derive(Debug, PartialEq)]
pub(super) struct Shape {
    table: String,
    columns: Vec<String>,
    types: Vec<String>,
    /// `COPY <table> (<columns>) FROM STDIN`.
    statement: String,
}

/// The shape, set by the sink once it has described the table and read by
/// its prepare step; `None` while there is none.
pub(super) type SharedShape = Arc<Mutex<Option<Arc<Shape>>>>;

/// A batch's records as `COPY` text, and the shape it was encoded for.
pub(super) struct Encoded {
    shape: Arc<Shape>,
    data: Vec<u8>,
}

impl Shape {
    /// The shape for a table described as `info`, when its batches can take
    /// this path: Postgres inserts into a fixed table, `columns:` named (each
    /// once, each a column of it), and `COPY` into it doing what `INSERT` does.
    pub(super) fn of(config: &SqlSinkConfig, dialect: Dialect, info: &TableInfo) -> Option<Shape> {
        let (Dialect::Postgres, Mode::Insert, Some(Columns::Names(names)), Some(table)) =
            (dialect, config.mode, config.columns.as_ref(), config.table.fixed())
        else {
            return None;
        };
        if !info.copy_in || !info.copies() || names.is_empty() {
            return None;
        }
        let mut types = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            // What the general path would refuse each record for, or write
            // by statements.
            if names[..i].contains(name) || dialect.check_name(name).is_err() {
                return None;
            }
            types.push(info.ty(name)?.to_string());
        }
        let quoted: Vec<String> = names.iter().map(|n| dialect.quote(n)).collect();
        let statement = format!("COPY {} ({}) FROM STDIN", info.quoted, quoted.join(", "));
        Some(Shape { table: table.to_string(), columns: names.clone(), types, statement })
    }
}

/// `records` as `COPY` text for `shape`, or `None` when one of them needs the
/// general path, or there are too few for a `COPY`.
pub(super) fn encode(records: &[Record], shape: &Arc<Shape>) -> Option<Encoded> {
    if records.len() < COPY_MIN_ROWS {
        return None;
    }
    let mut data = Vec::with_capacity(records.iter().map(|r| r.value.len()).sum());
    for r in records {
        // Checked whole first, as the general path does.
        let text = std::str::from_utf8(&r.value).ok()?;
        let mut de = serde_json::Deserializer::from_str(text);
        let values = de.deserialize_map(Fields(&shape.columns)).ok()?;
        de.end().ok()?;
        for (n, (value, ty)) in values.into_iter().zip(&shape.types).enumerate() {
            if n > 0 {
                data.push(b'\t');
            }
            match value? {
                // What `typed_cell` makes of a string for any column but JSON.
                Scalar::Str(s) if !is_json(ty) => copy_cell(&mut data, Cell::Text(s)),
                v => copy_cell(&mut data, Dialect::Postgres.typed_cell(Some(&v.into_value()), ty)),
            }
        }
        data.push(b'\n');
    }
    Some(Encoded { shape: Arc::clone(shape), data })
}

/// Locks the shared shape; it is only ever replaced whole, so one left by a
/// panicking thread is still whole.
pub(super) fn shape_of(shared: &SharedShape) -> std::sync::MutexGuard<'_, Option<Arc<Shape>>> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SqlSink {
    /// Writes a batch the prepare step encoded, with one `COPY` in the batch's
    /// transaction. `false` when the batch must take the general path: the
    /// table was described otherwise since, or the database refused a row
    /// (what this wrote is rolled back).
    pub(super) async fn write_encoded(&mut self, encoded: Encoded) -> Result<bool, ConnectorError> {
        let Encoded { shape, data } = encoded;
        let now = self.tables.get(&shape.table).and_then(|info| Shape::of(&self.config, self.dialect, info));
        if now.as_ref() != Some(&*shape) {
            return Ok(false);
        }
        if self.tx == Tx::None {
            self.tx = Tx::Pending(Instant::now());
        }
        let table = shape.table.as_str();
        let result: Result<bool, SqlError> = async {
            self.savepoint("flowgate_batch", table).await?;
            match self.copy_text(&shape.statement, &data).await {
                Ok(()) => Ok(true),
                Err(e) if is_row_error(&e) => {
                    tracing::debug!(table, error = %e, "a row was refused; the batch goes the general way");
                    self.raw("ROLLBACK TO SAVEPOINT flowgate_batch", table).await?;
                    Ok(false)
                }
                Err(source) => Err(SqlError::Write { table: table.to_string(), source }),
            }
        }
        .await;
        result.map_err(|e| {
            self.lost();
            e.into()
        })
    }

    /// Shares the shape of the table as now described with the prepare step,
    /// so that the batches after this one are encoded for it.
    pub(super) fn share_shape(&self) {
        let Some(table) = self.config.table.fixed() else { return };
        let now = self.tables.get(table).and_then(|info| Shape::of(&self.config, self.dialect, info));
        let mut shared = shape_of(&self.shape);
        if shared.as_deref() != now.as_ref() {
            *shared = now.map(Arc::new);
        }
    }
}

/// A record's values for `columns`, in their order: the last of a repeated
/// field, `None` for a column it lacks. Other fields are checked as JSON and
/// skipped, as the general path does.
struct Fields<'a>(&'a [String]);

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = Vec<Option<Scalar<'de>>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values: Vec<Option<Scalar<'de>>> = self.0.iter().map(|_| None).collect();
        while let Some(name) = map.next_key_seed(FieldName)? {
            match self.0.iter().position(|c| *c == name) {
                Some(i) => values[i] = Some(map.next_value()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(values)
    }
}

/// A value as the parser reads it, a string borrowed from the record unless
/// it holds escapes; objects and arrays are built whole, as a `Value`.
enum Scalar<'de> {
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'de, str>),
    Other(Value),
}

impl Scalar<'_> {
    /// The `Value` a parsed record holds for it.
    fn into_value(self) -> Value {
        match self {
            Scalar::Null => Value::Null,
            Scalar::Bool(b) => Value::Bool(b),
            Scalar::Number(n) => Value::Number(n),
            Scalar::Str(s) => Value::String(s.into_owned()),
            Scalar::Other(v) => v,
        }
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

/// Builds what `Value`'s own visitor builds, but for strings.
struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Bool(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Number(i.into()))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Number(u.into()))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Scalar<'de>, E> {
        Ok(Number::from_f64(f).map_or(Scalar::Null, Scalar::Number))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(s.to_string())))
    }
    fn visit_string<E>(self, s: String) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(s)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar<'de>, A::Error> {
        Value::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar<'de>, A::Error> {
        Value::deserialize(de::value::MapAccessDeserializer::new(map)).map(Scalar::Other)
    }
}

#[cfg(test)]
mod tests {
    use flowgate_sdk::RecordTemplate;

    use super::*;
    use crate::change::{Op, ops};

    const COLUMNS: [(&str, &str); 8] = [
        ("id", "bigint"),
        ("name", "text"),
        ("amount", "double precision"),
        ("doc", "jsonb"),
        ("tags", "text[]"),
        ("raw", "json"),
        ("ok", "boolean"),
        ("n", "numeric"),
    ];

    fn info() -> TableInfo {
        TableInfo {
            quoted: "\"t\"".into(),
            columns: COLUMNS.iter().map(|(c, t)| (c.to_string(), t.to_string())).collect(),
            linked: false,
            copy_in: true,
        }
    }

    fn config(names: &[&str]) -> SqlSinkConfig {
        SqlSinkConfig {
            url: "postgres://localhost/x".into(),
            table: "t".parse::<RecordTemplate>().unwrap(),
            mode: Mode::Insert,
            key: Vec::new(),
            columns: Some(Columns::Names(names.iter().map(|n| n.to_string()).collect())),
            create_table: false,
            delivery: Default::default(),
            synchronous: Default::default(),
            unknown_fields: Default::default(),
            tables_allowed: None,
        }
    }

    fn shape(names: &[&str]) -> Arc<Shape> {
        Arc::new(Shape::of(&config(names), Dialect::Postgres, &info()).expect("a shape"))
    }

    fn records(values: &[String]) -> Vec<Record> {
        values.iter().map(|v| Record::from_value(v.clone())).collect()
    }

    /// The `COPY` text the general path writes for `values`: each parsed into
    /// a row, each cell from the row.
    fn general(values: &[String], names: &[&str]) -> Vec<u8> {
        let columns = Columns::Names(names.iter().map(|n| n.to_string()).collect());
        let info = info();
        let mut out = Vec::new();
        for v in values {
            let [Op::Insert(row)] = &ops(v.as_bytes(), None, Mode::Insert, Some(&columns), &[]).unwrap()[..] else {
                panic!("one insert")
            };
            for (n, c) in names.iter().enumerate() {
                if n > 0 {
                    out.push(b'\t');
                }
                copy_cell(&mut out, Dialect::Postgres.typed_cell(row.get(*c), info.ty(c).unwrap()));
            }
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn records_are_encoded_as_the_general_path_writes_them() {
        let names = ["id", "name", "amount", "doc", "tags", "raw", "ok", "n"];
        let values = [
            r#"{"id":1,"name":"plain","amount":1.5,"doc":{"k":[1,"x\ty"]},"tags":["a","b c",null,"d\"e"],"raw":"s","ok":true,"n":18446744073709551615}"#,
            r#"{"n":-3,"ok":false,"raw":[1,{"a":null}],"tags":"{x}","doc":"t\\ext","amount":-2,"name":"tab\there\nline\\back\r\u00e9 \\N \\.","id":-9223372036854775808}"#,
            r#"{"id":2,"skip":{"deep":[1,"\u00e9",null,1e999]},"name":null,"amount":1e300,"doc":null,"tags":null,"raw":null,"ok":null,"n":0.1}"#,
            r#"{"id":3,"name":"first","name":"last","amount":0,"doc":12,"tags":[],"raw":true,"ok":1,"n":"1e3"}"#,
            r#"{"id":4,"name":"✓ \ud83d\ude00","amount":2.5e-8,"doc":[],"tags":[["x"]],"raw":{},"ok":"yes","n":-0.0}"#,
        ];
        let values: Vec<String> = values.iter().cycle().take(COPY_MIN_ROWS).map(|v| v.to_string()).collect();
        let encoded = encode(&records(&values), &shape(&names)).expect("encoded");
        assert_eq!(String::from_utf8(encoded.data).unwrap(), String::from_utf8(general(&values, &names)).unwrap());
        // Named in another order than the table's: written in the named order.
        let some = ["name", "id"];
        let encoded = encode(&records(&values), &shape(&some)).expect("encoded");
        assert_eq!(encoded.data, general(&values, &some));
        assert_eq!(encoded.shape.statement, r#"COPY "t" ("name", "id") FROM STDIN"#);
    }

    #[test]
    fn a_record_the_general_path_would_take_otherwise_sends_the_batch_there() {
        let names = ["id", "name"];
        let good = r#"{"id":1,"name":"a","other":[1,2]}"#;
        for bad in [
            r#"{"id":1}"#.as_bytes(),
            b"[1]",
            b"null",
            br#"{"id":1,"name":"a"} x"#,
            br#"{"id":1,"name":"a","skip":[1,}"#,
            br#"{"id":1,"name":"\ud800"}"#,
            b"{\"id\":1,\"name\":\"a\",\"skip\":\"\xff\"}",
            b"",
        ] {
            let mut batch = records(&vec![good.to_string(); COPY_MIN_ROWS]);
            batch[COPY_MIN_ROWS / 2] = Record::from_value(bad.to_vec());
            assert!(encode(&batch, &shape(&names)).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(encode(&records(&vec![good.to_string(); COPY_MIN_ROWS]), &shape(&names)).is_some());
        assert!(encode(&records(&vec![good.to_string(); COPY_MIN_ROWS - 1]), &shape(&names)).is_none());
    }

    #[test]
    fn only_inserts_of_named_columns_into_a_fixed_table_have_a_shape() {
        let of = |config: &SqlSinkConfig, info: &TableInfo| Shape::of(config, Dialect::Postgres, info);
        let info = info();
        assert!(of(&config(&["id", "name"]), &info).is_some());
        assert!(Shape::of(&config(&["id"]), Dialect::MySql, &info).is_none());
        assert!(of(&config(&["id", "missing"]), &info).is_none());
        assert!(of(&config(&["id", "id"]), &info).is_none());
        assert!(of(&config(&[]), &info).is_none());
        let mut upsert = config(&["id"]);
        upsert.mode = Mode::Upsert;
        assert!(of(&upsert, &info).is_none());
        let mut all = config(&["id"]);
        all.columns = None;
        assert!(of(&all, &info).is_none());
        let mut templated = config(&["id"]);
        templated.table = "t_${value.id}".parse().unwrap();
        assert!(of(&templated, &info).is_none());
        let mut bytea = info.clone();
        bytea.columns.push(("b".into(), "bytea".into()));
        assert!(of(&config(&["id"]), &bytea).is_none());
        let mut identity = info.clone();
        identity.copy_in = false;
        assert!(of(&config(&["id"]), &identity).is_none());
    }
}
