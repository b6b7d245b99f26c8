//! JSON values to Avro binary: one walk of the compiled tree that validates and
//! writes at once, and on a mismatch returns the JSON path and what the schema
//! expected there. Also the conversions from JSON that the codec's conventions
//! allow (numbers, the `NaN`/`Infinity` strings, base64, uuid text), and the
//! choice of a union's branch.

use base64::Engine as _;
use serde_json::Value;

use super::binary::{write_block, write_bytes, write_long};
use super::decimal::{decimal_text, parse_decimal, twos_complement};
use super::schema::{Node, RecordNode, Unit, UuidRepr, unit_name};
use super::{B64, Codec, Mismatch, Segment, bad_range, got, mismatch};
use crate::time;

impl Codec {
    pub(super) fn encode(&self, node: &Node, v: &Value, out: &mut Vec<u8>) -> Result<(), Mismatch> {
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
