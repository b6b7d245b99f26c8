//! JSON values <-> Avro binary, against a schema.
//!
//! The schema is parsed by `apache-avro` (which also checks it) and compiled
//! into a tree that the encoder walks once per record: validation and encoding
//! are one pass, and a mismatch comes back with the JSON path of the value and
//! what the schema expected there (`$.items[2].price: expected decimal(10,2),
//! got "abc"`). Building `apache-avro`'s own `Value` tree first, then validating
//! it, costs two more passes and an allocation per field, and its validation
//! error names no field.
//!
//! JSON conventions (the same both ways): bytes and fixed are base64 strings;
//! decimals are strings (numbers are accepted); dates, times and timestamps are
//! ISO 8601 strings (numbers in the Avro unit are accepted); NaN and infinities
//! are the strings `NaN`, `Infinity`, `-Infinity`; a union takes the value as it
//! is (no `{"type": value}` wrapper); a string field marked `"flowgate.json":
//! true` holds a JSON document as text and decodes back to the document.

use std::collections::HashMap;
use std::fmt;

use apache_avro::Schema;
use apache_avro::schema::{InnerDecimalSchema, Name, RecordField, ResolvedSchema, UuidSchema};
use base64::Engine as _;
use serde_json::Value;

use crate::time;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Field attribute that marks a string as holding a JSON document.
pub const JSON_ATTRIBUTE: &str = "flowgate.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    Millis,
    Micros,
    Nanos,
}

#[derive(Clone, Debug)]
enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    /// A string holding a JSON document.
    Json,
    Array(Box<Node>),
    Map(Box<Node>),
    Union(Box<[Node]>),
    /// Index into [`Codec::records`] (records may refer to themselves).
    Record(usize),
    Enum {
        name: Box<str>,
        symbols: Box<[String]>,
    },
    Fixed {
        name: Box<str>,
        size: usize,
    },
    Decimal {
        precision: usize,
        scale: usize,
        fixed: Option<usize>,
    },
    BigDecimal,
    Uuid(UuidRepr),
    Date,
    TimeMillis,
    TimeMicros,
    Timestamp(Unit),
    LocalTimestamp(Unit),
    Duration,
}

/// How a uuid is stored: as its text, or as 16 bytes (fixed, or length-prefixed bytes).
#[derive(Clone, Copy, Debug)]
enum UuidRepr {
    String,
    Bytes,
    Fixed,
}

#[derive(Debug)]
struct Field {
    name: String,
    node: Node,
    /// The default, already encoded.
    default: Option<Vec<u8>>,
}

#[derive(Debug)]
struct RecordNode {
    name: String,
    fields: Vec<Field>,
}

/// A schema ready to encode and decode with.
#[derive(Debug)]
pub struct Codec {
    schema: Schema,
    root: Node,
    records: Vec<RecordNode>,
}

/// Why a schema cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SchemaError(pub String);

/// A value that does not fit the schema: where, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Path segments, innermost first while the error travels up.
    path: Vec<Segment>,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Field(String),
    Index(usize),
}

impl Mismatch {
    fn new(message: impl Into<String>) -> Self {
        Mismatch { path: Vec::new(), message: message.into() }
    }

    fn at(mut self, segment: Segment) -> Self {
        self.path.push(segment);
        self
    }

    /// The JSON path of the value, such as `$.items[2].price`.
    pub fn path(&self) -> String {
        let mut s = String::from("$");
        for seg in self.path.iter().rev() {
            match seg {
                Segment::Field(f) if f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                    s.push('.');
                    s.push_str(f);
                }
                Segment::Field(f) => s.push_str(&format!("[{}]", Value::String(f.clone()))),
                Segment::Index(i) => s.push_str(&format!("[{i}]")),
            }
        }
        s
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path(), self.message)
    }
}

impl std::error::Error for Mismatch {}

/// Avro bytes that cannot be read with the schema.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode Avro: {0}")]
pub struct DecodeError(String);

fn mismatch(node: &Node, codec: &Codec, v: &Value) -> Mismatch {
    Mismatch::new(format!("expected {}, got {}", codec.describe(node), got(v)))
}

/// A JSON value in a message: short, and strings quoted.
fn got(v: &Value) -> String {
    match v {
        Value::String(s) if s.chars().count() > 40 => {
            let cut: String = s.chars().take(40).collect();
            format!("{}...", Value::String(cut))
        }
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
        v => v.to_string(),
    }
}

impl Codec {
    /// Parses and compiles a schema given as Avro JSON.
    pub fn parse(text: &str) -> Result<Codec, SchemaError> {
        let schema = Schema::parse_str(text).map_err(|e| SchemaError(format!("invalid Avro schema: {e}")))?;
        Codec::new(schema)
    }

