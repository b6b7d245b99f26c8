//! Splits a byte stream into lines, tracking the byte offset of each, with one
//! buffer reused for the whole stream. A line longer than the limit is refused
//! with its size and first bytes, and skipped as it streams past, so memory
//! stays within about twice the limit whatever the input.

use std::sync::Arc;

use flowgate_sdk::{Batch, Bytes, Metadata, Record, RefusalClass};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::LineFormat;

const CHUNK: usize = 1 << 20;

/// Bytes of an oversized line kept for its refusal.
const HEAD: usize = 1024;

/// A line over the limit, being skipped.
struct Oversize {
    /// Its first bytes.
    head: Vec<u8>,
    /// Bytes of it passed so far.
    len: u64,
}

pub(crate) struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
    /// Start of the first unconsumed byte in `buf`.
    start: usize,
    /// Stream offset of `buf[start]`: everything before it has been turned into records.
    offset: u64,
    /// Number of lines consumed so far (the next line's 1-based number is `line + 1`).
    line: u64,
    /// The longest line taken as a record, in bytes.
    max: usize,
    skipping: Option<Oversize>,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    pub(crate) fn new(reader: R, offset: u64, line: u64, max: usize) -> Self {
        // Room for the newline after a line of the limit, without overflow.
        let max = max.clamp(1, usize::MAX / 2);
        Lines { reader, buf: Vec::with_capacity(CHUNK.min(max + 1)), start: 0, offset, line, max, skipping: None }
    }

    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    pub(crate) fn line(&self) -> u64 {
        self.line
    }

    /// Reads more bytes; 0 means end of stream (for now, when following a file).
    pub(crate) async fn fill(&mut self) -> std::io::Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let len = self.buf.len();
        // Grow for a line longer than the buffer, but never much past the limit:
        // once a partial line is over it, it is skipped, not kept.
        let want = CHUNK.max(len).min(self.max + 1 - len.min(self.max)).max(1);
        // Exactly: a doubling Vec would hold twice the longest line.
        self.buf.reserve_exact(want);
        self.buf.resize(len + want, 0);
        let n = self.reader.read(&mut self.buf[len..]).await;
        self.buf.truncate(len + n.as_ref().map_or(0, |n| *n));
        n
    }

    /// Bytes buffered past the last complete line.
    pub(crate) fn has_partial(&self) -> bool {
        self.start < self.buf.len() || self.skipping.is_some()
    }

    /// The refusal of an oversized line that ended, `len` bytes in all.
    fn refuse_oversize(
        &mut self,
        batch: &mut Batch,
        head: Vec<u8>,
        len: u64,
        consumed: u64,
        path: &Arc<str>,
        stage: &Arc<str>,
    ) {
        let offset = self.offset;
        self.offset += consumed;
        self.line += 1;
        let reason = format!(
            "line {}: {len} bytes, over `max_record_size` ({} bytes); the record holds its first {} bytes",
            self.line,
            self.max,
            head.len()
        );
        let record = Record { value: Bytes::from(head), meta: meta(path, self.line, offset), ..Record::default() };
        batch.reject(record, RefusalClass::Malformed, reason, stage);
    }

    /// Moves complete lines into `batch` until it holds `max` entries. At the end of
    /// the input (`at_end`), a last line without a newline counts as complete.
    pub(crate) fn drain_into(
        &mut self,
        batch: &mut Batch,
        max: usize,
        at_end: bool,
        format: LineFormat,
        path: &Arc<str>,
        stage: &Arc<str>,
    ) {
        while batch.records.len() + batch.rejected.len() < max && self.has_partial() {
            let rest = &self.buf[self.start..];
            let newline = memchr::memchr(b'\n', rest);
            if let Some(skip) = &mut self.skipping {
                let (part, ended) = match newline {
                    Some(i) => (i + 1, true),
                    None => (rest.len(), at_end),
                };
                skip.len += part as u64;
                self.start += part;
                if !ended {
                    return;
                }
                let skip = self.skipping.take().expect("skipping");
                let len = skip.len - u64::from(newline.is_some());
                self.refuse_oversize(batch, skip.head, len, skip.len, path, stage);
                continue;
            }
            let (line, consumed) = match newline {
                Some(i) => (&rest[..i], i + 1),
                None if at_end => (rest, rest.len()),
                None if rest.len() > self.max => {
                    // Over the limit with no end in sight: keep its head, skip the rest.
                    let head = rest[..HEAD.min(rest.len())].to_vec();
                    self.skipping = Some(Oversize { head, len: rest.len() as u64 });
                    self.start = self.buf.len();
                    continue;
                }
                None => return,
            };
            if line.len() > self.max {
                let (head, len) = (line[..HEAD.min(line.len())].to_vec(), line.len() as u64);
                self.start += consumed;
                self.refuse_oversize(batch, head, len, consumed as u64, path, stage);
                continue;
            }
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let offset = self.offset;
            self.start += consumed;
            self.offset += consumed as u64;
            self.line += 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let record = Record {
                value: Bytes::copy_from_slice(line),
                meta: meta(path, self.line, offset),
                ..Record::default()
            };
            if format == LineFormat::Json
                && let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(line)
            {
                batch.reject(record, RefusalClass::Malformed, format!("line {}: not JSON: {e}", self.line), stage);
                continue;
            }
            batch.records.push(record);
        }
    }
}

