use std::path::PathBuf;

use flowgate_sdk::{Batch, ConnectorError, Sink, async_trait};
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};

use crate::{FileError, FileSinkConfig, NullSinkConfig, OutputFormat, StdoutSinkConfig};

async fn write_lines<W: AsyncWrite + Unpin>(out: &mut W, batch: &Batch, format: OutputFormat) -> std::io::Result<()> {
    for r in &batch.records {
        match format {
            OutputFormat::Value => out.write_all(&r.value).await?,
            OutputFormat::Record => out.write_all(&serde_json::to_vec(&r.to_json())?).await?,
        }
        out.write_all(b"\n").await?;
    }
    out.flush().await
}

pub struct FileSink {
    path: PathBuf,
    fsync: bool,
    format: OutputFormat,
    out: BufWriter<File>,
}

impl FileSink {
    pub async fn open(config: FileSinkConfig) -> Result<Self, FileError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.path)
            .await
            .map_err(|source| FileError::Open { path: config.path.clone(), source })?;
        Ok(FileSink {
            path: config.path,
            fsync: config.fsync,
            format: config.format,
            out: BufWriter::with_capacity(1 << 20, file),
        })
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&mut self, batch: &mut Batch) -> Result<(), ConnectorError> {
        let result = async {
            write_lines(&mut self.out, batch, self.format).await?;
            if self.fsync {
                self.out.get_ref().sync_data().await?;
            }
            Ok(())
        }
        .await;
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
}
