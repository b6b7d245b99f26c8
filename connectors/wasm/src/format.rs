//! The packed batch format of `flowgate:transform@0.1.0` (wit/BATCH-FORMAT.md).

use std::sync::Arc;

use flowgate_sdk::{Bytes, Header, Record, SourceMeta};

const HAS_KEY: u8 = 1;
const HAS_TIMESTAMP: u8 = 2;

/// What a plugin decided for one input record.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Keep,
    /// Records in its place (none: dropped). Source metadata is the input's.
    Emit(Vec<Record>),
    Fail(String),
    /// The input record with a new value.
    Value(Bytes),
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    // Names longer than 64 KiB do not occur; cut rather than corrupt the frame.
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_bytes32(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_record(out: &mut Vec<u8>, r: &Record) {
    let flags = if r.key.is_some() { HAS_KEY } else { 0 } | if r.timestamp.is_some() { HAS_TIMESTAMP } else { 0 };
    out.push(flags);
    if let Some(k) = &r.key {
        put_bytes32(out, k);
    }
    put_bytes32(out, &r.value);
    if let Some(t) = r.timestamp {
        out.extend_from_slice(&t.to_le_bytes());
    }
    out.extend_from_slice(&(r.headers.len().min(u16::MAX as usize) as u16).to_le_bytes());
    for h in r.headers.iter().take(u16::MAX as usize) {
        put_str16(out, &h.name);
        put_bytes32(out, &h.value);
    }
}

fn put_meta(out: &mut Vec<u8>, meta: &SourceMeta) {
    let (kind, a, b, n1, n2): (u8, &str, &str, i64, i64) = match meta {
        SourceMeta::None => (0, "", "", 0, 0),
        SourceMeta::File { path, line, offset } => (1, path, "", *line as i64, *offset as i64),
        SourceMeta::Kafka { topic, partition, offset } => (2, topic, "", i64::from(*partition), *offset),
        SourceMeta::Table { schema, table, lsn } => (3, schema, table, 0, *lsn as i64),
        SourceMeta::Sequence { seq } => (4, "", "", 0, *seq as i64),
    };
    out.push(kind);
    put_str16(out, a);
    put_str16(out, b);
    out.extend_from_slice(&n1.to_le_bytes());
    out.extend_from_slice(&n2.to_le_bytes());
}

/// Packs records (with their metadata) into `out`, which is cleared first.
pub fn encode_batch(records: &[Record], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        put_record(out, r);
        put_meta(out, &r.meta);
    }
}

/// Reads a packed output; every slice of it shares the one buffer.
struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or("output ends early")?;
        let b = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let b = self.take(N)?;
        Ok(b[..].try_into().expect("took N bytes"))
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<usize, String> {
        Ok(u16::from_le_bytes(self.array()?) as usize)
    }

    fn u32(&mut self) -> Result<usize, String> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn bytes32(&mut self) -> Result<Bytes, String> {
        let n = self.u32()?;
        self.take(n)
    }

    fn str(&mut self, len: usize) -> Result<String, String> {
        let b = self.take(len)?;
        String::from_utf8(b.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }

    fn record(&mut self, input: &Record) -> Result<Record, String> {
        let flags = self.u8()?;
        if flags & !(HAS_KEY | HAS_TIMESTAMP) != 0 {
            return Err(format!("unknown record flags {flags:#04x}"));
        }
        let key = if flags & HAS_KEY != 0 { Some(self.bytes32()?) } else { None };
        let value = self.bytes32()?;
        let timestamp = if flags & HAS_TIMESTAMP != 0 { Some(self.i64()?) } else { None };
        let n = self.u16()?;
        let mut headers = Vec::with_capacity(n);
        for _ in 0..n {
            let len = self.u16()?;
            let name: Arc<str> = self.str(len)?.into();
            headers.push(Header { name, value: self.bytes32()? });
        }
        Ok(Record { key, value, headers, timestamp, meta: input.meta.clone(), schema: input.schema.clone() })
    }
}