    pub fn new(schema: Schema) -> Result<Codec, SchemaError> {
        let resolved = ResolvedSchema::try_from(&schema).map_err(|e| SchemaError(e.to_string()))?;
        let mut compiler = Compiler { names: resolved.get_names(), records: Vec::new(), by_name: HashMap::new() };
        let root = compiler.node(&schema, &Default::default())?;
        let records = compiler.records.into_iter().map(|r| r.expect("compiled")).collect();
        // Defaults are encoded once all records exist (a default may hold one).
        let mut codec = Codec { schema: schema.clone(), root, records };
        codec.encode_defaults(&schema, &resolved)?;
        Ok(codec)
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The schema's full name, for named schemas (records, enums, fixed).
    pub fn name(&self) -> Option<String> {
        self.schema.name().map(|n| n.fullname(None))
    }

    fn encode_defaults(&mut self, schema: &Schema, resolved: &ResolvedSchema<'_>) -> Result<(), SchemaError> {
        // Walk the parsed records by name; the compiled ones carry the same names.
        let by_name: HashMap<String, usize> =
            self.records.iter().enumerate().map(|(i, r)| (r.name.clone(), i)).collect();
        let mut pending: Vec<(usize, usize, String, Value)> = Vec::new();
        let named = resolved.get_names().values().copied().chain(std::iter::once(schema));
        for s in named {
            let Schema::Record(rs) = s else { continue };
            let Some(&ri) = by_name.get(&rs.name.fullname(None)) else { continue };
            for (fi, f) in rs.fields.iter().enumerate() {
                if let Some(d) = &f.default
                    && !pending.iter().any(|p| (p.0, p.1) == (ri, fi))
                {
                    pending.push((ri, fi, f.name.clone(), d.clone()));
                }
            }
        }
        // A default may be a record whose own fields take their defaults: those
        // are encoded in the earlier rounds.
        while !pending.is_empty() {
            let mut failed = Vec::new();
            let before = pending.len();
            for (ri, fi, name, d) in pending {
                let mut out = Vec::new();
                match self.encode_default(&self.records[ri].fields[fi].node, &d, &mut out) {
                    Ok(()) => self.records[ri].fields[fi].default = Some(out),
                    Err(e) => failed.push((ri, fi, name, d, e)),
                }
            }
            if failed.len() == before {
                let (ri, _, name, _, e) = &failed[0];
                return Err(SchemaError(format!(
                    "the default of field `{name}` in `{}` does not fit its type: {e}",
                    self.records[*ri].name
                )));
            }
            pending = failed.into_iter().map(|(ri, fi, name, d, _)| (ri, fi, name, d)).collect();
        }
        Ok(())
    }

    /// A default is written per the Avro spec's JSON encoding, at every depth:
    /// bytes and fixed are code points (not base64), and a union's default is
    /// of its first branch (a later branch is accepted too, as other tools do).
    fn encode_default(&self, node: &Node, v: &Value, out: &mut Vec<u8>) -> Result<(), Mismatch> {
        let latin1 = |s: &str| -> Option<Vec<u8>> { s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect() };
        match (node, v) {
            (Node::Union(branches), _) => {
                let start = out.len();
                let mut first = None;
                for (i, b) in branches.iter().enumerate() {
                    write_long(out, i as i64);
                    match self.encode_default(b, v, out) {
                        Ok(()) => return Ok(()),
                        Err(e) => {
                            out.truncate(start);
                            first.get_or_insert(e);
                        }
                    }
                }
                Err(first.unwrap_or_else(|| mismatch(node, self, v)))
            }
            (Node::Bytes, Value::String(s)) => {
                write_bytes(out, &latin1(s).ok_or_else(|| mismatch(node, self, v))?);
                Ok(())
            }
            (Node::Fixed { size, .. }, Value::String(s)) => {
                let b = latin1(s).filter(|b| b.len() == *size).ok_or_else(|| mismatch(node, self, v))?;
                out.extend_from_slice(&b);
                Ok(())
            }
            (Node::Array(items), Value::Array(a)) => write_block(out, a.iter().enumerate(), |out, (i, x)| {
                self.encode_default(items, x, out).map_err(|e| e.at(Segment::Index(i)))
            }),
            (Node::Map(values), Value::Object(m)) => write_block(out, m.iter(), |out, (k, x)| {
                write_bytes(out, k.as_bytes());
                self.encode_default(values, x, out).map_err(|e| e.at(Segment::Field(k.clone())))
            }),
            (Node::Record(i), Value::Object(m)) => {
                for f in &self.records[*i].fields {
                    match (m.get(&f.name), &f.default) {
                        (Some(x), _) => {
                            self.encode_default(&f.node, x, out).map_err(|e| e.at(Segment::Field(f.name.clone())))?
                        }
                        (None, Some(d)) => out.extend_from_slice(d),
                        (None, None) => {
                            return Err(Mismatch::new("missing").at(Segment::Field(f.name.clone())));
                        }
                    }
                }
                Ok(())
            }
            _ => self.encode(node, v, out),
        }
    }

    /// Validates `v` against the schema and appends its Avro binary form to `out`.
    /// On a mismatch `out` may hold part of the value; the caller discards it.
    pub fn encode_value(&self, v: &Value, out: &mut Vec<u8>) -> Result<(), Mismatch> {
        self.encode(&self.root, v, out)
    }

    fn encode(&self, node: &Node, v: &Value, out: &mut Vec<u8>) -> Result<(), Mismatch> {
        let bad = || mismatch(node, self, v);
        match node {
            Node::Null => v.is_null().then_some(()).ok_or_else(bad),
            Node::Boolean => {
                out.push(v.as_bool().ok_or_else(bad)? as u8);
                Ok(())
            }
            Node::Int => {
                let n = integer(v).ok_or_else(bad)?;
                let n = i32::try_from(n).map_err(|_| bad_range(node, self, v))?;
                write_long(out, n.into());
                Ok(())
            }
            Node::Long => {
                write_long(out, integer(v).ok_or_else(bad)?);
                Ok(())
            }
            Node::Float => {
                let f = float(v).ok_or_else(bad)?;
                if f.is_finite() && f.abs() > f64::from(f32::MAX) {
                    return Err(bad_range(node, self, v));
                }
                out.extend_from_slice(&(f as f32).to_le_bytes());
                Ok(())
            }
            Node::Double => {
                out.extend_from_slice(&float(v).ok_or_else(bad)?.to_le_bytes());
                Ok(())
            }
            Node::String => {
                write_bytes(out, v.as_str().ok_or_else(bad)?.as_bytes());
                Ok(())
            }
            Node::Json => {
                let text = serde_json::to_string(v).expect("JSON values serialize");
                write_bytes(out, text.as_bytes());
                Ok(())
            }
            Node::Bytes => {
                let b = base64_of(v).ok_or_else(bad)?;
                write_bytes(out, &b);
                Ok(())
            }
            Node::Fixed { size, .. } => {
                let b = base64_of(v).ok_or_else(bad)?;
                if b.len() != *size {
                    return Err(Mismatch::new(format!("expected {}, got {} bytes", self.describe(node), b.len())));
                }
                out.extend_from_slice(&b);
                Ok(())
            }
            Node::Duration => {
                let b = base64_of(v).filter(|b| b.len() == 12).ok_or_else(bad)?;
                out.extend_from_slice(&b);
                Ok(())
            }
            Node::Uuid(repr) => {
                let s = v.as_str().ok_or_else(bad)?;
                let bytes = parse_uuid(s).ok_or_else(bad)?;
                match repr {
                    UuidRepr::String => write_bytes(out, s.as_bytes()),
                    UuidRepr::Bytes => write_bytes(out, &bytes),
                    UuidRepr::Fixed => out.extend_from_slice(&bytes),
                }
                Ok(())
            }
            Node::BigDecimal => {
                // Avro's big-decimal: bytes of the unscaled value, then the scale.
                let text = self.decimal_text(node, v)?;
                let d = parse_decimal(&text).ok_or_else(bad)?;
                let mut inner = Vec::new();
                write_bytes(&mut inner, &twos_complement(&d.digits, d.negative));
                write_long(&mut inner, d.scale as i64);
                write_bytes(out, &inner);
                Ok(())
            }
            Node::Decimal { precision, scale, fixed } => {
                let text = self.decimal_text(node, v)?;
                let d = parse_decimal(&text).ok_or_else(bad)?;
                let d = d.rescale(*scale).ok_or_else(|| {
                    Mismatch::new(format!("expected {}, got {} (too many decimal places)", self.describe(node), got(v)))
                })?;
                if d.precision() > *precision {
                    return Err(Mismatch::new(format!(
                        "expected {}, got {} (more than {precision} digits)",
                        self.describe(node),
                        got(v)
                    )));
                }
                let b = twos_complement(&d.digits, d.negative);
                match fixed {
                    None => write_bytes(out, &b),
                    Some(size) if b.len() <= *size => {
                        let fill = if d.negative { 0xff } else { 0 };
                        out.extend(std::iter::repeat_n(fill, size - b.len()));
                        out.extend_from_slice(&b);
                    }
                    Some(_) => return Err(bad_range(node, self, v)),
                }
                Ok(())
            }
            Node::Date => {
                let days = match v {
                    Value::String(s) => time::parse_date(s).ok_or_else(bad)?,
                    v => integer(v).and_then(|n| i32::try_from(n).ok()).ok_or_else(bad)?,
                };
                write_long(out, days.into());
                Ok(())
            }
            Node::TimeMillis | Node::TimeMicros => {
                let micros = match v {
                    Value::String(s) => time::parse_time(s).ok_or_else(bad)?,
                    v => {
                        let n = integer(v).ok_or_else(bad)?;
                        if matches!(node, Node::TimeMillis) { n.saturating_mul(1000) } else { n }
                    }
                };
                if !(0..86_400_000_000).contains(&micros) {
                    return Err(bad_range(node, self, v));
                }
                if matches!(node, Node::TimeMillis) && micros % 1000 != 0 {
                    return Err(Mismatch::new(format!(
                        "expected {}, got {} (finer than millis)",
                        self.describe(node),
                        got(v)
                    )));
                }
                match node {
                    Node::TimeMillis => write_long(out, micros / 1000),
                    _ => write_long(out, micros),
                }
                Ok(())
            }
            Node::Timestamp(unit) | Node::LocalTimestamp(unit) => {
                let local = matches!(node, Node::LocalTimestamp(_));
                let n = match v {
                    Value::String(s) => {
                        let nanos = time::parse_timestamp(s, local).ok_or_else(bad)?;
                        let step = match unit {
                            Unit::Millis => 1_000_000,
                            Unit::Micros => 1000,
                            Unit::Nanos => 1,
                        };
                        if nanos % step != 0 {
                            return Err(Mismatch::new(format!(
                                "expected {}, got {} (finer than {})",
                                self.describe(node),
                                got(v),
                                unit_name(*unit)
                            )));
                        }
                        match unit {
                            Unit::Millis => nanos.div_euclid(1_000_000),
                            Unit::Micros => nanos.div_euclid(1000),
                            Unit::Nanos => i64::try_from(nanos).map_err(|_| bad_range(node, self, v))?.into(),
                        }
                    }
                    v => integer(v).ok_or_else(bad)?.into(),
                };
                write_long(out, i64::try_from(n).map_err(|_| bad_range(node, self, v))?);
                Ok(())
            }
            Node::Enum { symbols, .. } => {
                let s = v.as_str().ok_or_else(bad)?;
                let i = symbols.iter().position(|x| x == s).ok_or_else(bad)?;
                write_long(out, i as i64);
                Ok(())
            }
            Node::Array(items) => {
                let a = v.as_array().ok_or_else(bad)?;
                write_block(out, a.iter().enumerate(), |out, (i, item)| {
                    self.encode(items, item, out).map_err(|e| e.at(Segment::Index(i)))
                })
            }
            Node::Map(values) => {
                let m = v.as_object().ok_or_else(bad)?;
                write_block(out, m.iter(), |out, (k, item)| {
                    write_bytes(out, k.as_bytes());
                    self.encode(values, item, out).map_err(|e| e.at(Segment::Field(k.clone())))
                })
            }
            Node::Union(branches) => self.encode_union(node, branches, v, out),
            Node::Record(i) => self.encode_record(node, &self.records[*i], v, out),
        }
    }

    fn encode_union(&self, node: &Node, branches: &[Node], v: &Value, out: &mut Vec<u8>) -> Result<(), Mismatch> {
        let null = branches.iter().position(|b| matches!(b, Node::Null));
        if v.is_null()
            && let Some(i) = null
        {
            write_long(out, i as i64);
            return Ok(());
        }
        // The common nullable field: report the inner type's own mismatch.
        if branches.len() == 2
            && let Some(n) = null
        {
            let i = 1 - n;
            write_long(out, i as i64);
            return self.encode(&branches[i], v, out);
        }
        // A number goes to the branch that holds it best: whole numbers to int or
        // long, others to double before float.
        let rank = |b: &Node| match (b, v) {
            (Node::Int | Node::Long, Value::Number(n)) if n.is_i64() || n.is_u64() => 0,
            (Node::Double, Value::Number(_)) => 1,
            (Node::Float, Value::Number(_)) => 2,
            _ => 3,
        };
        let mut order: Vec<usize> = (0..branches.len()).collect();
        order.sort_by_key(|&i| rank(&branches[i]));
        let start = out.len();
        for i in order {
            write_long(out, i as i64);
            if self.encode(&branches[i], v, out).is_ok() {
                return Ok(());
            }
            out.truncate(start);
        }
        Err(mismatch(node, self, v))
    }

    fn encode_record(&self, node: &Node, r: &RecordNode, v: &Value, out: &mut Vec<u8>) -> Result<(), Mismatch> {
        let obj = v.as_object().ok_or_else(|| mismatch(node, self, v))?;
        let mut seen = 0;
        for f in &r.fields {
            match obj.get(&f.name) {
                Some(value) => {
                    seen += 1;
                    self.encode(&f.node, value, out).map_err(|e| e.at(Segment::Field(f.name.clone())))?;
                }
                None => match &f.default {
                    Some(d) => out.extend_from_slice(d),
                    None => {
                        return Err(Mismatch::new(format!(
                            "missing; expected {} (the field has no default)",
                            self.describe(&f.node)
                        ))
                        .at(Segment::Field(f.name.clone())));
                    }
                },
            }
        }
        if seen < obj.len() {
            let extra = obj.keys().find(|k| !r.fields.iter().any(|f| &f.name == *k)).expect("an unknown key");
            return Err(Mismatch::new(format!("not a field of record `{}`", r.name)).at(Segment::Field(extra.clone())));
        }
        Ok(())
    }

    /// A decimal's text, or why the value cannot be one.
    fn decimal_text<'v>(&self, node: &Node, v: &'v Value) -> Result<std::borrow::Cow<'v, str>, Mismatch> {
        decimal_text(v).ok_or_else(|| match v {
            Value::Number(_) => Mismatch::new(format!(
                "expected {}, got {} (a JSON number with a fraction may have lost digits; give decimals as strings)",
                self.describe(node),
                got(v)
            )),
            _ => mismatch(node, self, v),
        })
    }

    /// What a schema node expects, for messages.
    fn describe(&self, node: &Node) -> String {
        match node {
            Node::Null => "null".into(),
            Node::Boolean => "boolean".into(),
            Node::Int => "int".into(),
            Node::Long => "long".into(),
            Node::Float => "float".into(),
            Node::Double => "double".into(),
            Node::Bytes => "bytes (base64)".into(),
            Node::String => "string".into(),
            Node::Json => "a JSON document".into(),
            Node::Array(items) => format!("array of {}", self.describe(items)),
            Node::Map(values) => format!("map of {}", self.describe(values)),
            Node::Union(branches) => {
                let names: Vec<String> = branches.iter().map(|b| self.describe(b)).collect();
                format!("one of [{}]", names.join(", "))
            }
            Node::Record(i) => format!("record `{}`", self.records[*i].name),
            Node::Enum { name, symbols } => format!("enum `{name}` ({})", symbols.join(", ")),
            Node::Fixed { name, size } => format!("fixed `{name}` of {size} bytes (base64)"),
            Node::Decimal { precision, scale, .. } => format!("decimal({precision},{scale})"),
            Node::BigDecimal => "big-decimal".into(),
            Node::Uuid(_) => "uuid".into(),
            Node::Date => "date (YYYY-MM-DD)".into(),
            Node::TimeMillis => "time-millis (HH:MM:SS.fff)".into(),
            Node::TimeMicros => "time-micros (HH:MM:SS.ffffff)".into(),
            Node::Timestamp(u) => format!("timestamp-{} (ISO 8601)", unit_name(*u)),
            Node::LocalTimestamp(u) => format!("local-timestamp-{} (ISO 8601 without offset)", unit_name(*u)),
            Node::Duration => "duration (12 bytes, base64)".into(),
        }
    }

    /// Reads one Avro datum (the whole of `bytes`) as a JSON value. The Kafka
    /// source uses [`Codec::decode_json`], which builds no tree.
    pub fn decode(&self, bytes: &[u8]) -> Result<Value, DecodeError> {
        let mut out = Vec::with_capacity(bytes.len() * 2);
        self.decode_json(bytes, &mut out)?;
        Ok(serde_json::from_slice(&out).expect("the decoder writes JSON"))
    }

    /// Reads one Avro datum (the whole of `bytes`) and appends it to `out` as
    /// JSON text: record fields in the schema's order, map entries in the
    /// datum's.
    pub fn decode_json(&self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
        let mut r = Reader { buf: bytes, items: bytes.len() + 65_536 };
        self.write_json(&self.root, &mut r, out)?;
        if !r.buf.is_empty() {
            return Err(DecodeError(format!("{} bytes left after the value", r.buf.len())));
        }
        Ok(())
    }

    fn write_json(&self, node: &Node, r: &mut Reader<'_>, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        match node {
            Node::Null => out.extend_from_slice(b"null"),
            Node::Boolean => out.extend_from_slice(if r.take(1)?[0] != 0 { b"true" } else { b"false" }),
            Node::Int | Node::Long => json_text(out, &r.long()?),
            Node::Float => {
                let f = f32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"));
                // Through its shortest text, so that 0.1f32 reads as 0.1.
                json_float(out, f.to_string().parse::<f64>().unwrap_or(f64::from(f)));
            }
            Node::Double => json_float(out, f64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"))),
            Node::String | Node::Uuid(UuidRepr::String) => json_text(out, r.str()?),
            Node::Json => {
                // The document itself (compacted), or the text when it is not JSON.
                let s = r.str()?;
                match serde_json::from_str::<Value>(s) {
                    Ok(v) => json_text(out, &v),
                    Err(_) => json_text(out, s),
                }
            }
            Node::Bytes => json_text(out, &B64.encode(r.bytes()?)),
            Node::Fixed { size, .. } => json_text(out, &B64.encode(r.take(*size)?)),
            Node::Duration => json_text(out, &B64.encode(r.take(12)?)),
            Node::Uuid(UuidRepr::Fixed) => json_text(out, &format_uuid(r.take(16)?)),
            Node::Uuid(UuidRepr::Bytes) => {
                let b = r.bytes()?;
                if b.len() != 16 {
                    return Err(DecodeError(format!("a uuid of {} bytes", b.len())));
                }
                json_text(out, &format_uuid(b));
            }
            Node::Decimal { scale, fixed, .. } => {
                let b = match fixed {
                    Some(size) => r.take(*size)?,
                    None => r.bytes()?,
                };
                json_text(out, &decimal_string(b, *scale));
            }
            Node::BigDecimal => {
                let inner = r.bytes()?;
                let mut ir = Reader { buf: inner, items: 0 };
                let digits = ir.bytes()?;
                let scale =
                    usize::try_from(ir.long()?).map_err(|_| DecodeError("negative big-decimal scale".into()))?;
                json_text(out, &decimal_string(digits, scale));
            }
            Node::Date => {
                let days = i32::try_from(r.long()?).map_err(|_| DecodeError("date out of range".into()))?;
                json_text(out, &time::format_date(days).ok_or_else(|| DecodeError("date out of range".into()))?);
            }
            Node::TimeMillis => json_text(out, &time::format_time(r.long()?.saturating_mul(1000))),
            Node::TimeMicros => json_text(out, &time::format_time(r.long()?)),
            Node::Timestamp(u) | Node::LocalTimestamp(u) => {
                let n = i128::from(r.long()?);
                let nanos = match u {
                    Unit::Millis => n * 1_000_000,
                    Unit::Micros => n * 1000,
                    Unit::Nanos => n,
                };
                let local = matches!(node, Node::LocalTimestamp(_));
                let text =
                    time::format_timestamp(nanos, local).ok_or_else(|| DecodeError("timestamp out of range".into()))?;
                json_text(out, &text);
            }
            Node::Enum { symbols, .. } => {
                let i = r.long()?;
                let s = usize::try_from(i).ok().and_then(|i| symbols.get(i));
                json_text(out, s.ok_or_else(|| DecodeError(format!("enum index {i} out of range")))?);
            }
            Node::Array(items) => {
                out.push(b'[');
                let mut first = true;
                r.blocks(|r| {
                    if !std::mem::take(&mut first) {
                        out.push(b',');
                    }
                    self.write_json(items, r, out)
                })?;
                out.push(b']');
            }
            Node::Map(values) => {
                out.push(b'{');
                let mut first = true;
                r.blocks(|r| {
                    if !std::mem::take(&mut first) {
                        out.push(b',');
                    }
                    json_text(out, r.str()?);
                    out.push(b':');
                    self.write_json(values, r, out)
                })?;
                out.push(b'}');
            }
            Node::Union(branches) => {
                let i = r.long()?;
                let b = usize::try_from(i).ok().and_then(|i| branches.get(i));
                self.write_json(b.ok_or_else(|| DecodeError(format!("union branch {i} out of range")))?, r, out)?;
            }
            Node::Record(i) => {
                out.push(b'{');
                for (n, f) in self.records[*i].fields.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    json_text(out, &f.name);
                    out.push(b':');
                    self.write_json(&f.node, r, out)?;
                }
                out.push(b'}');
            }
        }
        Ok(())
    }
}

