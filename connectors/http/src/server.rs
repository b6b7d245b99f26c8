//! The source's HTTP server: the runtime's accept loop (`src/http.rs`) made
//! small, plus the handler that checks a request and queues its records.
//!
//! A client may not hold what the pipeline needs: a connection that sends no
//! complete request head within [`HEADER_TIMEOUT`] (idle keep-alive included),
//! or no complete body within [`BODY_TIMEOUT`], is closed; at most
//! `max_connections` are open at once, one more is closed when accepted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use flowgate_sdk::Secret;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use openssl::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_openssl::SslStream;
use tokio_util::sync::CancellationToken;

use crate::body::{Submission, records};
use crate::config::{HttpSourceConfig, TlsConfig};
use crate::error::HttpError;

/// How long a connection may take to send a request head (or the TLS
/// handshake), or stay idle.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request may take to send its body once its head arrived.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What every connection's handler needs.
struct Shared {
    path: String,
    token: Option<Secret>,
    max_body: usize,
    /// `Retry-After` of a 503 for a full queue, in whole seconds.
    retry_after: u64,
    queue: mpsc::Sender<Submission>,
}

/// Binds `config.listen` and serves until `stop` is cancelled; the bound address.
pub(crate) async fn start(
    config: &HttpSourceConfig,
    queue: mpsc::Sender<Submission>,
    stop: CancellationToken,
) -> Result<SocketAddr, HttpError> {
    let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
    let bind_err = |source| HttpError::Bind { address: config.listen, source };
    let listener = TcpListener::bind(config.listen).await.map_err(bind_err)?;
    let address = listener.local_addr().map_err(bind_err)?;
    let wait = config.retry_after.0;
    let shared = Arc::new(Shared {
        path: config.path.clone(),
        token: config.token.clone(),
        max_body: config.max_request_size.as_usize(),
        retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
        queue,
    });
    tokio::spawn(accept_loop(listener, shared, tls, config.max_connections.max(1), stop));
    Ok(address)
}

/// The server's certificate and key, loaded once.
pub(crate) fn tls_acceptor(tls: &TlsConfig) -> Result<Arc<SslAcceptor>, HttpError> {
    let what = |f: &Path, e: openssl::error::ErrorStack| HttpError::Tls { message: format!("{}: {e}", f.display()) };
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())
        .map_err(|e| HttpError::Tls { message: e.to_string() })?;
    b.set_certificate_chain_file(&tls.cert).map_err(|e| what(&tls.cert, e))?;
    b.set_private_key_file(&tls.key, SslFiletype::PEM).map_err(|e| what(&tls.key, e))?;
    b.check_private_key().map_err(|e| what(&tls.key, e))?;
    Ok(Arc::new(b.build()))
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<Arc<SslAcceptor>>,
    max_connections: usize,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was
                // accepted: wait instead of spinning on the error.
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!("too many connections; closing a new one");
            continue;
        };
        let (shared, tls, stop) = (Arc::clone(&shared), tls.clone(), stop.clone());
        tokio::spawn(async move {
            let served = match tls {
                None => serve_io(stream, shared, stop).await,
                Some(tls) => match tokio::time::timeout(HEADER_TIMEOUT, handshake(&tls, stream)).await {
                    Ok(Ok(s)) => serve_io(s, shared, stop).await,
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err("TLS handshake timed out".into()),
                },
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
            drop(slot);
        });
    }
}

async fn handshake(tls: &SslAcceptor, stream: TcpStream) -> Result<SslStream<TcpStream>, BoxError> {
    let mut s = SslStream::new(Ssl::new(tls.context())?, stream)?;
    std::pin::Pin::new(&mut s).accept().await.map_err(std::io::Error::other)?;
    Ok(s)
}

