use std::path::PathBuf;
use std::sync::Arc;

use flowgate_sdk::{Batch, ConnectorError, Sink, async_trait};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};

use crate::{FileError, FileSinkConfig, NullSinkConfig, OutputFormat, StdoutSinkConfig};

/// The batch as lines, in `out` (cleared first).
fn encode(out: &mut Vec<u8>, batch: &Batch, format: OutputFormat) -> std::io::Result<()> {
    out.clear();
    for r in &batch.records {
        match format {
            OutputFormat::Value => out.extend_from_slice(&r.value),
            OutputFormat::Record => serde_json::to_writer(&mut *out, &r.to_json())?,
        }
        out.push(b'\n');
    }
    Ok(())
}

async fn write_lines<W: AsyncWrite + Unpin>(out: &mut W, batch: &Batch, format: OutputFormat) -> std::io::Result<()> {
    let mut buf = Vec::new();
    encode(&mut buf, batch, format)?;
    out.write_all(&buf).await?;
    out.flush().await
}

pub struct FileSink {
    path: PathBuf,
    fsync: bool,
    format: OutputFormat,
    /// Written with blocking calls on the blocking pool: tokio's `File` reports
    /// a failed write only at the next operation, by which time the batch it
    /// belonged to would have been acknowledged.
    file: Arc<std::fs::File>,
    /// The batch being written, as bytes: one buffer, reused.
    buf: Vec<u8>,
    /// The file's length before a write that failed part-way and could not be
    /// cut back at once: cut before anything else is appended.
    torn: Option<u64>,
}

impl FileSink {
    pub async fn open(config: FileSinkConfig) -> Result<Self, FileError> {
        let path = config.path.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let file = flowgate_sdk::files::private_file().create(true).append(true).open(&path)?;
            let ended = end_incomplete_line(&file, &path)?;
            Ok::<_, std::io::Error>((file, ended))
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        let (file, ended) = opened.map_err(|source| FileError::Open { path: config.path.clone(), source })?;
        if ended {
            tracing::warn!(
                path = %config.path.display(),
                "the file ended inside a line (a write cut short by a crash, or text written without a final \
                 newline); a newline was added so that new records start on lines of their own"
            );
        }
        Ok(FileSink {
            path: config.path,
            fsync: config.fsync,
            format: config.format,
            file: Arc::new(file),
            buf: Vec::new(),
            torn: None,
        })
    }

    async fn append(&mut self) -> std::io::Result<()> {
        let (file, buf, torn, fsync) = (Arc::clone(&self.file), std::mem::take(&mut self.buf), self.torn, self.fsync);
        let (buf, torn, result) = tokio::task::spawn_blocking(move || {
            let (torn, result) = append_batch(&file, &buf, torn, fsync);
            (buf, torn, result)
        })
        .await
        .map_err(std::io::Error::other)?;
        self.buf = buf;
        self.torn = torn;
        result
    }
}

/// Appends `buf` whole or not at all: a write that fails part-way (a full
/// disk) is cut back off, now or, if that fails too, before the next one (the
/// returned length to cut to). The file is locked meanwhile, so another sink
/// appending to it (another pipeline's dead letters, here or in another
/// process) never has its lines cut with ours.
fn append_batch(
    file: &std::fs::File,
    buf: &[u8],
    torn: Option<u64>,
    fsync: bool,
) -> (Option<u64>, std::io::Result<()>) {
    if let Err(e) = file.lock() {
        return (torn, Err(e));
    }
    let result = append_locked(file, buf, torn, fsync);
    let _ = file.unlock();
    result
}

fn append_locked(
    file: &std::fs::File,
    buf: &[u8],
    torn: Option<u64>,
    fsync: bool,
) -> (Option<u64>, std::io::Result<()>) {
    use std::io::Write as _;
    if let Some(len) = torn
        && let Err(e) = file.set_len(len)
    {
        return (torn, Err(e));
    }
    let before = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => return (None, Err(e)),
    };
    let mut writer = file;
    let written = writer.write_all(buf).and_then(|()| if fsync { file.sync_data() } else { Ok(()) });
    match written {
        Ok(()) => (None, Ok(())),
        Err(e) => (file.set_len(before).err().map(|_| before), Err(e)),
    }
}

/// Adds a newline when a regular file ends inside a line (a crash in the
/// middle of a write): the torn line stays on a line of its own, and nothing
/// that may be someone else's is removed. True when one was added.
fn end_incomplete_line(file: &std::fs::File, path: &std::path::Path) -> std::io::Result<bool> {
    use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() == 0 {
        return Ok(false); // A pipe or device: nothing to look at.
    }
    let mut reader = std::fs::File::open(path)?;
    reader.seek(SeekFrom::Start(meta.len() - 1))?;
    let mut last = [0u8; 1];
    reader.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(false);
    }
    let mut writer = file;
    writer.write_all(b"\n")?;
    Ok(true)
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&mut self, batch: &mut Batch) -> Result<(), ConnectorError> {
        let result = match encode(&mut self.buf, batch, self.format) {
            Ok(()) => self.append().await,
            Err(e) => Err(e),
        };
        // A batch's bytes are not kept between batches: a large one would stay.
        if self.buf.capacity() > 16 << 20 {
            self.buf = Vec::new();
        }
        result.map_err(|source| FileError::Write { path: self.path.clone(), source }.into())
    }
}

pub struct StdoutSink {
    format: OutputFormat,
    out: BufWriter<tokio::io::Stdout>,
}

impl StdoutSink {
    pub fn new(config: StdoutSinkConfig) -> Self {
        StdoutSink { format: config.format, out: BufWriter::new(tokio::io::stdout()) }
    }
}

#[async_trait]
impl Sink for StdoutSink {
    async fn write(&mut self, batch: &mut Batch) -> Result<(), ConnectorError> {
        write_lines(&mut self.out, batch, self.format)
            .await
            .map_err(|source| FileError::Write { path: "<stdout>".into(), source }.into())
    }
}

pub struct NullSink {
    config: NullSinkConfig,
}

impl NullSink {
    pub fn new(config: NullSinkConfig) -> Self {
        NullSink { config }
    }
}

#[async_trait]
impl Sink for NullSink {
    async fn write(&mut self, _: &mut Batch) -> Result<(), ConnectorError> {
        if let Some(delay) = self.config.delay {
            tokio::time::sleep(delay.0).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use flowgate_sdk::Record;

    use super::*;

    #[tokio::test]
    async fn appends_one_line_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "0\n").unwrap();
        let config = FileSinkConfig { path: path.clone(), fsync: true, format: OutputFormat::Value };
        let mut sink = FileSink::open(config).await.unwrap();
        let mut b = Batch::with_capacity(0, 2);
        b.records.push(Record::from_value("1"));
        b.records.push(Record::from_value("2"));
        sink.write(&mut b).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "0\n1\n2\n");
    }

    #[tokio::test]
    async fn new_records_never_continue_an_incomplete_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let config = FileSinkConfig { path: path.clone(), fsync: false, format: OutputFormat::Value };
        for (before, after) in [("1\n2\n{\"half", "1\n2\n{\"half\n3\n"), ("1\n", "1\n3\n"), ("", "3\n")] {
            std::fs::write(&path, before).unwrap();
            let mut sink = FileSink::open(config.clone()).await.unwrap();
            let mut b = Batch::with_capacity(0, 1);
            b.records.push(Record::from_value("3"));
            sink.write(&mut b).await.unwrap();
            assert_eq!(std::fs::read_to_string(&path).unwrap(), after, "{before:?}");
        }
    }
}