/// Appends `v` as JSON; writing to a `Vec` cannot fail.
fn json_text<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    serde_json::to_writer(&mut *out, v).expect("JSON to memory");
}

/// A finite number as a JSON number; NaN and the infinities, which JSON lacks,
/// as the strings Avro's JSON encoding uses.
fn json_float(out: &mut Vec<u8>, f: f64) {
    if f.is_finite() {
        json_text(out, &f);
    } else if f.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if f > 0.0 {
        out.extend_from_slice(b"\"Infinity\"");
    } else {
        out.extend_from_slice(b"\"-Infinity\"");
    }
}

fn unit_name(u: Unit) -> &'static str {
    match u {
        Unit::Millis => "millis",
        Unit::Micros => "micros",
        Unit::Nanos => "nanos",
    }
}

fn bad_range(node: &Node, codec: &Codec, v: &Value) -> Mismatch {
    Mismatch::new(format!("expected {}, got {} (out of range)", codec.describe(node), got(v)))
}

struct Compiler<'s> {
    names: &'s HashMap<Name, &'s Schema>,
    records: Vec<Option<RecordNode>>,
    by_name: HashMap<String, usize>,
}

impl Compiler<'_> {
    fn node(&mut self, s: &Schema, attrs: &std::collections::BTreeMap<String, Value>) -> Result<Node, SchemaError> {
        Ok(match s {
            Schema::Null => Node::Null,
            Schema::Boolean => Node::Boolean,
            Schema::Int => Node::Int,
            Schema::Long => Node::Long,
            Schema::Float => Node::Float,
            Schema::Double => Node::Double,
            Schema::Bytes => Node::Bytes,
            Schema::String if attrs.get(JSON_ATTRIBUTE) == Some(&Value::Bool(true)) => Node::Json,
            Schema::String => Node::String,
            Schema::Array(a) => Node::Array(Box::new(self.node(&a.items, attrs)?)),
            Schema::Map(m) => Node::Map(Box::new(self.node(&m.types, attrs)?)),
            Schema::Union(u) => {
                Node::Union(u.variants().iter().map(|v| self.node(v, attrs)).collect::<Result<_, _>>()?)
            }
            Schema::Record(r) => {
                let full = r.name.fullname(None);
                if let Some(&i) = self.by_name.get(&full) {
                    return Ok(Node::Record(i));
                }
                let i = self.records.len();
                self.records.push(None);
                self.by_name.insert(full.clone(), i);
                let fields = r.fields.iter().map(|f| self.field(f)).collect::<Result<_, _>>()?;
                self.records[i] = Some(RecordNode { name: full, fields });
                Node::Record(i)
            }
            Schema::Enum(e) => Node::Enum { name: e.name.fullname(None).into(), symbols: e.symbols.clone().into() },
            Schema::Fixed(f) => Node::Fixed { name: f.name.fullname(None).into(), size: f.size },
            Schema::Decimal(d) => Node::Decimal {
                precision: d.precision,
                scale: d.scale,
                fixed: match &d.inner {
                    InnerDecimalSchema::Bytes => None,
                    InnerDecimalSchema::Fixed(f) => Some(f.size),
                },
            },
            Schema::BigDecimal => Node::BigDecimal,
            Schema::Uuid(UuidSchema::String) => Node::Uuid(UuidRepr::String),
            Schema::Uuid(UuidSchema::Bytes) => Node::Uuid(UuidRepr::Bytes),
            Schema::Uuid(UuidSchema::Fixed(_)) => Node::Uuid(UuidRepr::Fixed),
            Schema::Date => Node::Date,
            Schema::TimeMillis => Node::TimeMillis,
            Schema::TimeMicros => Node::TimeMicros,
            Schema::TimestampMillis => Node::Timestamp(Unit::Millis),
            Schema::TimestampMicros => Node::Timestamp(Unit::Micros),
            Schema::TimestampNanos => Node::Timestamp(Unit::Nanos),
            Schema::LocalTimestampMillis => Node::LocalTimestamp(Unit::Millis),
            Schema::LocalTimestampMicros => Node::LocalTimestamp(Unit::Micros),
            Schema::LocalTimestampNanos => Node::LocalTimestamp(Unit::Nanos),
            Schema::Duration(_) => Node::Duration,
            Schema::Ref { name } => {
                let full = name.fullname(None);
                if let Some(&i) = self.by_name.get(&full) {
                    return Ok(Node::Record(i));
                }
                let target = self.names.get(name).ok_or_else(|| SchemaError(format!("unknown type `{full}`")))?;
                self.node(target, attrs)?
            }
        })
    }

    fn field(&mut self, f: &RecordField) -> Result<Field, SchemaError> {
        // Defaults are encoded after compiling (see `Codec::encode_defaults`).
        Ok(Field { name: f.name.clone(), node: self.node(&f.schema, &f.custom_attributes)?, default: None })
    }
}

fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => {
            n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18).map(|f| f as i64))
        }
        _ => None,
    }
}

fn float(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

fn base64_of(v: &Value) -> Option<Vec<u8>> {
    B64.decode(v.as_str()?).ok()
}

/// A decimal's text: a string, or a whole JSON number. A number with a fraction
/// or an exponent has been through a double, which may have dropped digits
/// (`1.000000000000000001` reads as `1`), so it is refused rather than trusted.
fn decimal_text(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        Value::String(s) => Some(s.as_str().into()),
        Value::Number(n) if !n.is_f64() => Some(n.to_string().into()),
        _ => None,
    }
}

/// Most digits a decimal may have (Avro itself sets no limit).
const MAX_DIGITS: usize = 1000;

/// A decimal as its unscaled digits (big-endian base 10, no leading zeros).
struct Decimal {
    negative: bool,
    digits: Vec<u8>,
    scale: usize,
}

impl Decimal {
    /// The same value with `scale` decimal places; `None` if that would cut
    /// non-zero digits.
    fn rescale(mut self, scale: usize) -> Option<Decimal> {
        while self.scale > scale {
            if self.digits.last().is_some_and(|&d| d != 0) {
                return None;
            }
            self.digits.pop();
            self.scale -= 1;
        }
        if scale - self.scale > MAX_DIGITS {
            return None;
        }
        if !self.digits.is_empty() {
            self.digits.extend(std::iter::repeat_n(0, scale - self.scale));
        }
        self.scale = scale;
        Some(self)
    }

