use std::error::Error as StdError;

type BoxError = Box<dyn StdError + Send + Sync>;

/// How the engine reacts to an error a connector returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Worth retrying with backoff: connection lost, broker or database down, lock
    /// contention. The engine retries the same batch until it succeeds or shuts down.
    Transient,
    /// Retrying cannot help; the pipeline stops (positions stay at the last batch
    /// that was fully handled).
    Fatal,
}

/// The error type at the connector boundary. Each connector crate has its own
/// `thiserror` enum and says, on conversion, whether its error is retryable.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConnectorError {
    pub kind: ErrorKind,
    pub message: String,
    #[source]
    pub source: Option<BoxError>,
}

impl ConnectorError {
    pub fn transient(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        ConnectorError { kind: ErrorKind::Transient, message: message.into(), source: Some(source.into()) }
    }

    pub fn fatal(message: impl Into<String>) -> Self {
        ConnectorError { kind: ErrorKind::Fatal, message: message.into(), source: None }
    }

    pub fn fatal_from(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        ConnectorError { kind: ErrorKind::Fatal, message: message.into(), source: Some(source.into()) }
    }

    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    /// The message followed by its chain of causes, for logs.
    pub fn chain(&self) -> String {
        error_chain(self)
    }
}

/// An error's message followed by those of its causes, `: `-separated: the
/// one line that logs, `/health` and exit messages show.
pub fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}
