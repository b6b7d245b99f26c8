use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flowgate_sdk::{
    Batch, ConnectorError, OpenContext, PendingPositions, Read, Source, StateStore, Watermark, async_trait,
};
use serde::{Deserialize, Serialize};
use tokio::fs::File;
use tokio::io::{AsyncSeekExt, Stdin};

use crate::lines::Lines;
use crate::{FileError, FileSourceConfig, LineFormat, StdinConfig};

/// How often a followed file is checked for new data, truncation or rotation.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// What the state store keeps for a file source.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct FilePosition {
    path: PathBuf,
    /// Inode of the file the offset belongs to, to notice a file replaced by another.
    inode: u64,
    offset: u64,
    line: u64,
}

pub struct FileSource {
    config: FileSourceConfig,
    path_label: Arc<str>,
    stage: Arc<str>,
    max: usize,
    state: StateStore,
    state_key: String,
    /// Held while the source is open: one reader per stored position.
    _lock: std::fs::File,
    lines: Lines<File>,
    inode: u64,
    /// Position reached at the end of each batch handed out and not yet committed.
    pending: PendingPositions<FilePosition>,
    at_end: bool,
    /// A read error met after part of a batch was read: that part is handed
    /// over first, and the error reported on the next call.
    deferred: Option<FileError>,
}

impl FileSource {
    pub async fn open(config: FileSourceConfig, ctx: &OpenContext) -> Result<Self, FileError> {
        let state_key = format!("{}.file-source", ctx.pipeline);
        let lock = ctx.state.lock(&state_key).map_err(|source| {
            let (path, lock) = (config.path.clone(), ctx.state.lock_path(&state_key));
            match source.kind() {
                std::io::ErrorKind::WouldBlock => FileError::InUse { path, lock },
                _ => FileError::Lock { path, lock, source },
            }
        })?;
        let open_err = |source| FileError::Open { path: config.path.clone(), source };
        let mut file = File::open(&config.path).await.map_err(open_err)?;
        let meta = file.metadata().await.map_err(open_err)?;
        let stored: Option<FilePosition> =
            ctx.state.load(&state_key).map_err(|source| FileError::State { path: config.path.clone(), source })?;
        let (offset, line) = match stored {
            Some(p) if p.path == config.path && p.inode == meta.ino() && p.offset <= meta.len() => {
                tracing::info!(path = %config.path.display(), offset = p.offset, line = p.line, "resuming file");
                (p.offset, p.line)
            }
            Some(p) => {
                tracing::warn!(
                    path = %config.path.display(),
                    stored = %p.path.display(),
                    "the stored position belongs to another or a shorter file; reading from the start"
                );
                (0, 0)
            }
            None => (0, 0),
        };
        file.seek(std::io::SeekFrom::Start(offset)).await.map_err(open_err)?;
        Ok(FileSource {
            path_label: config.path.display().to_string().into(),
            stage: "source".into(),
            max: ctx.batch_size,
            state: ctx.state.clone(),
            state_key,
            _lock: lock,
            lines: Lines::new(file, offset, line, config.max_record_size.as_usize()),
            inode: meta.ino(),
            pending: PendingPositions::default(),
            at_end: false,
            deferred: None,
            config,
        })
    }

    fn read_err(&self, source: std::io::Error) -> FileError {
        FileError::Read { path: self.config.path.clone(), source }
    }

    /// While following: reopen a rotated file, rewind a truncated one.
    async fn check_replaced(&mut self) -> Result<(), FileError> {
        let Ok(meta) = tokio::fs::metadata(&self.config.path).await else {
            return Ok(()); // Rotated away and not yet recreated.
        };
        if meta.ino() != self.inode {
            tracing::info!(path = %self.config.path.display(), "file was replaced; reading the new one from the start");
            let file = File::open(&self.config.path).await.map_err(|e| self.read_err(e))?;
            self.lines = Lines::new(file, 0, 0, self.config.max_record_size.as_usize());
            self.inode = meta.ino();
        } else if meta.len() < self.lines.offset() {
            tracing::warn!(path = %self.config.path.display(), "file was truncated; reading it from the start");
            let mut file = File::open(&self.config.path).await.map_err(|e| self.read_err(e))?;
            file.seek(std::io::SeekFrom::Start(0)).await.map_err(|e| self.read_err(e))?;
            self.lines = Lines::new(file, 0, 0, self.config.max_record_size.as_usize());
        }
        Ok(())
    }
}