/// A line's metadata: the file, its line number (from 1) and the byte offset
/// of its start.
fn meta(path: &Arc<str>, line: u64, offset: u64) -> Metadata {
    Metadata::default()
        .with("path", Arc::clone(path))
        .with("line", i64::try_from(line).unwrap_or(i64::MAX))
        .with("offset", i64::try_from(offset).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(input: &[u8], max: usize) -> (Vec<Batch>, u64) {
        read_limited(input, max, 1 << 20).await
    }

    async fn read_limited(input: &[u8], max: usize, limit: usize) -> (Vec<Batch>, u64) {
        let mut lines = Lines::new(input, 0, 0, limit);
        let path: Arc<str> = "t".into();
        let stage: Arc<str> = "source".into();
        let mut batches = Vec::new();
        loop {
            let mut b = Batch::with_capacity(0, max);
            let mut at_end = false;
            loop {
                lines.drain_into(&mut b, max, at_end, LineFormat::Json, &path, &stage);
                if b.records.len() + b.rejected.len() >= max || at_end {
                    break;
                }
                if lines.fill().await.unwrap() == 0 {
                    at_end = true;
                }
            }
            if b.is_empty() {
                return (batches, lines.offset());
            }
            batches.push(b);
        }
    }

    #[tokio::test]
    async fn splits_lines_tracks_offsets_and_rejects_bad_json() {
        let input = b"{\"a\":1}\r\n\n  \nnot json\n{\"b\":2}";
        let (batches, end) = read_all(input, 2).await;
        assert_eq!(end, input.len() as u64);
        let records: Vec<_> = batches.iter().flat_map(|b| &b.records).collect();
        let rejected: Vec<_> = batches.iter().flat_map(|b| &b.rejected).collect();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].value.as_ref(), b"{\"a\":1}");
        assert_eq!(records[1].value.as_ref(), b"{\"b\":2}");
        assert_eq!(records[1].meta, meta(&"t".into(), 5, 22));
        assert_eq!(rejected.len(), 1);
        assert!(rejected[0].reason.starts_with("line 4: not JSON"), "{}", rejected[0].reason);
    }

    #[tokio::test]
    async fn lines_over_the_limit_are_refused_with_their_size_and_first_bytes() {
        // Over the limit: within one read, across several reads, and at the end.
        let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(3000));
        let input = format!("1\n{big}\n2\n{}\n3\n{big}", "y".repeat(5000));
        for limit in [2048, 2999] {
            let (batches, end) = read_limited(input.as_bytes(), 2, limit).await;
            assert_eq!(end, input.len() as u64);
            let records: Vec<&[u8]> = batches.iter().flat_map(|b| &b.records).map(|r| r.value.as_ref()).collect();
            assert_eq!(records, [b"1", b"2", b"3"]);
            let rejected: Vec<_> = batches.iter().flat_map(|b| &b.rejected).collect();
            assert_eq!(rejected.len(), 3);
            assert!(
                rejected[0].reason.starts_with("line 2: 3010 bytes, over `max_record_size`"),
                "{}",
                rejected[0].reason
            );
            assert_eq!(rejected[0].record.value.len(), HEAD);
            assert!(rejected[0].record.value.starts_with(b"{\"pad\":\"xxx"));
            assert!(rejected[1].reason.starts_with("line 4: 5000 bytes"), "{}", rejected[1].reason);
            assert!(rejected[2].reason.starts_with("line 6: 3010 bytes"), "{}", rejected[2].reason);
            assert_eq!(rejected[2].record.meta, meta(&"t".into(), 6, (input.len() - 3010) as u64));
        }
    }

    /// Hands out at most 700 bytes a read, so lines span reads.
    struct Trickle<'a>(&'a [u8]);

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self.0.len().min(700).min(buf.remaining());
            buf.put_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn an_oversized_line_streams_past_without_being_buffered() {
        let input = format!("1\n{}\n2\n", "z".repeat(100_000));
        let mut lines = Lines::new(Trickle(input.as_bytes()), 0, 0, 1000);
        let (path, stage): (Arc<str>, Arc<str>) = ("t".into(), "source".into());
        let mut b = Batch::with_capacity(0, 10);
        let mut at_end = false;
        while !at_end {
            lines.drain_into(&mut b, 10, at_end, LineFormat::Json, &path, &stage);
            at_end = lines.fill().await.unwrap() == 0;
            assert!(lines.buf.capacity() <= 1 << 20, "{}", lines.buf.capacity());
            assert!(lines.buf.len() <= 1001 + 700, "{}", lines.buf.len());
        }
        lines.drain_into(&mut b, 10, at_end, LineFormat::Json, &path, &stage);
        assert_eq!(b.records.len(), 2);
        assert_eq!(b.rejected.len(), 1);
        assert!(b.rejected[0].reason.starts_with("line 2: 100000 bytes"), "{}", b.rejected[0].reason);
        assert_eq!(lines.offset(), input.len() as u64);
    }
}
