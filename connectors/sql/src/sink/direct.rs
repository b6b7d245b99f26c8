//! Postgres inserts and upserts encoded straight into `COPY` data by the
//! prepare step.
//!
//! Parsing each record into a row (a map of owned values) and walking that
//! map again to write it was most of the sink's CPU in a profile of Kafka ->
//! Postgres inserts. For the common batch, records filling the named
//! `columns:` of one fixed table, or without `columns:` holding exactly its
//! columns (upserts: by a configured key), the prepare step writes each
//! record's values as `COPY` text in one pass, borrowing its strings, and
//! the sink sends that text as it is.
//!
//! Only a batch the general path would write as one `COPY` (into the table,
//! or into its staging table for upserts) takes this path, and it is written
//! as the same text. A record that would go otherwise (not an object, not
//! JSON, a column missing, a field without a column) sends its batch down
//! the general path, and so
//! does a `COPY` the database refuses, so that refusals stay per record,
//! with the database's message.
//!
//! Inserts and upserts into columns of the types in [`Binary`] go in
//! `COPY`'s binary format, which Postgres reads faster than text (0.53-0.95 s
//! against 0.78-1.25 s for the bench's million rows in psql, in rounds where
//! text took 0.78-1.24 s). A batch with a value whose binary form might not
//! be exactly what the column's input function makes of the text (a string
//! for a number, a number with a fraction or an exponent for an integer, an
//! integer out of the column's range) is written as text. A batch that may
//! go straight into the table (binary inserts, upserts that may try) is
//! checked against it first, and one whose table changed since it was
//! described goes the general way; others go into the staging table, made
//! from the same description.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use flowgate_sdk::{ConnectorError, Record};
use serde::de::{self, Deserialize, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

use super::cell::{Cell, is_json};
use super::changes::Changes;
use super::copy::{COPY_MIN_ROWS, Rows, StraightIn, copy_cell};
use super::{SqlSink, TableInfo, Tx};
use crate::change::FieldName;
use crate::config::{Columns, Mode, SqlSinkConfig};
use crate::dialect::Dialect;
use crate::error::{SqlError, is_row_error};

/// What a batch's records are encoded for: the table, and its named columns
/// with their types as the sink last described them.
#[derive(Debug, PartialEq)]
pub(super) struct Shape {
    pub(super) table: String,
    pub(super) columns: Vec<String>,
    pub(super) types: Vec<String>,
    /// Upserts and change events: the key columns, and where each is among
    /// `columns`.
    pub(super) key: Vec<String>,
    pub(super) key_at: Vec<usize>,
    /// The records are change events (see [`super::changes`]).
    pub(super) changes: bool,
    /// Without `columns:`, a record's (or a change event's row's) fields are
    /// the columns it fills: `columns` are the table's, and a field that is
    /// not one of them sends the batch the general way, as does a column
    /// missing from a record.
    pub(super) whole: bool,
    /// Inserts and upserts whose every column has a binary form.
    pub(super) binary: Option<Vec<Binary>>,
}

/// A column type whose binary `COPY` form this writes, and only from the
/// JSON values for which it is exactly the value Postgres's input function
/// makes of the text the general path writes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Binary {
    Int2,
    Int4,
    Int8,
    Float8,
    Bool,
    /// `text` and `varchar`, whose binary input checks a length limit as the
    /// text input does.
    Text,
    Json,
    Jsonb,
}

impl Binary {
    /// `ty` as `format_type` names it.
    fn of(ty: &str) -> Option<Binary> {
        Some(match ty {
            "smallint" => Binary::Int2,
            "integer" => Binary::Int4,
            "bigint" => Binary::Int8,
            "double precision" => Binary::Float8,
            "boolean" => Binary::Bool,
            "text" => Binary::Text,
            "json" => Binary::Json,
            "jsonb" => Binary::Jsonb,
            // Not its arrays (`character varying(3)[]`).
            t if t.starts_with("character varying") && !t.ends_with("[]") => Binary::Text,
            _ => return None,
        })
    }
}

/// The start of binary `COPY` data: its signature, no flags, no extension.
const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// Its end: a row of -1 fields.
const BINARY_TRAILER: [u8; 2] = (-1i16).to_be_bytes();

/// A value without a binary form that reads as the text path's does: the
/// batch is written as text.
struct NotBinary;

/// The shape, set by the sink once it has described the table and read by
/// its prepare step; `None` while there is none.
pub(super) type SharedShape = Arc<Mutex<Option<Arc<Shape>>>>;