#[async_trait]
impl Source for FileSource {
    async fn read(&mut self, batch: &mut Batch) -> Result<Read, ConnectorError> {
        if let Some(e) = self.deferred.take() {
            return Err(e.into());
        }
        loop {
            self.lines.drain_into(batch, self.max, self.at_end, self.config.format, &self.path_label, &self.stage);
            let full = batch.records.len() + batch.rejected.len() >= self.max;
            if full || (self.at_end && !batch.is_empty()) {
                break;
            }
            if self.at_end {
                if !self.config.follow {
                    return Ok(Read::End);
                }
                // Following: look again later, and let the engine commit meanwhile.
                self.at_end = false;
                tokio::time::sleep(FOLLOW_POLL).await;
                if !self.lines.has_partial() {
                    self.check_replaced().await?;
                }
                return Ok(Read::Idle);
            }
            let n = match self.lines.fill().await {
                Ok(n) => n,
                // The lines already drained are past the reader: hand them over
                // with their position, or they would be skipped.
                Err(e) if !batch.is_empty() => {
                    self.deferred = Some(self.read_err(e));
                    break;
                }
                Err(e) => return Err(self.read_err(e).into()),
            };
            // When following, a line without its newline is still being written.
            self.at_end = n == 0 && !(self.config.follow && self.lines.has_partial());
            if n == 0 && !self.at_end {
                if !batch.is_empty() {
                    break;
                }
                tokio::time::sleep(FOLLOW_POLL).await;
                return Ok(Read::Idle);
            }
        }
        self.pending.push(
            batch.seq,
            FilePosition {
                path: self.config.path.clone(),
                inode: self.inode,
                offset: self.lines.offset(),
                line: self.lines.line(),
            },
        );
        Ok(Read::Data)
    }

    async fn commit(&mut self, done: Watermark) -> Result<(), ConnectorError> {
        let Some((_, position)) = self.pending.covered(done).last() else { return Ok(()) };
        // Saved first, forgotten after: a failed save is retried by the next commit.
        self.state
            .save(&self.state_key, position)
            .map_err(|source| FileError::State { path: self.config.path.clone(), source })?;
        self.pending.release(done);
        Ok(())
    }
}

/// Standard input has no position to keep: commits are no-ops.
pub struct StdinSource {
    format: LineFormat,
    max: usize,
    label: Arc<str>,
    stage: Arc<str>,
    lines: Lines<Stdin>,
    at_end: bool,
}

impl StdinSource {
    pub fn new(config: StdinConfig, ctx: &OpenContext) -> Self {
        StdinSource {
            format: config.format,
            max: ctx.batch_size,
            label: "<stdin>".into(),
            stage: "source".into(),
            lines: Lines::new(tokio::io::stdin(), 0, 0, config.max_record_size.as_usize()),
            at_end: false,
        }
    }
}

#[async_trait]
impl Source for StdinSource {
    async fn read(&mut self, batch: &mut Batch) -> Result<Read, ConnectorError> {
        loop {
            self.lines.drain_into(batch, self.max, self.at_end, self.format, &self.label, &self.stage);
            if batch.records.len() + batch.rejected.len() >= self.max || !batch.is_empty() && self.at_end {
                return Ok(Read::Data);
            }
            if self.at_end {
                return Ok(Read::End);
            }
            // Hand over what has arrived rather than wait for a full batch: an
            // interactive producer may pause for a long time.
            if !batch.is_empty() {
                return Ok(Read::Data);
            }
            let n = self.lines.fill().await.map_err(|source| FileError::Read { path: "<stdin>".into(), source })?;
            self.at_end = n == 0;
        }
    }

