//! JSON text straight to Avro: the encoder driven by the JSON parser, so that no
//! JSON tree is built for the common shapes (records, arrays, maps, scalars,
//! nullable fields). Object keys are borrowed from the input, record fields are
//! written in place while they arrive in schema order, and only unions of more
//! than one non-null type and JSON-text fields go through a parsed value.
//! Mismatches carry the same paths and messages as [`Codec::encode_value`]
//! (for a value with several, the first found may differ: this one reads in
//! input order); a record key given twice is refused here, where a parsed
//! value would have kept the last; map entries keep the input's order.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

use serde::Deserialize as _;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::binary::{write_bytes, write_long};
use super::schema::{Node, RecordNode};
use super::{Codec, Mismatch, Segment};

impl Codec {
    /// Parses `json` and encodes it in one pass; on a mismatch or invalid JSON,
    /// the reason. `out` may then hold part of the value; the caller discards it.
    pub fn encode_json(&self, json: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let failed = RefCell::new(None);
        let mut de = serde_json::Deserializer::from_slice(json);
        let seed = Seed { codec: self, node: &self.root, out, failed: &failed };
        match seed.deserialize(&mut de).and_then(|()| de.end()) {
            Ok(()) => Ok(()),
            Err(e) => match failed.into_inner() {
                Some(m) => Err(m.to_string()),
                None => Err(format!("the value is not JSON: {e}")),
            },
        }
    }
}

struct Seed<'a> {
    codec: &'a Codec,
    node: &'a Node,
    out: &'a mut Vec<u8>,
    /// The mismatch behind an error, with its path (serde's errors carry text only).
    failed: &'a RefCell<Option<Mismatch>>,
}

impl Seed<'_> {
    fn fail<E: de::Error>(&self, m: Mismatch) -> E {
        fail(self.failed, m)
    }

    fn wrap<E: de::Error>(&self, e: E, segment: impl FnOnce() -> Segment) -> E {
        wrap(self.failed, e, segment)
    }

    /// A scalar, through the tree encoder (which owns the conversions).
    fn scalar<E: de::Error>(self, v: Value) -> Result<(), E> {
        self.codec.encode(self.node, &v, self.out).map_err(|m| self.fail(m))
    }

    /// A nullable field (`["null", T]`) with a non-null value: the branch index
    /// is written, then the value with `T`.
    fn non_null(self) -> Self {
        match self.node {
            Node::Union(b) if b.len() == 2 && b.iter().any(|n| matches!(n, Node::Null)) => {
                let i = usize::from(matches!(b[0], Node::Null));
                write_long(self.out, i as i64);
                Seed { node: &b[i], ..self }
            }
            _ => self,
        }
    }
}

/// Keeps the mismatch behind a parser error (serde's errors carry text only).
fn fail<E: de::Error>(failed: &RefCell<Option<Mismatch>>, m: Mismatch) -> E {
    *failed.borrow_mut() = Some(m);
    E::custom("the value does not fit the schema")
}

/// Adds `segment` to the path of a mismatch coming up from below.
fn wrap<E: de::Error>(failed: &RefCell<Option<Mismatch>>, e: E, segment: impl FnOnce() -> Segment) -> E {
    let mut failed = failed.borrow_mut();
    if let Some(m) = failed.take() {
        *failed = Some(m.at(segment()));
    }
    e
}