/// A batch's records as `COPY` data, and the shape it was encoded for.
pub(super) struct Encoded {
    pub(super) shape: Arc<Shape>,
    pub(super) body: Body,
}

pub(super) enum Body {
    /// Inserts or upserts: a row per record, in text or binary format.
    Rows {
        data: Vec<u8>,
        binary: bool,
    },
    Changes(Changes),
}

impl Shape {
    /// The shape for a table described as `info`, when its batches can take
    /// this path: Postgres inserts, or upserts or change events by configured
    /// `key` columns, into a fixed table; `columns:` named (each once, each a
    /// column of it, the key among them) or not given (all the table's); and
    /// `COPY` into the table doing what `INSERT` does (or, for upserts, into
    /// its staging table).
    pub(super) fn of(config: &SqlSinkConfig, dialect: Dialect, info: &TableInfo) -> Option<Shape> {
        let (Dialect::Postgres, Some(table)) = (dialect, config.table.fixed()) else { return None };
        let all: Vec<String>;
        let names = match &config.columns {
            Some(Columns::Names(names)) => names,
            None => {
                all = info.columns.iter().map(|(c, _)| c.clone()).collect();
                &all
            }
            Some(Columns::Map(_)) => return None,
        };
        let key = match config.mode {
            Mode::Insert if info.copy_in => Vec::new(),
            Mode::Upsert | Mode::Cdc if !config.key.is_empty() => config.key.clone(),
            _ => return None,
        };
        let key_at = key.iter().map(|k| names.iter().position(|n| n == k)).collect::<Option<Vec<usize>>>()?;
        if !info.copies() || names.is_empty() {
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
        let changes = config.mode == Mode::Cdc;
        let whole = config.columns.is_none();
        // Binary `COPY` straight into the table is checked against it under
        // its lock (see `SqlSink::savepoint_described`); upserts go straight
        // in only where they may take it.
        let binary = if changes || key.is_empty() && !info.lockable {
            None
        } else {
            types.iter().map(|t| Binary::of(t)).collect()
        };
        Some(Shape { table: table.to_string(), columns: names.clone(), types, key, key_at, changes, whole, binary })
    }
}

/// `records` as `COPY` text for `shape`, or `None` when one of them needs the
/// general path, or there are too few for a `COPY`. For upserts, that is
/// also a key that is null, or a key that comes twice, which the general path
/// merges into one row (two keys written alike count as the same here, which
/// only ever sends a batch the general way).
pub(super) fn encode(records: &[Record], shape: &Arc<Shape>) -> Option<Encoded> {
    if records.len() < COPY_MIN_ROWS {
        return None;
    }
    if shape.changes {
        return super::changes::encode(records, shape)
            .map(|c| Encoded { shape: Arc::clone(shape), body: Body::Changes(c) });
    }
    let (data, binary) = match shape.binary.as_deref().map(|b| encode_rows(records, shape, Some(b))) {
        Some(Ok(data)) => (data?, true),
        Some(Err(NotBinary)) | None => match encode_rows(records, shape, None) {
            Ok(data) => (data?, false),
            Err(NotBinary) => unreachable!("text is written whatever the value"),
        },
    };
    Some(Encoded { shape: Arc::clone(shape), body: Body::Rows { data, binary } })
}

/// [`encode`]'s rows, in binary format when `binary` holds the columns'
/// binary forms, else as text; `Ok(None)` when the batch goes the general way.
fn encode_rows(records: &[Record], shape: &Shape, binary: Option<&[Binary]>) -> Result<Option<Vec<u8>>, NotBinary> {
    use std::hash::{BuildHasher, Hasher};
    let mut data = Vec::with_capacity(records.iter().map(|r| r.value.len()).sum());
    if binary.is_some() {
        data.extend_from_slice(BINARY_HEADER);
    }
    let keys = std::hash::RandomState::new();
    let mut seen = std::collections::HashSet::with_capacity(if shape.key.is_empty() { 0 } else { records.len() });
    let fields = (shape.columns.len() as i16).to_be_bytes();
    for r in records {
        // Checked whole first, as the general path does.
        let Ok(text) = std::str::from_utf8(&r.value) else { return Ok(None) };
        let mut de = serde_json::Deserializer::from_str(text);
        let others = if shape.whole { Others::Refuse } else { Others::Skip };
        let Ok(values) = de.deserialize_map(Fields { columns: &shape.columns, others }) else { return Ok(None) };
        if de.end().is_err() {
            return Ok(None);
        }
        if binary.is_some() {
            data.extend_from_slice(&fields);
        }
        let mut key = keys.build_hasher();
        for (n, (value, ty)) in values.into_iter().zip(&shape.types).enumerate() {
            if n > 0 && binary.is_none() {
                data.push(b'\t');
            }
            let start = data.len();
            match (value, binary) {
                (None, _) => return Ok(None),
                (Some(Scalar::Null), _) if shape.key_at.contains(&n) => return Ok(None),
                (Some(v), Some(binary)) => binary_cell(&mut data, v, binary[n], ty)?,
                (Some(v), None) => write_cell(&mut data, v, ty),
            }
            if shape.key_at.contains(&n) {
                key.write(&data[start..]);
                key.write_u8(b'\t');
            }
        }
        if binary.is_none() {
            data.push(b'\n');
        }
        if !shape.key.is_empty() && !seen.insert(key.finish()) {
            return Ok(None);
        }
    }
    if binary.is_some() {
        data.extend_from_slice(&BINARY_TRAILER);
    }
    Ok(Some(data))
}

/// One value in binary `COPY` format for a column of type `ty`: the value the
/// column's input function makes of the text [`write_cell`] writes.
fn binary_cell(data: &mut Vec<u8>, value: Scalar<'_>, binary: Binary, ty: &str) -> Result<(), NotBinary> {
    fn field(data: &mut Vec<u8>, bytes: &[u8]) -> Result<(), NotBinary> {
        let len = i32::try_from(bytes.len()).map_err(|_| NotBinary)?;
        data.extend_from_slice(&len.to_be_bytes());
        data.extend_from_slice(bytes);
        Ok(())
    }
    match (value, binary) {
        (Scalar::Null, _) => data.extend_from_slice(&(-1i32).to_be_bytes()),
        (Scalar::Number(n), Binary::Int8) => field(data, &n.as_i64().ok_or(NotBinary)?.to_be_bytes())?,
        (Scalar::Number(n), Binary::Int4) => {
            let i = n.as_i64().and_then(|i| i32::try_from(i).ok()).ok_or(NotBinary)?;
            field(data, &i.to_be_bytes())?
        }
        (Scalar::Number(n), Binary::Int2) => {
            let i = n.as_i64().and_then(|i| i16::try_from(i).ok()).ok_or(NotBinary)?;
            field(data, &i.to_be_bytes())?
        }
        // The text path writes an integer in decimal and a fraction as the
        // shortest text that reads back as the same `f64`; Postgres rounds
        // the decimal to the nearest `f64`, as the cast here does.
        (Scalar::Number(n), Binary::Float8) => {
            let f = match n.as_i64() {
                Some(i) => i as f64,
                None if n.is_f64() => n.as_f64().ok_or(NotBinary)?,
                None => return Err(NotBinary),
            };
            field(data, &f.to_bits().to_be_bytes())?
        }
        (Scalar::Bool(b), Binary::Bool) => field(data, &[u8::from(b)])?,
        (Scalar::Str(s), Binary::Text) => field(data, s.as_bytes())?,
        // The text the statements bind for it, which `COPY` text writes too.
        (v, Binary::Text) => match Dialect::Postgres.cell(Some(&v.into_value()), ty) {
            Cell::Text(s) => field(data, s.as_bytes())?,
            _ => return Err(NotBinary),
        },
        (v, Binary::Json | Binary::Jsonb) => {
            let at = data.len();
            data.extend_from_slice(&[0; 4]);
            if binary == Binary::Jsonb {
                // The version of jsonb's binary form: its text follows.
                data.push(1);
            }
            serde_json::to_writer(&mut *data, &v).map_err(|_| NotBinary)?;
            let len = i32::try_from(data.len() - at - 4).map_err(|_| NotBinary)?;
            data[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        _ => return Err(NotBinary),
    }
    Ok(())
}

/// One value as `COPY` text for a column of type `ty`, as the general path
/// writes it.
pub(super) fn write_cell(data: &mut Vec<u8>, value: Scalar<'_>, ty: &str) {
    match value {
        // What `typed_cell` makes of a string for any column but JSON.
        Scalar::Str(s) if !is_json(ty) => copy_cell(data, Cell::Text(s)),
        v => copy_cell(data, Dialect::Postgres.typed_cell(Some(&v.into_value()), ty)),
    }
}

/// Locks the shared shape; it is only ever replaced whole, so one left by a
/// panicking thread is still whole.
pub(super) fn shape_of(shared: &SharedShape) -> std::sync::MutexGuard<'_, Option<Arc<Shape>>> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SqlSink {
    /// Writes a batch the prepare step encoded, in the batch's transaction:
    /// with one `COPY` for inserts, as parsed rows are for upserts (straight
    /// in while their keys are new, else through the staging table), and
    /// change events as [`SqlSink::apply_changes`] applies them.
    /// `false` when the batch must take the general path: the table was
    /// described otherwise since, it has no staging table, or the database
    /// refused a row (what this wrote is rolled back).
    pub(super) async fn write_encoded(&mut self, encoded: Encoded) -> Result<bool, ConnectorError> {
        let Encoded { shape, body } = encoded;
        let Some(info) = self.tables.get(&shape.table).cloned() else { return Ok(false) };
        if Shape::of(&self.config, self.dialect, &info).as_ref() != Some(&*shape) {
            return Ok(false);
        }
        let table = shape.table.as_str();
        let stage = if shape.key.is_empty() {
            None
        } else {
            // Made before the transaction, as the general path does, so that a
            // rollback never takes a staging table the sink believes it has.
            self.stage(table).await.inspect_err(|_| self.lost())?;
            match self.stages.get(&info.quoted).and_then(|s| s.name.clone()) {
                Some(stage) => Some(stage),
                None => return Ok(false),
            }
        };
        // The batch's transaction, when this begins it.
        let fresh = (self.tx == Tx::None).then(Instant::now);
        if let Some(began) = fresh {
            self.tx = Tx::Pending(began);
        }
        let binary = matches!(body, Body::Rows { binary: true, .. });
        let result: Result<bool, SqlError> = async {
            // What may go straight into the table is checked against it first:
            // binary inserts, and upserts that may try.
            let checked = match (&body, &stage) {
                (Body::Rows { binary, .. }, None) => *binary,
                (Body::Rows { .. }, Some(_)) => self.may_go_straight_in(&info),
                (Body::Changes(_), _) => false,
            };
            let try_in = if !checked {
                self.savepoint("flowgate_batch", table).await?;
                StraightIn::No
            } else if let Some(try_in) =
                self.savepoint_described(&info, table, &shape.key, StraightIn::when(stage.is_some())).await?
            {
                try_in
            } else {
                // Altered since: described again, for the general path and
                // the batches after it. Nothing else is in a transaction this
                // began: undone first, so that the general path describes and
                // makes its staging table outside it, as it does otherwise (a
                // staging table made inside would go with a rollback while
                // the sink believed it there).
                tracing::debug!(table, "the table changed since it was described; the batch goes the general way");
                if let Some(began) = fresh {
                    self.raw("ROLLBACK", table).await?;
                    self.tx = Tx::Pending(began);
                }
                match self.describe(table).await? {
                    Some(info) => self.tables.insert(table.to_string(), info),
                    None => self.tables.remove(table),
                };
                return Ok(false);
            };
            let (written, bytes) = match (&body, &stage) {
                (Body::Rows { data, binary }, None) => {
                    let rows = Rows::made(data, *binary);
                    (self.copy_rows(&info.quoted, &info, &shape.columns, rows).await, data.len())
                }
                (Body::Rows { data, binary }, Some(stage)) => {
                    let rows = Rows::made(data, *binary);
                    (self.upsert_copied(&info, stage, &shape.columns, &shape.key, rows, try_in).await, data.len())
                }
                (Body::Changes(changes), Some(stage)) => {
                    (self.apply_changes(&info, stage, &shape, changes).await, changes.len())
                }
                (Body::Changes(_), None) => unreachable!("change events have a key, so a staging table"),
            };
            match written {
                Ok(()) => {
                    tracing::debug!(table, bytes, binary, "wrote a batch from COPY data made ahead");
                    Ok(true)
                }
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
        // Upserts without a staging table (no `TEMP` privilege) take
        // statements: encoding their batches would be work for nothing.
        let staged = |info: &TableInfo| self.stages.get(&info.quoted).is_some_and(|s| s.name.is_some());
        let now = self
            .tables
            .get(table)
            .and_then(|info| Shape::of(&self.config, self.dialect, info).filter(|s| s.key.is_empty() || staged(info)));
        let mut shared = shape_of(&self.shape);
        if shared.as_deref() != now.as_ref() {
            *shared = now.map(Arc::new);
        }
    }
}

/// A record's values for `columns`, in their order: the last of a repeated
/// field, `None` for a column it lacks.
pub(super) struct Fields<'a> {
    pub(super) columns: &'a [String],
    pub(super) others: Others,
}

/// What becomes of fields other than the columns.
#[derive(Clone, Copy)]
pub(super) enum Others {
    /// Checked as JSON and skipped, as the general path does for inserts and
    /// upserts of named columns.
    Skip,
    /// Parsed whole and dropped, as the general path does for change events.
    Parse,
    /// An error: the general path would write them, or refuse the record.
    Refuse,
}

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = Vec<Option<Scalar<'de>>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values: Vec<Option<Scalar<'de>>> = self.columns.iter().map(|_| None).collect();
        while let Some(name) = map.next_key_seed(FieldName)? {
            match (self.columns.iter().position(|c| *c == name), self.others) {
                (Some(i), _) => values[i] = Some(map.next_value()?),
                (None, Others::Skip) => {
                    map.next_value::<IgnoredAny>()?;
                }
                (None, Others::Parse) => {
                    map.next_value::<Value>()?;
                }
                (None, Others::Refuse) => return Err(de::Error::custom("a field without a column")),
            }
        }
        Ok(values)
    }
}

/// A value as the parser reads it, a string borrowed from the record unless
/// it holds escapes; objects and arrays are built whole, as a `Value`.
/// Compared and written as JSON as the `Value` it stands for is.
#[derive(Clone, PartialEq)]
pub(super) enum Scalar<'de> {
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'de, str>),
    Other(Value),
}

