//! Avro binary to JSON text: one walk of the compiled tree over the bytes,
//! writing JSON as it reads, with no value tree in between. Damaged input is a
//! `DecodeError`, never a panic; values come out in the codec's JSON
//! conventions (base64 bytes, decimal and time strings, `NaN`/`Infinity`).

use base64::Engine as _;
use serde_json::Value;

use super::binary::Reader;
use super::decimal::decimal_string;
use super::schema::{Node, Unit, UuidRepr};
use super::{B64, Codec, DecodeError};
use crate::time;

impl Codec {
    pub(super) fn write_json(&self, node: &Node, r: &mut Reader<'_>, out: &mut Vec<u8>) -> Result<(), DecodeError> {
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

fn format_uuid(b: &[u8]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}