/// Whether the tree encoder must see the whole value: unions other than
/// nullable ones (the branch depends on the value) and JSON-text fields.
fn needs_tree(node: &Node) -> bool {
    match node {
        Node::Json => true,
        Node::Union(b) => !(b.len() == 2 && b.iter().any(|n| matches!(n, Node::Null))) || b.iter().any(needs_tree),
        _ => false,
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if needs_tree(self.node) {
            let v = Value::deserialize(d)?;
            return self.codec.encode(self.node, &v, self.out).map_err(|m| self.fail(m));
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
        self.non_null().scalar(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<(), E> {
        self.non_null().scalar(Value::from(n))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<(), E> {
        self.non_null().scalar(Value::from(n))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<(), E> {
        self.non_null().scalar(Value::from(n))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        let seed = self.non_null();
        if let Node::String = seed.node {
            // The common case, without an owned copy.
            write_bytes(seed.out, s.as_bytes());
            return Ok(());
        }
        seed.scalar(Value::String(s.to_string()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let seed = self.non_null();
        let Node::Array(items) = seed.node else {
            let rest = Value::Array(Vec::new());
            return Err(seed.fail(super::mismatch(seed.node, seed.codec, &rest)));
        };
        // A block needs its count first: the items are written aside.
        let mut body = Vec::new();
        let mut n = 0usize;
        loop {
            let item = Seed { codec: seed.codec, node: items, out: &mut body, failed: seed.failed };
            match seq.next_element_seed(item) {
                Ok(Some(())) => n += 1,
                Ok(None) => break,
                Err(e) => return Err(seed.wrap(e, || Segment::Index(n))),
            }
        }
        if n > 0 {
            write_long(seed.out, n as i64);
            seed.out.extend_from_slice(&body);
        }
        seed.out.push(0);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let seed = self.non_null();
        match seed.node {
            Node::Record(i) => record(seed.codec, &seed.codec.records[*i], seed.out, seed.failed, map),
            Node::Map(values) => {
                let mut body = Vec::new();
                let mut n = 0usize;
                while let Some(key) = map.next_key_seed(Key)? {
                    write_bytes(&mut body, key.as_bytes());
                    let value = Seed { codec: seed.codec, node: values, out: &mut body, failed: seed.failed };
                    map.next_value_seed(value).map_err(|e| seed.wrap(e, || Segment::Field(key.to_string())))?;
                    n += 1;
                }
                if n > 0 {
                    write_long(seed.out, n as i64);
                    seed.out.extend_from_slice(&body);
                }
                seed.out.push(0);
                Ok(())
            }
            node => Err(seed.fail(super::mismatch(node, seed.codec, &Value::Object(Default::default())))),
        }
    }
}

/// An object key, borrowed from the input unless it has escapes (serde's own
/// `Cow<str>` always copies).
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s.to_string()))
    }
}

/// A record's fields: written in place while they come in schema order, else
/// set aside and put in order at the end; missing ones take their default.
fn record<'de, A: MapAccess<'de>>(
    codec: &Codec,
    rec: &RecordNode,
    out: &mut Vec<u8>,
    failed: &RefCell<Option<Mismatch>>,
    mut map: A,
) -> Result<(), A::Error> {
    // Fields 0..in_order are in `out`; later ones that arrived are in `aside`.
    let mut in_order = 0;
    let mut aside: Vec<u8> = Vec::new();
    let mut spans: Vec<Option<(usize, usize)>> = Vec::new();
    while let Some(key) = map.next_key_seed(Key)? {
        let Some(i) = rec.fields.iter().position(|f| f.name == *key) else {
            return Err(fail(
                failed,
                Mismatch::new(format!("not a field of record `{}`", rec.name)).at(Segment::Field(key.into_owned())),
            ));
        };
        let seen = i < in_order || spans.get(i).is_some_and(Option::is_some);
        if seen {
            return Err(fail(failed, Mismatch::new("appears twice").at(Segment::Field(key.into_owned()))));
        }
        let field = &rec.fields[i];
        let in_field = |e: A::Error| wrap(failed, e, || Segment::Field(field.name.clone()));
        if i == in_order && aside.is_empty() {
            map.next_value_seed(Seed { codec, node: &field.node, out, failed }).map_err(in_field)?;
            in_order += 1;
        } else {
            if spans.len() < rec.fields.len() {
                spans.resize(rec.fields.len(), None);
            }
            let start = aside.len();
            map.next_value_seed(Seed { codec, node: &field.node, out: &mut aside, failed }).map_err(in_field)?;
            spans[i] = Some((start, aside.len()));
        }
    }
    for (i, f) in rec.fields.iter().enumerate().skip(in_order) {
        match (spans.get(i).copied().flatten(), &f.default) {
            (Some((s, e)), _) => out.extend_from_slice(&aside[s..e]),
            (None, Some(d)) => out.extend_from_slice(d),
            (None, None) => {
                return Err(fail(
                    failed,
                    Mismatch::new(format!("missing; expected {} (the field has no default)", codec.describe(&f.node)))
                        .at(Segment::Field(f.name.clone())),
                ));
            }
        }
    }
    Ok(())
}
