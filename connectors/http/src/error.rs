use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use flowgate_sdk::ConnectorError;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {address}")]
    Bind { address: SocketAddr, source: io::Error },
    #[error("cannot read {path}")]
    ReadFile { path: PathBuf, source: io::Error },
    #[error("cannot use the TLS settings: {message}")]
    Tls { message: String },
    #[error("cannot set up the HTTP client: {message}")]
    Client { message: String },
    /// The server task is gone while the source is open (it panicked).
    #[error("the source's HTTP server stopped")]
    ServerStopped,
    /// No answer: connection refused or lost, timeout, TLS failure. `url` is
    /// redacted, and the source has its URL removed.
    #[error("{method} {url} failed")]
    Request { method: http::Method, url: String, source: reqwest::Error },
    /// An answer that says "later": 408, 429 or 5xx (other statuses refuse
    /// the records instead, see the sink).
    #[error("{method} {url} answered HTTP {status}: {body}")]
    Status { method: http::Method, url: String, status: u16, body: String },
    /// The sink's value format could not be set up (its schema file, no registry).
    #[error("cannot set up the value format")]
    Format(#[source] ConnectorError),
}

/// Answers worth waiting for: the server timed the request out, is
/// overloaded or failing. Any other non-2xx answer is about the records.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

impl HttpError {
    /// A port taken by another process may be freed (a previous run still
    /// stopping); a server out of reach or failing may come back. Files,
    /// certificates and a missing permission stay as they are.
    pub fn is_retryable(&self) -> bool {
        match self {
            HttpError::Bind { source, .. } => source.kind() == io::ErrorKind::AddrInUse,
            HttpError::Request { .. } => true,
            HttpError::Status { status, .. } => retryable_status(*status),
            HttpError::Format(e) => e.is_retryable(),
            HttpError::ReadFile { .. }
            | HttpError::Tls { .. }
            | HttpError::Client { .. }
            | HttpError::ServerStopped => false,
        }
    }
}

impl From<HttpError> for ConnectorError {
    fn from(e: HttpError) -> Self {
        if e.is_retryable() { ConnectorError::transient("HTTP", e) } else { ConnectorError::fatal_from("HTTP", e) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_and_server_errors_are_retried_refusals_are_not() {
        for (status, retry) in
            [(408, true), (429, true), (500, true), (503, true), (599, true), (400, false), (401, false), (404, false)]
        {
            assert_eq!(retryable_status(status), retry, "{status}");
        }
        let in_use =
            HttpError::Bind { address: "127.0.0.1:1".parse().unwrap(), source: io::ErrorKind::AddrInUse.into() };
        assert!(ConnectorError::from(in_use).is_retryable());
        let denied =
            HttpError::Bind { address: "127.0.0.1:1".parse().unwrap(), source: io::ErrorKind::PermissionDenied.into() };
        assert!(!ConnectorError::from(denied).is_retryable());
    }
}
