//! The packed batch formats: `flowgate:transform@0.2.0` (wit/BATCH-FORMAT.md)
//! and, for plugins built against it, `@0.1.0`
//! (connectors/wasm/wit-0.1.0/BATCH-FORMAT.md). They differ in two places:
//! how metadata is carried, and whether outcomes carry the index of the record
//! they answer.

use std::sync::Arc;

use flowgate_sdk::{Bytes, Header, MetaValue, Metadata, Record};

const HAS_KEY: u8 = 1;
const HAS_TIMESTAMP: u8 = 2;

/// A version of the plugin contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contract {
    /// Metadata as a kind byte with two strings and two integers; outcomes
    /// without an index.
    V0_1,
    /// Metadata as named fields; each outcome starts with its record's index.
    V0_2,
}

impl Contract {
    pub const CURRENT: Contract = Contract::V0_2;

    pub fn name(self) -> &'static str {
        match self {
            Contract::V0_1 => "flowgate:transform@0.1.0",
            Contract::V0_2 => "flowgate:transform@0.2.0",
        }
    }

    /// The interface a plugin of this version exports.
    pub fn export(self) -> &'static str {
        match self {
            Contract::V0_1 => "flowgate:transform/transformer@0.1.0",
            Contract::V0_2 => "flowgate:transform/transformer@0.2.0",
        }
    }

    /// The host interface a plugin of this version imports.
    pub fn host_import(self) -> &'static str {
        match self {
            Contract::V0_1 => "flowgate:transform/host@0.1.0",
            Contract::V0_2 => "flowgate:transform/host@0.2.0",
        }
    }

    /// The version whose interface `export` is, if any.
    pub fn exported_by(export: &str) -> Option<Contract> {
        [Contract::V0_2, Contract::V0_1].into_iter().find(|c| c.export() == export)
    }
}

/// Records one input record may be answered with (EMIT), whatever the batch
/// size: a host record is far larger than its packed form, so fan-out is
/// bounded by the host, not by the plugin's memory.
pub const MAX_EMITTED_PER_RECORD: usize = 1000;

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

/// 0.2.0: each field by name and type; names and text longer than the
/// format allows are cut rather than corrupt the frame (sources use short names).
fn put_meta(out: &mut Vec<u8>, meta: &Metadata) {
    out.push(meta.len().min(u8::MAX as usize) as u8);
    for (name, value) in meta.iter().take(u8::MAX as usize) {
        let name = &name.as_bytes()[..name.len().min(u8::MAX as usize)];
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        match value {
            MetaValue::Int(n) => {
                out.push(0);
                out.extend_from_slice(&n.to_le_bytes());
            }
            MetaValue::Text(t) => {
                out.push(1);
                put_bytes32(out, t.as_bytes());
            }
        }
    }
}

/// 0.1.0: a kind byte per source, told from the fields the sources of that
/// release set. Frozen: sources added since are kind 0 to such plugins.
fn put_meta_v1(out: &mut Vec<u8>, meta: &Metadata) {
    let text = |name| meta.text(name).map_or("", |t| &**t);
    let int = |name| meta.int(name).unwrap_or(0);
    let (kind, a, b, n1, n2) = if meta.get("topic").is_some() {
        (2, text("topic"), "", int("partition"), int("offset"))
    } else if meta.get("table").is_some() {
        (3, text("schema"), text("table"), 0, int("lsn"))
    } else if meta.get("path").is_some() {
        (1, text("path"), "", int("line"), int("offset"))
    } else if meta.get("seq").is_some() {
        (4, "", "", 0, int("seq"))
    } else {
        (0, "", "", 0, 0)
    };
    out.push(kind);
    put_str16(out, a);
    put_str16(out, b);
    out.extend_from_slice(&n1.to_le_bytes());
    out.extend_from_slice(&n2.to_le_bytes());
}

/// Packs records (with their metadata) into `out`, which is cleared first.
pub fn encode_batch(contract: Contract, records: &[Record], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        put_record(out, r);
        match contract {
            Contract::V0_1 => put_meta_v1(out, &r.meta),
            Contract::V0_2 => put_meta(out, &r.meta),
        }
    }
}