impl Scalar<'_> {
    /// The `Value` a parsed record holds for it.
    pub(super) fn into_value(self) -> Value {
        match self {
            Scalar::Null => Value::Null,
            Scalar::Bool(b) => Value::Bool(b),
            Scalar::Number(n) => Value::Number(n),
            Scalar::Str(s) => Value::String(s.into_owned()),
            Scalar::Other(v) => v,
        }
    }
}

impl serde::Serialize for Scalar<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Scalar::Null => s.serialize_unit(),
            Scalar::Bool(b) => s.serialize_bool(*b),
            Scalar::Number(n) => n.serialize(s),
            Scalar::Str(t) => s.serialize_str(t),
            Scalar::Other(v) => v.serialize(s),
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
            lockable: true,
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

    fn rows(encoded: &Encoded) -> Vec<u8> {
        match &encoded.body {
            Body::Rows { data, binary: false } => data.clone(),
            _ => panic!("rows as text"),
        }
    }

    /// The fields of binary `COPY` data, row by row (`None`: NULL).
    fn binary_rows(encoded: &Encoded) -> Vec<Vec<Option<Vec<u8>>>> {
        let Body::Rows { data, binary: true } = &encoded.body else { panic!("rows in binary") };
        let rest = data.strip_prefix(BINARY_HEADER).expect("the header");
        let (mut rest, trailer) = rest.split_at(rest.len() - 2);
        assert_eq!(trailer, BINARY_TRAILER);
        let mut rows = Vec::new();
        while !rest.is_empty() {
            let n = i16::from_be_bytes([rest[0], rest[1]]);
            rest = &rest[2..];
            let mut row = Vec::new();
            for _ in 0..n {
                let len = i32::from_be_bytes(rest[..4].try_into().unwrap());
                rest = &rest[4..];
                row.push((len >= 0).then(|| rest[..len as usize].to_vec()));
                rest = &rest[len.max(0) as usize..];
            }
            rows.push(row);
        }
        rows
    }

    #[test]
    fn values_take_the_binary_form_the_input_function_would_make_of_their_text() {
        let cell = |value: &str, ty: &str| {
            let mut data = Vec::new();
            let value: Scalar = serde_json::from_str(value).unwrap();
            binary_cell(&mut data, value, Binary::of(ty).unwrap(), ty).ok().map(|()| data)
        };
        let field = |bytes: &[u8]| [&(bytes.len() as i32).to_be_bytes()[..], bytes].concat();
        assert_eq!(cell("null", "bigint"), Some((-1i32).to_be_bytes().to_vec()));
        assert_eq!(cell("-32768", "smallint"), Some(field(&(-32768i16).to_be_bytes())));
        assert_eq!(cell("2147483647", "integer"), Some(field(&i32::MAX.to_be_bytes())));
        assert_eq!(cell("-9223372036854775808", "bigint"), Some(field(&i64::MIN.to_be_bytes())));
        assert_eq!(
            cell("9007199254740993", "double precision"),
            Some(field(&9007199254740992f64.to_bits().to_be_bytes()))
        );
        assert_eq!(cell("0.1", "double precision"), Some(field(&0.1f64.to_bits().to_be_bytes())));
        assert_eq!(cell("-0.0", "double precision"), Some(field(&(-0.0f64).to_bits().to_be_bytes())));
        assert_eq!(cell("true", "boolean"), Some(field(&[1])));
        assert_eq!(cell(r#""a\tb""#, "character varying(3)"), Some(field(b"a\tb")));
        // Into text as the text path writes them.
        assert_eq!(cell("1.5", "text"), Some(field(b"1.5")));
        assert_eq!(cell("12", "text"), Some(field(b"12")));
        assert_eq!(cell("false", "text"), Some(field(b"false")));
        assert_eq!(cell(r#"{"a": [1, "x"]}"#, "text"), Some(field(br#"{"a":[1,"x"]}"#)));
        assert_eq!(cell(r#""s""#, "json"), Some(field(br#""s""#)));
        assert_eq!(cell("[1,null]", "jsonb"), Some(field(b"\x01[1,null]")));
        // What the text path leaves to the input function: written as text.
        for (value, ty) in [
            ("32768", "smallint"),
            ("2147483648", "integer"),
            ("18446744073709551615", "bigint"),
            ("18446744073709551615", "double precision"),
            ("1.0", "bigint"),
            (r#""42""#, "integer"),
            (r#""NaN""#, "double precision"),
            (r#""t""#, "boolean"),
            ("1", "boolean"),
        ] {
            assert_eq!(cell(value, ty), None, "{value} into {ty}");
        }
        for ty in [
            "numeric",
            "real",
            "text[]",
            "character varying[]",
            "character varying(3)[]",
            "timestamp with time zone",
            "character(3)",
            "uuid",
        ] {
            assert_eq!(Binary::of(ty), None, "{ty}");
        }
    }

    #[test]
    fn a_batch_with_a_value_without_its_binary_form_is_written_as_text() {
        let names = ["id", "name", "ok"];
        let good = |i: usize| format!(r#"{{"id":{i},"name":"n{i}","ok":true}}"#);
        let mut values: Vec<String> = (0..COPY_MIN_ROWS).map(good).collect();
        let encoded = encode(&records(&values), &shape(&names)).expect("encoded");
        assert_eq!(binary_rows(&encoded)[3], [Some(3i64.to_be_bytes().to_vec()), Some(b"n3".to_vec()), Some(vec![1])]);
        values[7] = r#"{"id":"7","name":"n7","ok":true}"#.into();
        let encoded = encode(&records(&values), &shape(&names)).expect("encoded");
        assert_eq!(rows(&encoded), general(&values, &names));
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
        assert_eq!(String::from_utf8(rows(&encoded)).unwrap(), String::from_utf8(general(&values, &names)).unwrap());
        // Named in another order than the table's: written in the named order.
        let some = ["n", "name", "id"];
        let encoded = encode(&records(&values), &shape(&some)).expect("encoded");
        assert_eq!(rows(&encoded), general(&values, &some));
        assert_eq!(encoded.shape.columns, some);
    }

    #[test]
    fn without_columns_named_records_holding_exactly_the_tables_columns_are_encoded() {
        let mut whole = config(&[]);
        whole.columns = None;
        let shape = Arc::new(Shape::of(&whole, Dialect::Postgres, &info()).expect("a shape"));
        let all = COLUMNS.map(|(c, _)| c);
        let values = [
            r#"{"ok":true,"raw":"s","n":1,"tags":["a"],"doc":{"k":1},"amount":1.5,"name":"a\\tb","id":1}"#,
            r#"{"id":2,"name":null,"amount":-2,"doc":null,"tags":null,"raw":[1],"ok":null,"n":"1e3","id":3}"#,
        ];
        let values: Vec<String> = values.iter().cycle().take(COPY_MIN_ROWS).map(|v| v.to_string()).collect();
        let encoded = encode(&records(&values), &shape).expect("encoded");
        assert_eq!(rows(&encoded), general(&values, &all));
        // A field without a column (the general path refuses it, or drops it
        // with `unknown_fields: ignore`), or a column left out (its default).
        for bad in [
            r#"{"ok":true,"raw":"s","n":1,"tags":[],"doc":1,"amount":1.5,"name":"a","id":1,"more":1}"#,
            r#"{"ok":true,"raw":"s","n":1,"tags":[],"doc":1,"amount":1.5,"id":1}"#,
        ] {
            let mut values = values.clone();
            values[5] = bad.to_string();
            assert!(encode(&records(&values), &shape).is_none(), "{bad}");
        }
    }

    #[test]
    fn upserts_with_a_key_null_or_twice_go_the_general_way() {
        let mut upsert = config(&["id", "name"]);
        upsert.mode = Mode::Upsert;
        upsert.key = vec!["name".into(), "id".into()];
        let shape = Arc::new(Shape::of(&upsert, Dialect::Postgres, &info()).expect("a shape"));
        let row = |id: &str, name: &str| format!(r#"{{"id":{id},"name":{name}}}"#);
        let distinct: Vec<String> = (0..COPY_MIN_ROWS).map(|i| row(&i.to_string(), r#""n""#)).collect();
        let encoded = encode(&records(&distinct), &shape).expect("encoded");
        let want: Vec<_> =
            (0..COPY_MIN_ROWS as i64).map(|i| vec![Some(i.to_be_bytes().to_vec()), Some(b"n".to_vec())]).collect();
        assert_eq!(binary_rows(&encoded), want);
        for (at, value) in [
            (3, row("1", r#""n""#)),
            (3, row("3", "null")),
            (3, row("null", r#""n""#)),
            // Another JSON value written alike: the general path keeps both.
            (3, row("1.0", r#""n""#)),
        ] {
            let mut values = distinct.clone();
            values[at] = value;
            assert!(encode(&records(&values), &shape).is_none(), "{}", values[at]);
        }
        // The same id under another name is another key.
        let mut values = distinct.clone();
        values[3] = row("1", r#""m""#);
        assert!(encode(&records(&values), &shape).is_some());
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
    fn only_inserts_and_keyed_upserts_or_changes_of_named_columns_into_a_fixed_table_have_a_shape() {
        let of = |config: &SqlSinkConfig, info: &TableInfo| Shape::of(config, Dialect::Postgres, info);
        let info = info();
        assert!(of(&config(&["id", "name"]), &info).is_some());
        assert!(Shape::of(&config(&["id"]), Dialect::MySql, &info).is_none());
        assert!(of(&config(&["id", "missing"]), &info).is_none());
        assert!(of(&config(&["id", "id"]), &info).is_none());
        assert!(of(&config(&[]), &info).is_none());
        // Upserts by a configured key among the named columns, through the
        // staging table: whether `COPY` into the table itself does what
        // `INSERT` does does not matter.
        let mut upsert = config(&["id", "name"]);
        upsert.mode = Mode::Upsert;
        assert!(of(&upsert, &info).is_none());
        upsert.key = vec!["ok".into()];
        assert!(of(&upsert, &info).is_none());
        upsert.key = vec!["name".into()];
        assert_eq!(of(&upsert, &info).expect("a shape").key_at, [1]);
        let mut identity = info.clone();
        identity.copy_in = false;
        assert!(of(&upsert, &identity).is_some());
        // Change events alike (see `changes`).
        let mut cdc = upsert.clone();
        cdc.mode = Mode::Cdc;
        assert!(of(&cdc, &info).expect("a shape").changes);
        cdc.key.clear();
        assert!(of(&cdc, &info).is_none());
        // Without `columns:`, all the table's.
        let mut all = config(&["id"]);
        all.columns = None;
        let whole = of(&all, &info).expect("a shape");
        assert!(whole.whole);
        assert_eq!(whole.columns, COLUMNS.map(|(c, _)| c));
        all.columns = Some(Columns::Map([("id".to_string(), "id".to_string())].into()));
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
        // Binary `COPY` straight in takes the table's lock: without it,
        // inserts go as text; upserts only go straight in with it.
        let mut unlockable = info.clone();
        unlockable.lockable = false;
        assert!(of(&config(&["id"]), &info).expect("a shape").binary.is_some());
        assert!(of(&config(&["id"]), &unlockable).expect("a shape").binary.is_none());
        assert!(of(&upsert, &unlockable).expect("a shape").binary.is_some());
    }
}
