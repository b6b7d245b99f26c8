use std::sync::Arc;

use bytes::Bytes;

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

#[cfg(test)]
mod tests {
    use super::*;

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
