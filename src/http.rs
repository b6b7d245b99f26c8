//! The accept loop of Flowgate's HTTP servers (`/metrics` and `/health`, the
//! schema registry). A client may not hold what the pipelines need: a
//! connection that sends no complete request head within [`HEADER_TIMEOUT`]
//! (idle keep-alive included) is closed, and at most [`MAX_CONNECTIONS`] are
//! open at once: one more is closed as soon as it is accepted, so a flood
//! holds a bounded number of file descriptors and clears within the timeout.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use openssl::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod, SslVerifyMode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_openssl::SslStream;
use tower::ServiceExt as _;

/// How long a connection may take to send a request head, or stay idle.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once, per server.
pub const MAX_CONNECTIONS: usize = 64;

/// An HTTPS server's certificate (and, for mTLS, the CA its clients' must be
/// signed by), loaded once.
pub fn tls_acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> anyhow::Result<Arc<SslAcceptor>> {
    let what = |f: &Path, e: openssl::error::ErrorStack| anyhow::anyhow!("cannot use {}: {e}", f.display());
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
    b.set_certificate_chain_file(cert).map_err(|e| what(cert, e))?;
    b.set_private_key_file(key, SslFiletype::PEM).map_err(|e| what(key, e))?;
    b.check_private_key().map_err(|e| what(key, e))?;
    if let Some(ca) = client_ca {
        b.set_ca_file(ca).map_err(|e| what(ca, e))?;
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    Ok(Arc::new(b.build()))
}

/// Serves `app` on `listener` (over TLS with `tls`) until the process ends.
pub async fn serve(listener: TcpListener, app: Router, tls: Option<Arc<SslAcceptor>>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
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
        let service =
            app.clone().map_request(|r: axum::extract::Request<hyper::body::Incoming>| r.map(axum::body::Body::new));
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = TowerToHyperService::new(service);
            let served = match tls {
                None => serve_io(stream, service).await,
                Some(tls) => {
                    // The handshake is bounded like a request head.
                    let handshake = async {
                        let mut s = SslStream::new(Ssl::new(tls.context())?, stream)?;
                        std::pin::Pin::new(&mut s).accept().await.map_err(std::io::Error::other)?;
                        Ok::<_, anyhow::Error>(s)
                    };
                    match tokio::time::timeout(HEADER_TIMEOUT, handshake).await {
                        Ok(Ok(s)) => serve_io(s, service).await,
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(anyhow::anyhow!("TLS handshake timed out")),
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
            drop(slot);
        });
    }
}

async fn serve_io<I, S>(io: I, service: S) -> anyhow::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = axum::response::Response>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .await
        .map_err(Into::into)
}
