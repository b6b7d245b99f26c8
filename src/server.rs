//! `/metrics` (Prometheus text format) and health, served when
//! `--metrics-addr` is given: `/health` (JSON, every pipeline's state; 503
//! while one has failed, waits for a service or is degraded), `/health/live`
//! (the process answers) and `/health/ready` (every pipeline running and not
//! degraded), for Kubernetes' probes.

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

/// How long a part may retry before its pipeline counts as degraded, unless
/// `--degraded-after` says otherwise.
pub const DEGRADED_AFTER: Duration = Duration::from_secs(10);

/// The state of every pipeline of this process.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Mutex<BTreeMap<String, PipelineState>>>,
    /// How long a part may retry before its pipeline counts as degraded (a
    /// source cut off degrades it at once).
    grace: Duration,
    /// The pipelines last seen degraded, with the reason logged.
    logged: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new(DEGRADED_AFTER)
    }
}

impl Health {
    pub fn new(grace: Duration) -> Self {
        Health { inner: Arc::default(), grace, logged: Arc::default() }
    }

    pub fn set(&self, pipeline: &str, state: PipelineState) {
        if matches!(state, PipelineState::Starting) {
            flowgate_sdk::health::forget(pipeline);
        }
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).insert(pipeline.to_string(), state);
    }

    /// Why a running pipeline is degraded: its parts in trouble, at once or
    /// for longer than the grace time.
    fn degraded(&self, pipeline: &str) -> Option<String> {
        let reasons: Vec<String> = flowgate_sdk::health::troubles(pipeline)
            .into_iter()
            .filter(|(_, t)| t.at_once || t.since.elapsed() >= self.grace)
            .map(|(part, t)| t.describe(&part))
            .collect();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// Every pipeline's state as `/health` shows it: a running one with a
    /// part in trouble is `degraded`, with the reason.
    /// Each turn to degraded and back is logged here, so that whatever
    /// `/health` showed, the log says too.
    fn states(&self) -> BTreeMap<String, (PipelineState, Option<String>)> {
        let pipelines = self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let states: BTreeMap<_, _> = pipelines
            .into_iter()
            .map(|(name, state)| {
                let degraded = if state == PipelineState::Running { self.degraded(&name) } else { None };
                (name, (state, degraded))
            })
            .collect();
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        for (name, (_, reason)) in &states {
            match (reason, logged.contains_key(name)) {
                (Some(reason), false) => {
                    tracing::warn!(pipeline = %name, %reason, "degraded");
                    logged.insert(name.clone(), reason.clone());
                }
                (None, true) => {
                    tracing::info!(pipeline = %name, "recovered: running");
                    logged.remove(name);
                }
                _ => {}
            }
        }
        states
    }

    fn report(&self) -> (StatusCode, String) {
        Self::report_of(&self.states())
    }

    /// `/health`'s answer for `states`.
    fn report_of(states: &BTreeMap<String, (PipelineState, Option<String>)>) -> (StatusCode, String) {
        let failing = states.values().any(|(s, _)| matches!(s, PipelineState::Failed { .. }));
        let degraded = states.values().any(|(s, d)| matches!(s, PipelineState::Waiting { .. }) || d.is_some());
        let status = if failing {
            "failing"
        } else if degraded {
            "degraded"
        } else {
            "ok"
        };
        let mut pipelines = serde_json::Map::new();
        for (name, (state, reason)) in states {
            let shown = match reason {
                Some(reason) => serde_json::json!({"state": "degraded", "reason": reason}),
                None => serde_json::to_value(state).unwrap_or_default(),
            };
            pipelines.insert(name.clone(), shown);
        }
        let mut pipelines = serde_json::Value::Object(pipelines);
        // What a source says of itself (a standby, say), beside the state.
        for (name, note) in flowgate_sdk::health::source_notes() {
            if let Some(p) = pipelines.get_mut(&name).and_then(|p| p.as_object_mut()) {
                p.insert("source".to_string(), note.into());
            }
        }
        let body = serde_json::json!({ "status": status, "pipelines": pipelines });
        let code = if failing || degraded { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
        (code, body.to_string())
    }

    /// Ready: every pipeline running and not degraded (or finished); the
    /// body is `/health`'s.
    fn ready(&self) -> (StatusCode, String) {
        // One reading for both, so that the code and the body agree.
        let states = self.states();
        let ready =
            states.values().all(|(s, d)| matches!(s, PipelineState::Running | PipelineState::Finished) && d.is_none());
        let (_, body) = Self::report_of(&states);
        (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
    }

    /// Logs each pipeline's turn to degraded (with the reason) and back
    /// without anyone asking `/health` (checked four times a second).
    pub fn watch(&self) {
        let health = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                health.states();
            }
        });
    }
}

