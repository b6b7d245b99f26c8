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
//!
//! Layout: `schema` compiles the parsed schema into the node tree the codec
//! walks, and says what a node expects; `defaults` encodes field defaults once,
//! at compile time; `encode` writes a JSON value as Avro binary, and `stream`
//! does the same straight from JSON text; `decode` reads Avro binary back as
//! JSON text; `decimal` converts decimals between text and two's complement
//! bytes; `binary` holds Avro's primitive encoding (zig-zag varints,
//! length-prefixed bytes, array and map blocks).

use std::collections::HashMap;
use std::fmt;

use apache_avro::Schema;
use apache_avro::schema::ResolvedSchema;
use serde_json::Value;

use binary::Reader;
use schema::{Compiler, Node, RecordNode};

mod binary;
mod decimal;
mod decode;
mod defaults;
mod encode;
mod schema;
mod stream;
#[cfg(test)]
mod tests;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Field attribute that marks a string as holding a JSON document.
pub const JSON_ATTRIBUTE: &str = "flowgate.json";

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

fn bad_range(node: &Node, codec: &Codec, v: &Value) -> Mismatch {
    Mismatch::new(format!("expected {}, got {} (out of range)", codec.describe(node), got(v)))
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

    /// Validates `v` against the schema and appends its Avro binary form to `out`.
    /// On a mismatch `out` may hold part of the value; the caller discards it.
    pub fn encode_value(&self, v: &Value, out: &mut Vec<u8>) -> Result<(), Mismatch> {
        self.encode(&self.root, v, out)
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
}
