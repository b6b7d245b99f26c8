use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};

/// One header of a record: Kafka-style, a name and raw bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: Arc<str>,
    pub value: Bytes,
}

/// Where a record came from. Read-only for transforms and sinks: sources set it,
/// sinks may use it (e.g. to store positions next to the rows they write).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SourceMeta {
    #[default]
    None,
    /// A line of a file (`offset` is the byte offset of the line's start).
    File { path: Arc<str>, line: u64, offset: u64 },
    /// A record of a Kafka partition.
    Kafka { topic: Arc<str>, partition: i32, offset: i64 },
    /// A row change read from a database's change stream.
    Table { schema: Arc<str>, table: Arc<str>, lsn: u64 },
    /// The n-th record of a synthetic source.
    Sequence { seq: u64 },
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
    pub meta: SourceMeta,
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

impl SourceMeta {
    pub fn to_json(&self) -> Value {
        match self {
            SourceMeta::None => Value::Null,
            SourceMeta::File { path, line, offset } => json!({"file": path.as_ref(), "line": line, "offset": offset}),
            SourceMeta::Kafka { topic, partition, offset } => {
                json!({"topic": topic.as_ref(), "partition": partition, "offset": offset})
            }
            SourceMeta::Table { schema, table, lsn } => {
                json!({"schema": schema.as_ref(), "table": table.as_ref(), "lsn": lsn})
            }
            SourceMeta::Sequence { seq } => json!({"seq": seq}),
        }
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
        r.meta = SourceMeta::File { path: "in.jsonl".into(), line: 3, offset: 40 };
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