/// The description of each part of `pipeline` in trouble, for the progress
/// line: ` · sink retrying 12s (connection refused)`.
pub fn troubles_line(pipeline: &str) -> String {
    flowgate_sdk::health::troubles(pipeline).iter().map(|(part, t)| format!(" · {}", t.describe(part))).collect()
}

/// Installs the Prometheus recorder. Call before pipelines are opened: metric
/// handles taken earlier would not report to it.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    let upkeep = handle.clone();
    let process = metrics_process::Collector::default();
    process.describe();
    process.collect();
    // Histograms need periodic upkeep to keep their memory bounded; the
    // process's figures (`process_cpu_seconds_total`, `..._resident_memory_bytes`,
    // `..._open_fds`, `..._threads`) are read at the same pace.
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
            process.collect();
        }
    });
    Ok(handle)
}

/// Binds now (so a taken port fails the start) and serves in the background.
pub async fn serve(addr: SocketAddr, health: Health, metrics: PrometheusHandle) -> anyhow::Result<SocketAddr> {
    let json = |(code, body): (StatusCode, String)| {
        std::future::ready((code, [("content-type", "application/json")], body).into_response())
    };
    let (for_ready, for_health) = (health.clone(), health);
    let app = Router::new()
        .route("/metrics", get(move || std::future::ready(metrics.render())))
        .route("/health", get(move || json(for_health.report())))
        .route("/health/ready", get(move || json(for_ready.ready())))
        .route("/health/live", get(move || json((StatusCode::OK, r#"{"status":"live"}"#.to_string()))));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(crate::http::serve(listener, app, None));
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgate_sdk::health::{recovered, trouble};

    #[test]
    fn a_cut_off_source_degrades_at_once_and_a_retrying_sink_after_the_grace_time() {
        let health = Health::new(Duration::from_millis(50));
        health.set("server-test", PipelineState::Running);
        assert_eq!(health.ready().0, StatusCode::OK);
        trouble("server-test", "sink", "retrying", "connection refused".into(), false);
        assert_eq!(health.ready().0, StatusCode::OK, "within the grace time");
        std::thread::sleep(Duration::from_millis(60));
        let (code, body) = health.report();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains(r#"{"state":"degraded","reason":"sink retrying 0s (connection refused)"}"#), "{body}");
        assert_eq!(health.ready().0, StatusCode::SERVICE_UNAVAILABLE);
        assert!(troubles_line("server-test").starts_with(" · sink retrying"));
        recovered("server-test", "sink");
        assert_eq!(health.ready(), (StatusCode::OK, health.report().1));
        trouble("server-test", "source", "cut off", "refused".into(), true);
        assert_eq!(health.ready().0, StatusCode::SERVICE_UNAVAILABLE, "a source cut off degrades at once");
        // Started again, what its parts said before is forgotten.
        health.set("server-test", PipelineState::Starting);
        health.set("server-test", PipelineState::Running);
        assert_eq!(health.ready().0, StatusCode::OK);
    }
}
