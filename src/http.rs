//! The accept loop of Flowgate's HTTP servers (`/metrics` and `/health`, the
//! schema registry). A client may not hold what the pipelines need: a
//! connection that sends no complete request head within [`HEADER_TIMEOUT`]
//! (idle keep-alive included) is closed, and at most [`MAX_CONNECTIONS`] are
//! open at once: one more is closed as soon as it is accepted, so a flood
//! holds a bounded number of file descriptors and clears within the timeout.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

/// How long a connection may take to send a request head, or stay idle.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once, per server.
pub const MAX_CONNECTIONS: usize = 64;

/// Serves `app` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, app: Router) {
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
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
            drop(slot);
        });
    }
}