    fn precision(&self) -> usize {
        self.digits.len()
    }
}

/// `-12.3400`, `5`, `1e3`, `1.5E-2`.
fn parse_decimal(s: &str) -> Option<Decimal> {
    let (negative, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Bounds, so that a hostile value costs no more than a long one.
    if int.len() + frac.len() > MAX_DIGITS || exp.unsigned_abs() > MAX_DIGITS as u64 {
        return None;
    }
    let mut digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
    let mut scale = frac.len() as i64 - exp;
    if scale < 0 {
        digits.extend(std::iter::repeat_n(0, (-scale) as usize));
        scale = 0;
    }
    let lead = digits.iter().take_while(|&&d| d == 0).count();
    digits.drain(..lead);
    Some(Decimal { negative: negative && !digits.is_empty(), digits, scale: usize::try_from(scale).ok()? })
}

/// Base-10 digits to minimal big-endian two's complement bytes.
fn twos_complement(digits: &[u8], negative: bool) -> Vec<u8> {
    let mut mag: Vec<u8> = Vec::new(); // little-endian base 256
    for &d in digits {
        let mut carry = u32::from(d);
        for b in mag.iter_mut() {
            let x = u32::from(*b) * 10 + carry;
            *b = x as u8;
            carry = x >> 8;
        }
        while carry > 0 {
            mag.push(carry as u8);
            carry >>= 8;
        }
    }
    if negative {
        // Two's complement: invert and add one.
        let mut carry = 1u16;
        for b in mag.iter_mut() {
            let x = u16::from(!*b) + carry;
            *b = x as u8;
            carry = x >> 8;
        }
        if mag.last().is_none_or(|&b| b & 0x80 == 0) {
            mag.push(0xff);
        }
    } else if mag.last().is_none_or(|&b| b & 0x80 != 0) {
        mag.push(0);
    }
    // Minimal: drop redundant sign bytes.
    while mag.len() > 1 {
        let (top, next) = (mag[mag.len() - 1], mag[mag.len() - 2]);
        if (top == 0 && next & 0x80 == 0) || (top == 0xff && next & 0x80 != 0) {
            mag.pop();
        } else {
            break;
        }
    }
    mag.reverse();
    mag
}

/// Big-endian two's complement bytes, `scale` decimal places, as text.
fn decimal_string(bytes: &[u8], scale: usize) -> String {
    let negative = bytes.first().is_some_and(|&b| b & 0x80 != 0);
    let mut mag: Vec<u8> = bytes.to_vec();
    if negative {
        let mut carry = 1u16;
        for b in mag.iter_mut().rev() {
            let x = u16::from(!*b) + carry;
            *b = x as u8;
            carry = x >> 8;
        }
    }
    // Repeated division by 10 of the big-endian magnitude.
    let mut digits = Vec::new();
    while mag.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in mag.iter_mut() {
            let x = (rem << 8) | u32::from(*b);
            *b = (x / 10) as u8;
            rem = x % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    while digits.len() <= scale {
        digits.push(b'0');
    }
    digits.reverse();
    let (int, frac) = digits.split_at(digits.len() - scale);
    let mut s = String::with_capacity(digits.len() + 2);
    if negative {
        s.push('-');
    }
    s.push_str(std::str::from_utf8(int).expect("digits"));
    if scale > 0 {
        s.push('.');
        s.push_str(std::str::from_utf8(frac).expect("digits"));
    }
    s
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let hex: Vec<u8> = b.iter().copied().filter(|&c| c != b'-').collect();
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

fn format_uuid(b: &[u8]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn write_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// An array's or a map's items: one block with their count (none when empty),
/// then the end marker.
fn write_block<T, E>(
    out: &mut Vec<u8>,
    items: impl ExactSizeIterator<Item = T>,
    mut item: impl FnMut(&mut Vec<u8>, T) -> Result<(), E>,
) -> Result<(), E> {
    if items.len() > 0 {
        write_long(out, items.len() as i64);
        for x in items {
            item(out, x)?;
        }
    }
    out.push(0);
    Ok(())
}

fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

struct Reader<'a> {
    buf: &'a [u8],
    /// Array and map items still allowed: nulls and empty records take no
    /// bytes, so the input's length alone does not bound them.
    items: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError("the value is cut short".into()));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn long(&mut self) -> Result<i64, DecodeError> {
        let mut z: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok((z >> 1) as i64 ^ -((z & 1) as i64));
            }
        }
        Err(DecodeError("a variable-length integer runs past 10 bytes".into()))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = usize::try_from(self.long()?).map_err(|_| DecodeError("negative length".into()))?;
        self.take(n)
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| DecodeError("a string is not UTF-8".into()))
    }

    /// Array and map blocks: a count (negative: followed by a byte size), items, until 0.
    fn blocks(&mut self, mut item: impl FnMut(&mut Self) -> Result<(), DecodeError>) -> Result<(), DecodeError> {
        loop {
            let mut n = self.long()?;
            if n == 0 {
                return Ok(());
            }
            if n < 0 {
                n = n.checked_neg().ok_or_else(|| DecodeError("a block count out of range".into()))?;
                self.long()?;
            }
            // More items than the value could hold is damage, not a reason to allocate.
            let n_items = usize::try_from(n).unwrap_or(usize::MAX);
            if n_items > self.items {
                return Err(DecodeError(format!("a block of {n} items in {} bytes", self.buf.len())));
            }
            self.items -= n_items;
            for _ in 0..n {
                item(self)?;
            }
        }
    }
}

mod stream;
#[cfg(test)]
mod tests;
