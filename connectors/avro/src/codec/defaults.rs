//! Field defaults, encoded once when the schema is compiled so that a missing
//! field costs a copy. A default is JSON in the Avro spec's own encoding, which
//! differs from the codec's (bytes and fixed are code points, not base64; a
//! union's default is of its first branch), and may be a record whose fields
//! take defaults of their own, so defaults are encoded in rounds until all fit.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::ResolvedSchema;
use serde_json::Value;

use super::binary::{write_block, write_bytes, write_long};
use super::schema::Node;
use super::{Codec, Mismatch, SchemaError, Segment, mismatch};

impl Codec {
    pub(super) fn encode_defaults(
        &mut self,
        schema: &Schema,
        resolved: &ResolvedSchema<'_>,
    ) -> Result<(), SchemaError> {
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
}