/// A batch with every field a record can have, set and not: a text key, a
/// binary one and none, headers (one binary, one empty), timestamps (one
/// before the epoch), each source's metadata (file, Kafka, Postgres, the
/// generator) and none, an empty value and one that is not JSON. `flowgate plugin check` runs a
/// plugin on it.
pub fn sample_batch() -> Vec<Record> {
    let record = |key: Option<&str>, value: &str, meta: Metadata| Record {
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: Bytes::copy_from_slice(value.as_bytes()),
        meta,
        ..Record::default()
    };
    let text = |s: &str| -> Arc<str> { Arc::from(s) };
    let mut with_all = record(
        Some("order-1"),
        r#"{"id":1,"email":"ada@example.com","amount":12.5,"items":["a","b"]}"#,
        Metadata::default().with("path", text("orders.jsonl")).with("line", 1i64).with("offset", 0i64),
    );
    with_all.timestamp = Some(1_733_500_000_000);
    with_all.headers = vec![
        Header { name: "trace-id".into(), value: Bytes::from_static(b"abc123") },
        Header { name: "binary".into(), value: Bytes::from_static(&[0, 159, 255]) },
    ];
    vec![
        with_all,
        record(
            None,
            r#"{"id":2,"email":"bob@example.com","amount":0}"#,
            Metadata::default().with("topic", text("orders")).with("partition", 2i64).with("offset", 17i64),
        ),
        {
            let mut r = record(
                Some(r#"{"id":3}"#),
                r#"{"op":"u","before":{"id":3,"email":"x@example.com"},"after":{"id":3,"email":"y@example.com"}}"#,
                Metadata::default()
                    .with("schema", text("public"))
                    .with("table", text("customers"))
                    .with("lsn", 23_456_789i64),
            );
            // Before the epoch, and a header without a value.
            r.timestamp = Some(-1);
            r.headers = vec![Header { name: "empty".into(), value: Bytes::new() }];
            r
        },
        record(None, r#"{"id":4,"note":"ünïcödé ✓"}"#, Metadata::default().with("seq", 4i64)),
        Record { key: Some(Bytes::from_static(&[0, 255, 10])), ..record(None, "", Metadata::default()) },
        record(None, "not json", Metadata::default()),
    ]
}

/// `1 byte`, `2 bytes`.
fn bytes(n: usize) -> String {
    if n == 1 { "1 byte".into() } else { format!("{n} bytes") }
}

/// Reads a packed output; every slice of it shares the one buffer.
struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, String> {
        let Some(end) = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()) else {
            return Err(format!(
                "the output ends early: {} expected at byte {}, {} left",
                bytes(n),
                self.pos,
                bytes(self.buf.len() - self.pos)
            ));
        };
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
        let at = self.pos;
        let b = self.take(len)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("the header name at byte {at} is not UTF-8"))
    }

    fn record(&mut self, input: &Record) -> Result<Record, String> {
        let at = self.pos;
        let flags = self.u8()?;
        if flags & !(HAS_KEY | HAS_TIMESTAMP) != 0 {
            return Err(format!(
                "unknown record flags {flags:#04x} at byte {at}; expected {HAS_KEY:#04x} (key) and {HAS_TIMESTAMP:#04x} \
                 (timestamp) only"
            ));
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
/// error: the host then treats the batch as failed. Besides the limit per
/// record, the call may emit at most `max_total` records in all (bounded by
/// the plugin's memory allowance): a batch over it is split, and each record
/// alone stays within it.
pub fn decode_outcomes(
    contract: Contract,
    output: Vec<u8>,
    inputs: &[Record],
    max_total: usize,
) -> Result<Vec<Outcome>, String> {
    let mut emitted = 0usize;
    let mut r = Reader { buf: Bytes::from(output), pos: 0 };
    let count = r.u32()?;
    if count != inputs.len() {
        return Err(format!("returned {count} outcomes for {} records (the count at byte 0)", inputs.len()));
    }
    let mut outcomes = Vec::with_capacity(count);
    for (i, input) in inputs.iter().enumerate() {
        // With 0.2.0 each outcome names its record: an answer given twice, or
        // one skipped, shows.
        if contract == Contract::V0_2 {
            let at = r.pos;
            let index = r.u32()?;
            if index != i {
                return Err(format!("outcome {i} (at byte {at}) answers record {index}; outcomes go in input order"));
            }
        }
        let at = r.pos;
        outcomes.push(match r.u8()? {
            0 => Outcome::Keep,
            1 => {
                let n = r.u32()?;
                if n > MAX_EMITTED_PER_RECORD {
                    return Err(format!(
                        "emitted {n} records for record {i} (outcome at byte {at}); at most {MAX_EMITTED_PER_RECORD} \
                         per record"
                    ));
                }
                emitted += n;
                if emitted > max_total {
                    return Err(format!(
                        "emitted more than {max_total} records for one batch (by outcome {i}, at byte {at})"
                    ));
                }
                let mut records = Vec::with_capacity(n);
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
            tag => {
                return Err(format!(
                    "unknown outcome tag {tag} at byte {at} (outcome {i}); expected 0 keep, 1 emit, 2 fail or 3 value"
                ));
            }
        });
    }
    if r.pos != r.buf.len() {
        return Err(format!(
            "{} left after the last outcome, from byte {}; expected the output to end there",
            bytes(r.buf.len() - r.pos),
            r.pos
        ));
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
        r.meta = Metadata::default().with("path", Arc::from("in.jsonl")).with("line", 3i64).with("offset", 40i64);
        r
    }

    /// The bytes of `sample()` before its metadata (flags, value, timestamp, header).
    fn sample_head() -> Vec<u8> {
        [&[1, 0, 0, 0, 2][..], &[7, 0, 0, 0], br#"{"a":1}"#, &5i64.to_le_bytes(), &[1, 0, 1, 0, b'h', 1, 0, 0, 0, b'v']]
            .concat()
    }

    #[test]
    fn encodes_the_documented_example() {
        let mut out = Vec::new();
        encode_batch(Contract::V0_2, &[sample()], &mut out);
        let expected: Vec<u8> = [
            &sample_head()[..],
            &[3],
            &[4],
            b"path",
            &[1, 8, 0, 0, 0],
            b"in.jsonl",
            &[4],
            b"line",
            &[0],
            &3i64.to_le_bytes(),
            &[6],
            b"offset",
            &[0],
            &40i64.to_le_bytes(),
        ]
        .concat();
        assert_eq!(out, expected);
    }

    #[test]
    fn encodes_the_first_contract_example_for_plugins_built_against_it() {
        let mut out = Vec::new();
        encode_batch(Contract::V0_1, &[sample()], &mut out);
        let expected: Vec<u8> =
            [&sample_head()[..], &[1, 8, 0], b"in.jsonl", &[0, 0], &3i64.to_le_bytes(), &40i64.to_le_bytes()].concat();
        assert_eq!(out, expected);
    }

    /// Outcomes keep, emit two, fail, value; with indices for 0.2.0.
    fn outcomes(contract: Contract, indices: [u32; 4]) -> Vec<u8> {
        let mut out = 4u32.to_le_bytes().to_vec();
        let start = |out: &mut Vec<u8>, i: usize, tag: u8| {
            if contract == Contract::V0_2 {
                out.extend_from_slice(&indices[i].to_le_bytes());
            }
            out.push(tag);
        };
        start(&mut out, 0, 0);
        start(&mut out, 1, 1);
        out.extend_from_slice(&2u32.to_le_bytes());
        let mut emitted = Record::from_value("x");
        emitted.key = Some(Bytes::from_static(b"k"));
        put_record(&mut out, &emitted);
        put_record(&mut out, &Record::from_value("y"));
        start(&mut out, 2, 2);
        put_bytes32(&mut out, b"bad");
        start(&mut out, 3, 3);
        put_bytes32(&mut out, b"new");
        out
    }

    #[test]
    fn decodes_keep_emit_and_fail_and_keeps_metadata() {
        let inputs = vec![sample(), sample(), sample(), sample()];
        for contract in [Contract::V0_1, Contract::V0_2] {
            let decoded = decode_outcomes(contract, outcomes(contract, [0, 1, 2, 3]), &inputs, 10).unwrap();
            assert_eq!(decoded[0], Outcome::Keep);
            let Outcome::Emit(records) = &decoded[1] else { panic!() };
            assert_eq!(records[0].key.as_deref(), Some(&b"k"[..]));
            assert_eq!(records[1].value.as_ref(), b"y");
            assert_eq!(records[1].meta, inputs[1].meta);
            assert_eq!(decoded[2], Outcome::Fail("bad".into()));
            assert_eq!(decoded[3], Outcome::Value(Bytes::from_static(b"new")));
        }
    }

    #[test]
    fn an_answer_given_twice_and_one_skipped_is_caught() {
        let inputs = vec![sample(), sample(), sample(), sample()];
        let err = decode_outcomes(Contract::V0_2, outcomes(Contract::V0_2, [0, 2, 2, 3]), &inputs, 10).unwrap_err();
        assert!(err.contains("outcome 1 (at byte 9) answers record 2"), "{err}");
    }

    #[test]
    fn a_record_may_emit_a_thousand_records_in_a_batch_of_any_size() {
        let emit = |n: u32| {
            let mut out = 1u32.to_le_bytes().to_vec();
            out.extend_from_slice(&0u32.to_le_bytes());
            out.push(1);
            out.extend_from_slice(&n.to_le_bytes());
            for _ in 0..n {
                put_record(&mut out, &Record::from_value("x"));
            }
            out
        };
        assert!(decode_outcomes(Contract::V0_2, emit(1000), &[sample()], 1_000_000).is_ok());
        let err = decode_outcomes(Contract::V0_2, emit(1001), &[sample()], 1_000_000).unwrap_err();
        assert!(err.contains("at most 1000 per record"), "{err}");
    }

    #[test]
    fn refuses_malformed_outputs() {
        let inputs = vec![sample()];
        for (bytes, msg) in [
            (vec![], "ends early"),
            (vec![2, 0, 0, 0, 0, 0], "2 outcomes for 1"),
            (vec![1, 0, 0, 0, 9], "unknown outcome tag 9 at byte 4"),
            (vec![1, 0, 0, 0, 1, 5, 0, 0, 0], "ends early: 1 byte expected at byte 9"),
            (vec![1, 0, 0, 0, 0, 0], "1 byte left after the last outcome, from byte 5"),
            (vec![1, 0, 0, 0, 1, 1, 0, 0, 0, 0x80], "flags"),
            (vec![1, 0, 0, 0, 1, 11, 0, 0, 0], "more than 10 records"),
        ] {
            let err = decode_outcomes(Contract::V0_1, bytes, &inputs, 10).unwrap_err();
            assert!(err.contains(msg), "{err}");
        }
        let err = decode_outcomes(Contract::V0_2, vec![1, 0, 0, 0, 0, 0], &inputs, 10).unwrap_err();
        assert!(err.contains("ends early"), "an outcome without its index: {err}");
    }
}
