use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};
use smallvec::SmallVec;

/// One header of a record: Kafka-style, a name and raw bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: Arc<str>,
    pub value: Bytes,
}

/// One metadata field's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaValue {
    Int(i64),
    Text(Arc<str>),
}

impl From<i64> for MetaValue {
    fn from(n: i64) -> Self {
        MetaValue::Int(n)
    }
}

impl From<Arc<str>> for MetaValue {
    fn from(s: Arc<str>) -> Self {
        MetaValue::Text(s)
    }
}

impl std::fmt::Display for MetaValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetaValue::Int(n) => write!(f, "{n}"),
            MetaValue::Text(s) => f.write_str(s),
        }
    }
}

/// Where a record came from, as named fields its source declares
/// ([`SourceConnector::metadata`](crate::SourceConnector::metadata)): `topic`,
/// `partition` and `offset` for Kafka, `path`, `line` and `offset` for a file.
/// Read-only for transforms and sinks: sources set it; templates
/// (`${meta.topic}`), plugins and dead letters read it by name, so a new
/// source adds fields without a change anywhere else.
///
/// Names are `&'static str` and the first three fields are stored inline: a
/// record's metadata costs no allocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata(SmallVec<[(&'static str, MetaValue); 3]>);

impl Metadata {
    /// Adds a field (sources set each name once).
    pub fn with(mut self, name: &'static str, value: impl Into<MetaValue>) -> Self {
        self.0.push((name, value.into()));
        self
    }

    pub fn get(&self, name: &str) -> Option<&MetaValue> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    pub fn text(&self, name: &str) -> Option<&Arc<str>> {
        match self.get(name)? {
            MetaValue::Text(s) => Some(s),
            MetaValue::Int(_) => None,
        }
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        match self.get(name)? {
            MetaValue::Int(n) => Some(*n),
            MetaValue::Text(_) => None,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &MetaValue)> {
        self.0.iter().map(|(n, v)| (*n, v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The fields as a JSON object (`null` when there are none).
    pub fn to_json(&self) -> Value {
        if self.is_empty() {
            return Value::Null;
        }
        let fields = self.iter().map(|(n, v)| {
            let v = match v {
                MetaValue::Int(i) => Value::from(*i),
                MetaValue::Text(s) => Value::from(s.as_ref()),
            };
            (n.to_string(), v)
        });
        Value::Object(fields.collect())
    }
}

/// The unit of data. Values are opaque bytes; most connectors exchange JSON.
///
/// Strings that repeat on every record (topic, path, header names) are `Arc<str>`
/// so that a record costs one allocation for its value and nothing more.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<Header>,
    /// Milliseconds since the Unix epoch, when known.
    pub timestamp: Option<i64>,
    pub meta: Metadata,
    /// The Avro schema of the value, when a step or the source knows it (an
    /// `avro` step, a table of a change stream); Avro sinks encode with it.
    pub schema: Option<Arc<ValueSchema>>,
}

/// An Avro schema shared by the records it describes. `id` is unique within
/// the process, so that sinks can cache what they derive from a schema.
#[derive(Debug, PartialEq, Eq)]
pub struct ValueSchema {
    pub id: u64,
    /// The schema as Avro JSON.
    pub avro: Arc<str>,
    /// The schema's full name (records, enums, fixed).
    pub name: Option<Arc<str>>,
}

impl ValueSchema {
    pub fn new(avro: impl Into<Arc<str>>, name: Option<Arc<str>>) -> Arc<ValueSchema> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Arc::new(ValueSchema { id, avro: avro.into(), name })
    }
}

impl Record {
    pub fn from_value(value: impl Into<Bytes>) -> Self {
        Record { value: value.into(), ..Record::default() }
    }

    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers.iter().find(|h| &*h.name == name).map(|h| &h.value)
    }

    /// Sets a header, replacing an existing one of the same name.
    pub fn set_header(&mut self, name: impl Into<Arc<str>>, value: impl Into<Bytes>) {
        let name = name.into();
        let value = value.into();
        match self.headers.iter_mut().find(|h| h.name == name) {
            Some(h) => h.value = value,
            None => self.headers.push(Header { name, value }),
        }
    }

    /// Approximate heap size, used for memory accounting and metrics.
    pub fn size_hint(&self) -> usize {
        self.value.len()
            + self.key.as_ref().map_or(0, Bytes::len)
            + self.headers.iter().map(|h| h.name.len() + h.value.len()).sum::<usize>()
    }
}

/// Bytes as JSON: embedded when they are JSON, a string when text, else base64;
/// with the encoding used (`json`, `text` or `base64`).
pub fn bytes_json(b: &[u8]) -> (Value, &'static str) {
    if let Ok(v) = serde_json::from_slice::<Value>(b) {
        return (v, "json");
    }
    match std::str::from_utf8(b) {
        Ok(s) => (Value::String(s.to_string()), "text"),
        Err(_) => (Value::String(base64::engine::general_purpose::STANDARD.encode(b)), "base64"),
    }
}

impl Record {
    /// The whole record as one JSON document: key and value embedded as JSON
    /// when they are JSON (else text or base64, said by `key_encoding` and
    /// `value_encoding`), headers as text, timestamp and source.
    pub fn to_json(&self) -> Value {
        let (value, value_encoding) = bytes_json(&self.value);
        let key = self.key.as_deref().map(bytes_json);
        let headers: serde_json::Map<String, Value> = self
            .headers
            .iter()
            .map(|h| (h.name.to_string(), Value::String(String::from_utf8_lossy(&h.value).into_owned())))
            .collect();
        json!({
            "key": key.as_ref().map(|(v, _)| v),
            "key_encoding": key.as_ref().map(|(_, e)| e),
            "value": value,
            "value_encoding": value_encoding,
            "headers": headers,
            "timestamp": self.timestamp,
            "source": self.meta.to_json(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_form_embeds_json_and_encodes_the_rest() {
        let mut r = Record::from_value(&b"\xff\x00"[..]);
        r.key = Some(Bytes::from_static(br#"{"id":7}"#));
        r.set_header("h", "v");
        r.meta = Metadata::default().with("path", Arc::from("in.jsonl")).with("line", 3i64).with("offset", 40i64);
        let j = r.to_json();
        assert_eq!(j["key"], json!({"id": 7}));
        assert_eq!((j["value"].as_str(), j["value_encoding"].as_str()), (Some("/wA="), Some("base64")));
        assert_eq!(j["headers"]["h"], "v");
        assert_eq!(j["source"]["line"], 3);
        assert_eq!(bytes_json(b"plain words"), (Value::String("plain words".into()), "text"));
    }

    #[test]
    fn set_header_replaces_same_name() {
        let mut r = Record::from_value("x");
        r.set_header("a", "1");
        r.set_header("b", "2");
        r.set_header("a", "3");
        assert_eq!(r.headers.len(), 2);
        assert_eq!(r.header("a").unwrap().as_ref(), b"3");
        assert_eq!(r.header("c"), None);
    }
}
