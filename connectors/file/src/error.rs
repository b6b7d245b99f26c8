use std::io;
use std::path::PathBuf;

use flowgate_sdk::ConnectorError;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot open {path}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot store the position of {path}")]
    State { path: PathBuf, source: io::Error },
    /// Two runs of one pipeline would read the file twice and overwrite each
    /// other's position.
    #[error(
        "another run of this pipeline is reading {path} (it holds {lock}); stop it first. A run with another \
         --state-dir would read the file again from the start"
    )]
    InUse { path: PathBuf, lock: PathBuf },
    #[error("cannot lock {lock}, which keeps a second run of this pipeline from reading {path} too")]
    Lock { path: PathBuf, lock: PathBuf, source: io::Error },
}

impl FileError {
    /// Opening fails for reasons a retry does not fix (missing file, permissions);
    /// reads and writes fail for reasons that pass (a full disk being cleaned up).
    /// A closed pipe (standard output whose reader went away) never reopens.
    pub fn is_retryable(&self) -> bool {
        match self {
            FileError::Open { .. } | FileError::InUse { .. } | FileError::Lock { .. } => false,
            FileError::Write { source, .. } => source.kind() != io::ErrorKind::BrokenPipe,
            FileError::Read { .. } | FileError::State { .. } => true,
        }
    }
}

impl From<FileError> for ConnectorError {
    fn from(e: FileError) -> Self {
        if e.is_retryable() { ConnectorError::transient("file", e) } else { ConnectorError::fatal_from("file", e) }
    }
}