/// Serves one connection; when the source stops, requests being answered
/// finish (with 503) and the connection closes instead of idling on.
async fn serve_io<I>(io: I, shared: Arc<Shared>, stop: CancellationToken) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let first = tokio::select! {
        served = conn.as_mut() => Some(served),
        () = stop.cancelled() => None,
    };
    let served = match first {
        Some(served) => served,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    served.map_err(Into::into)
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, body: serde_json::Value) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn refuse(status: StatusCode, error: impl Into<String>) -> Answer {
    let error: String = error.into();
    answer(status, json!({ "error": error }))
}

/// Nothing of the request was kept: the client should send it again later.
fn unavailable(error: &str, retry_after: Option<u64>) -> Answer {
    let mut r = refuse(StatusCode::SERVICE_UNAVAILABLE, error);
    if let Some(secs) = retry_after {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

const BUSY: &str = "the pipeline is behind; send the request again later";
const STOPPED: &str = "the pipeline stopped before the records were written; send the request again";

/// Checks the request, queues its records, and answers once they are written.
async fn handle(shared: &Shared, req: Request<Incoming>) -> Answer {
    if req.uri().path() != shared.path {
        return refuse(StatusCode::NOT_FOUND, format!("records are posted to {}", shared.path));
    }
    if req.method() != Method::POST {
        let mut r = refuse(StatusCode::METHOD_NOT_ALLOWED, "records are sent with POST");
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    if let Some(token) = &shared.token
        && !authorized(req.headers(), token)
    {
        let mut r = refuse(StatusCode::UNAUTHORIZED, "a valid `Authorization: Bearer` token is required");
        r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    // Said at once, before the body is read: the client retries later.
    if shared.queue.capacity() == 0 {
        return unavailable(BUSY, Some(shared.retry_after));
    }
    let too_large =
        || refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {} bytes", shared.max_body));
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > shared.max_body as u64) {
        return too_large();
    }
    let body = match tokio::time::timeout(BODY_TIMEOUT, read_body(req.into_body(), shared.max_body)).await {
        Ok(Ok(body)) => body,
        Ok(Err(BodyError::TooLarge)) => return too_large(),
        Ok(Err(BodyError::Failed(e))) => return refuse(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}")),
        Err(_) => return refuse(StatusCode::REQUEST_TIMEOUT, "the body took too long to arrive"),
    };
    let records = match crate::body::documents(&body) {
        Ok(documents) => records(documents),
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("nothing was taken: {e}")),
    };
    if records.is_empty() {
        return answer(StatusCode::OK, json!({ "accepted": 0 }));
    }
    let (reply, written) = oneshot::channel();
    match shared.queue.try_send(Submission { records, reply }) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => return unavailable(BUSY, Some(shared.retry_after)),
        Err(TrySendError::Closed(_)) => return unavailable(STOPPED, None),
    }
    match written.await {
        Ok(accepted) => answer(StatusCode::OK, json!({ "accepted": accepted })),
        // The source closed or was dropped with the request unacknowledged.
        Err(_) => unavailable(STOPPED, None),
    }
}

/// Whether the request carries `Authorization: Bearer <token>`, compared in
/// constant time so that the answer's timing does not tell how much matched.
fn authorized(headers: &HeaderMap, token: &Secret) -> bool {
    let Some(value) = headers.get(AUTHORIZATION).map(HeaderValue::as_bytes) else { return false };
    let (Some(scheme), Some(given)) = (value.get(..7), value.get(7..)) else { return false };
    scheme.eq_ignore_ascii_case(b"bearer ") && same(given.trim_ascii(), token.expose().as_bytes())
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

enum BodyError {
    TooLarge,
    Failed(hyper::Error),
}

/// The whole body, refused as soon as it passes `limit` (a body may come
/// without a length, in chunks).
async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Failed)?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(BodyError::TooLarge);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_compared_whole() {
        let token = Secret::new("s3cret");
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_static(v));
            authorized(&h, &token)
        };
        assert!(with("Bearer s3cret"));
        assert!(with("bearer s3cret"));
        assert!(!with("Bearer s3cre"));
        assert!(!with("Bearer s3cretx"));
        assert!(!with("Basic s3cret"));
        assert!(!with("Bearer"));
        assert!(!authorized(&HeaderMap::new(), &token));
    }
}