/// Unpacks one outcome per input record. Any deviation from the format is an
/// error: the host then treats the batch as failed. At most `max_emitted`
/// records may be emitted in all: a host record is far larger than its packed
/// form, so fan-out is bounded by the host, not by the plugin's memory.
pub fn decode_outcomes(output: Vec<u8>, inputs: &[Record], max_emitted: usize) -> Result<Vec<Outcome>, String> {
    let mut emitted = 0usize;
    let mut r = Reader { buf: Bytes::from(output), pos: 0 };
    let count = r.u32()?;
    if count != inputs.len() {
        return Err(format!("returned {count} outcomes for {} records", inputs.len()));
    }
    let mut outcomes = Vec::with_capacity(count);
    for input in inputs {
        outcomes.push(match r.u8()? {
            0 => Outcome::Keep,
            1 => {
                let n = r.u32()?;
                emitted = emitted.saturating_add(n);
                if emitted > max_emitted {
                    return Err(format!("emitted more than {max_emitted} records for one batch"));
                }
                let mut records = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    records.push(r.record(input)?);
                }
                Outcome::Emit(records)
            }
            2 => {
                let len = r.u32()?;
                let reason = r.take(len)?;
                Outcome::Fail(String::from_utf8_lossy(&reason).into_owned())
            }
            3 => Outcome::Value(r.bytes32()?),
            tag => return Err(format!("unknown outcome tag {tag}")),
        });
    }
    if r.pos != r.buf.len() {
        return Err(format!("{} bytes left after the last outcome", r.buf.len() - r.pos));
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        let mut r = Record::from_value(r#"{"a":1}"#);
        r.timestamp = Some(5);
        r.set_header("h", "v");
        r.meta = SourceMeta::File { path: "in.jsonl".into(), line: 3, offset: 40 };
        r
    }

    #[test]
    fn encodes_the_documented_example() {
        let mut out = Vec::new();
        encode_batch(&[sample()], &mut out);
        let expected: Vec<u8> = [
            &[1, 0, 0, 0, 2][..],
            &[7, 0, 0, 0],
            br#"{"a":1}"#,
            &5i64.to_le_bytes(),
            &[1, 0, 1, 0, b'h', 1, 0, 0, 0, b'v'],
            &[1, 8, 0],
            b"in.jsonl",
            &[0, 0],
            &3i64.to_le_bytes(),
            &40i64.to_le_bytes(),
        ]
        .concat();
        assert_eq!(out, expected);
    }

    #[test]
    fn decodes_keep_emit_and_fail_and_keeps_metadata() {
        let mut out = 3u32.to_le_bytes().to_vec();
        out.push(0);
        out.push(1);
        out.extend_from_slice(&2u32.to_le_bytes());
        let mut emitted = Record::from_value("x");
        emitted.key = Some(Bytes::from_static(b"k"));
        put_record(&mut out, &emitted);
        put_record(&mut out, &Record::from_value("y"));
        out.push(2);
        put_bytes32(&mut out, b"bad");
        out.push(3);
        put_bytes32(&mut out, b"new");
        let inputs = vec![sample(), sample(), sample(), sample()];
        out[..4].copy_from_slice(&4u32.to_le_bytes());
        let outcomes = decode_outcomes(out, &inputs, 10).unwrap();
        assert_eq!(outcomes[0], Outcome::Keep);
        let Outcome::Emit(records) = &outcomes[1] else { panic!() };
        assert_eq!(records[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(records[1].value.as_ref(), b"y");
        assert_eq!(records[1].meta, inputs[1].meta);
        assert_eq!(outcomes[2], Outcome::Fail("bad".into()));
        assert_eq!(outcomes[3], Outcome::Value(Bytes::from_static(b"new")));
    }

    #[test]
    fn refuses_malformed_outputs() {
        let inputs = vec![sample()];
        for (bytes, msg) in [
            (vec![], "ends early"),
            (vec![2, 0, 0, 0, 0, 0], "2 outcomes for 1"),
            (vec![1, 0, 0, 0, 9], "unknown outcome tag 9"),
            (vec![1, 0, 0, 0, 1, 5, 0, 0, 0], "ends early"),
            (vec![1, 0, 0, 0, 0, 0], "bytes left"),
            (vec![1, 0, 0, 0, 1, 1, 0, 0, 0, 0x80], "flags"),
            (vec![1, 0, 0, 0, 1, 11, 0, 0, 0], "more than 10 records"),
        ] {
            let err = decode_outcomes(bytes, &inputs, 10).unwrap_err();
            assert!(err.contains(msg), "{err}");
        }
    }
}
