//! `/metrics` (Prometheus text format) and `/health` (JSON; 503 once a pipeline
//! has failed), served when `--metrics-addr` is given.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PipelineState {
    Starting,
    /// A service it needs could not be reached at start; retried with backoff.
    Waiting {
        error: String,
    },
    Running,
    Draining,
    Finished,
    Failed {
        error: String,
    },
}

/// The state of every pipeline of this process.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<BTreeMap<String, PipelineState>>>,
}

impl Health {
    pub fn set(&self, pipeline: &str, state: PipelineState) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).insert(pipeline.to_string(), state);
    }

    fn report(&self) -> (StatusCode, String) {
        let pipelines = self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let failing = pipelines.values().any(|s| matches!(s, PipelineState::Failed { .. }));
        let waiting = pipelines.values().any(|s| matches!(s, PipelineState::Waiting { .. }));
        let status = if failing {
            "failing"
        } else if waiting {
            "degraded"
        } else {
            "ok"
        };
        let mut pipelines = serde_json::to_value(pipelines).unwrap_or_default();
        // What a source says of itself (a standby, say), beside the state.
        for (name, note) in flowgate_sdk::health::source_notes() {
            if let Some(p) = pipelines.get_mut(&name).and_then(|p| p.as_object_mut()) {
                p.insert("source".to_string(), note.into());
            }
        }
        let body = serde_json::json!({ "status": status, "pipelines": pipelines });
        let code = if failing || waiting { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
        (code, body.to_string())
    }
}

/// Installs the Prometheus recorder. Call before pipelines are opened: metric
/// handles taken earlier would not report to it.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    let upkeep = handle.clone();
    // Histograms need periodic upkeep to keep their memory bounded.
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Binds now (so a taken port fails the start) and serves in the background.
pub async fn serve(addr: SocketAddr, health: Health, metrics: PrometheusHandle) -> anyhow::Result<SocketAddr> {
    let app = Router::new().route("/metrics", get(move || std::future::ready(metrics.render()))).route(
        "/health",
        get(move || {
            let (code, body) = health.report();
            std::future::ready((code, [("content-type", "application/json")], body).into_response())
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(crate::http::serve(listener, app, None));
    Ok(bound)
}