    async fn commit(&mut self, _: Watermark) -> Result<(), ConnectorError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use flowgate_sdk::{AckTracker, Role};

    use super::*;

    fn ctx(dir: &std::path::Path, batch_size: usize) -> OpenContext {
        OpenContext::new("t", "file", Role::Source, StateStore::new(dir.join("state")))
            .with_batch(batch_size, Duration::from_millis(10))
    }

    async fn read_to_end(src: &mut FileSource, tracker: &Arc<AckTracker>) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let mut b = Batch::with_capacity(tracker.next_seq(), 2);
            match src.read(&mut b).await.unwrap() {
                Read::Data => {
                    tracker.begin().ack();
                    out.extend(b.records.iter().map(|r| String::from_utf8(r.value.to_vec()).unwrap()));
                }
                Read::Idle => {}
                Read::End => return out,
            }
        }
    }

    #[tokio::test]
    async fn resumes_after_the_committed_batch_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "1\n2\n3\n4\n5").unwrap();
        let config = FileSourceConfig {
            path: path.clone(),
            follow: false,
            format: LineFormat::Json,
            max_record_size: crate::config::default_max_record_size(),
        };
        let tracker = AckTracker::new();
        let mut src = FileSource::open(config.clone(), &ctx(dir.path(), 2)).await.unwrap();
        let all = read_to_end(&mut src, &tracker).await;
        assert_eq!(all, ["1", "2", "3", "4", "5"]);
        // Only the first two batches (lines 1-4) were committed.
        src.commit(Watermark(2)).await.unwrap();
        let twice = FileSource::open(config.clone(), &ctx(dir.path(), 2)).await;
        assert!(matches!(twice, Err(FileError::InUse { .. })), "a second reader of the same position is refused");
        drop(src);
        let mut again = FileSource::open(config, &ctx(dir.path(), 2)).await.unwrap();
        assert_eq!(read_to_end(&mut again, &AckTracker::new()).await, ["5"]);
    }

    #[tokio::test]
    async fn a_failed_save_is_retried_by_the_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "1\n2\n").unwrap();
        let config = FileSourceConfig {
            path: path.clone(),
            follow: false,
            format: LineFormat::Json,
            max_record_size: crate::config::default_max_record_size(),
        };
        let mut src = FileSource::open(config, &ctx(dir.path(), 10)).await.unwrap();
        read_to_end(&mut src, &AckTracker::new()).await;
        // The state directory is a file for a while: saving fails.
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, "").unwrap();
        src.state = StateStore::new(&blocked);
        assert!(src.commit(Watermark(1)).await.is_err());
        src.state = StateStore::new(dir.path().join("state"));
        src.commit(Watermark(1)).await.unwrap();
        let saved: FilePosition = src.state.load(&src.state_key).unwrap().unwrap();
        assert_eq!(saved.offset, 4, "the position survives the failed save");
    }

    #[tokio::test]
    async fn follow_waits_for_complete_lines_and_sees_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "1\n{\"half\":").unwrap();
        let config = FileSourceConfig {
            path: path.clone(),
            follow: true,
            format: LineFormat::Json,
            max_record_size: crate::config::default_max_record_size(),
        };
        let mut src = FileSource::open(config, &ctx(dir.path(), 10)).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..20 {
            let mut b = Batch::with_capacity(0, 10);
            if src.read(&mut b).await.unwrap() == Read::Data {
                seen.extend(b.records.iter().map(|r| String::from_utf8(r.value.to_vec()).unwrap()));
                assert!(b.rejected.is_empty(), "a half-written line must not be rejected");
            }
            if seen.len() == 1 {
                use std::io::Write;
                std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"2}\n3\n").unwrap();
            }
            if seen.len() == 3 {
                break;
            }
        }
        assert_eq!(seen, ["1", "{\"half\":2}", "3"]);
    }
}
