//! Splits a byte stream into lines, tracking the byte offset of each, with one
//! buffer reused for the whole stream.

use std::sync::Arc;

use flowgate_sdk::{Batch, Bytes, Record, SourceMeta};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::LineFormat;

const CHUNK: usize = 1 << 20;

pub(crate) struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
    /// Start of the first unconsumed byte in `buf`.
    start: usize,
    /// Stream offset of `buf[start]`: everything before it has been turned into records.
    offset: u64,
    /// Number of lines consumed so far (the next line's 1-based number is `line + 1`).
    line: u64,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    pub(crate) fn new(reader: R, offset: u64, line: u64) -> Self {
        Lines { reader, buf: Vec::with_capacity(CHUNK), start: 0, offset, line }
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
        // Grow for a line longer than the buffer; otherwise keep the chunk size.
        let want = CHUNK.max(len * 2);
        self.buf.resize(len + want, 0);
        let n = self.reader.read(&mut self.buf[len..]).await;
        self.buf.truncate(len + n.as_ref().map_or(0, |n| *n));
        n
    }

    /// Bytes buffered past the last complete line.
    pub(crate) fn has_partial(&self) -> bool {
        self.start < self.buf.len()
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
        while batch.records.len() + batch.rejected.len() < max && self.start < self.buf.len() {
            let rest = &self.buf[self.start..];
            let (line, consumed) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..i], i + 1),
                None if at_end => (rest, rest.len()),
                None => return,
            };
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
                meta: SourceMeta::File { path: Arc::clone(path), line: self.line, offset },
                ..Record::default()
            };
            if format == LineFormat::Json
                && let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(line)
            {
                batch.reject(record, format!("line {}: not JSON: {e}", self.line), stage);
                continue;
            }
            batch.records.push(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(input: &[u8], max: usize) -> (Vec<Batch>, u64) {
        let mut lines = Lines::new(input, 0, 0);
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
        assert_eq!(records[1].meta, SourceMeta::File { path: "t".into(), line: 5, offset: 22 });
        assert_eq!(rejected.len(), 1);
        assert!(rejected[0].reason.starts_with("line 4: not JSON"), "{}", rejected[0].reason);
    }
}
