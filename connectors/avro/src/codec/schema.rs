//! The compiled schema: the node tree the encoder and decoder walk, built once
//! from `apache-avro`'s parsed `Schema` by the `Compiler` (records are kept in
//! a table and referred to by index, so a record may contain itself; a string
//! marked with the JSON attribute becomes a `Json` node), and the wording of
//! what each node expects, for mismatch messages.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::{InnerDecimalSchema, Name, RecordField, UuidSchema};
use serde_json::Value;

use super::{Codec, JSON_ATTRIBUTE, SchemaError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unit {
    Millis,
    Micros,
    Nanos,
}

#[derive(Clone, Debug)]
pub(super) enum Node {
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
pub(super) enum UuidRepr {
    String,
    Bytes,
    Fixed,
}

#[derive(Debug)]
pub(super) struct Field {
    pub(super) name: String,
    pub(super) node: Node,
    /// The default, already encoded.
    pub(super) default: Option<Vec<u8>>,
}

#[derive(Debug)]
pub(super) struct RecordNode {
    pub(super) name: String,
    pub(super) fields: Vec<Field>,
}

pub(super) struct Compiler<'s> {
    pub(super) names: &'s HashMap<Name, &'s Schema>,
    pub(super) records: Vec<Option<RecordNode>>,
    pub(super) by_name: HashMap<String, usize>,
}

impl Compiler<'_> {
    pub(super) fn node(
        &mut self,
        s: &Schema,
        attrs: &std::collections::BTreeMap<String, Value>,
    ) -> Result<Node, SchemaError> {
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

impl Codec {
    /// What a schema node expects, for messages.
    pub(super) fn describe(&self, node: &Node) -> String {
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
}

pub(super) fn unit_name(u: Unit) -> &'static str {
    match u {
        Unit::Millis => "millis",
        Unit::Micros => "micros",
        Unit::Nanos => "nanos",
    }
}
