//! `/metrics` (Prometheus text format) and health, served when
//! `--metrics-addr` is given: `/health` (JSON, every pipeline's state; 503
//! while one has failed, waits for a service or is degraded), `/health/live`
//! (the process answers) and `/health/ready` (every pipeline running and not
//! degraded), for Kubernetes' probes; and at `/` a status page for people,
//! which reads `/status.json` and `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::HealthConfig;
use crate::engine::{Stats, compact};

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

impl PipelineState {
    fn name(&self) -> &'static str {
        match self {
            PipelineState::Starting => "starting",
            PipelineState::Waiting { .. } => "waiting",
            PipelineState::Running => "running",
            PipelineState::Draining => "draining",
            PipelineState::Finished => "finished",
            PipelineState::Failed { .. } => "failed",
        }
    }
}

/// Every value of `flowgate_pipeline_state`'s `state` label.
const STATE_NAMES: [&str; 7] = ["starting", "waiting", "running", "degraded", "draining", "finished", "failed"];

/// What the server knows of one pipeline besides its state.
#[derive(Clone, Default)]
struct Pipeline {
    bounds: HealthConfig,
    stats: Option<Arc<Stats>>,
}

/// The state of every pipeline of this process.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Mutex<BTreeMap<String, PipelineState>>>,
    /// How long a part may retry before its pipeline counts as degraded (a
    /// source cut off degrades it at once).
    grace: Duration,
    /// The pipelines last seen degraded, with the reason logged.
    logged: Arc<Mutex<BTreeMap<String, String>>>,
    /// The state each pipeline last had on `flowgate_pipeline_state`.
    shown: Arc<Mutex<BTreeMap<String, &'static str>>>,
    pipelines: Arc<Mutex<BTreeMap<String, Pipeline>>>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new(DEGRADED_AFTER)
    }
}

impl Health {
    pub fn new(grace: Duration) -> Self {
        Health {
            inner: Arc::default(),
            grace,
            logged: Arc::default(),
            shown: Arc::default(),
            pipelines: Arc::default(),
        }
    }

    /// The lag bounds of `pipeline`, beyond which it is degraded.
    pub fn bound(&self, pipeline: &str, bounds: HealthConfig) {
        self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).entry(pipeline.to_string()).or_default().bounds =
            bounds;
    }

    /// The counters of `pipeline`, for the status page.
    pub fn attach(&self, pipeline: &str, stats: Arc<Stats>) {
        self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).entry(pipeline.to_string()).or_default().stats =
            Some(stats);
    }

    fn pipeline(&self, name: &str) -> Pipeline {
        self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned().unwrap_or_default()
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
        let mut reasons: Vec<String> = flowgate_sdk::health::troubles(pipeline)
            .into_iter()
            .filter(|(_, t)| t.at_once || t.since.elapsed() >= self.grace)
            .map(|(part, t)| t.describe(&part))
            .collect();
        reasons.extend(over_bounds(&self.pipeline(pipeline).bounds, &flowgate_sdk::health::lag(pipeline)));
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
        let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        for (name, (state, reason)) in &states {
            let now = if reason.is_some() { "degraded" } else { state.name() };
            if shown.get(name) != Some(&now) {
                for s in STATE_NAMES {
                    let value = if s == now { 1.0 } else { 0.0 };
                    metrics::gauge!("flowgate_pipeline_state", "pipeline" => name.clone(), "state" => s).set(value);
                }
                shown.insert(name.clone(), now);
            }
        }
        drop(shown);
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
        let pipelines: serde_json::Map<_, _> = shown(states).into_iter().map(|(n, p)| (n, p.into())).collect();
        let body = serde_json::json!({ "status": status, "pipelines": pipelines });
        let code = if failing || degraded { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
        (code, body.to_string())
    }

    /// Ready: every pipeline running and not degraded (or finished), and at
    /// least one known; the body is `/health`'s.
    fn ready(&self) -> (StatusCode, String) {
        // One reading for both, so that the code and the body agree.
        let states = self.states();
        let ready = !states.is_empty()
            && states
                .values()
                .all(|(s, d)| matches!(s, PipelineState::Running | PipelineState::Finished) && d.is_none());
        let (_, body) = Self::report_of(&states);
        (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
    }

    /// Logs each pipeline's turn to degraded (with the reason) and back
    /// without anyone asking `/health` (checked four times a second), and
    /// samples the counters for the status page's chart.
    pub fn watch(&self) {
        let health = self.clone();
        tokio::spawn(async move {
            let mut tick = 0u64;
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let pipelines = health.pipelines.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let sample = tick.is_multiple_of(SAMPLE_EVERY.as_millis() as u64 / 250);
                for stats in pipelines.values().filter_map(|p| p.stats.as_ref()) {
                    stats.publish();
                    if sample {
                        stats.sample();
                    }
                }
                health.states();
                tick += 1;
            }
        });
    }

    /// `/status.json`: what the status page shows beside the metrics.
    fn status(&self) -> String {
        let mut pipelines = serde_json::Map::new();
        for (name, mut p) in shown(&self.states()) {
            let stats = self.pipeline(&name).stats;
            let history: Vec<_> = stats
                .iter()
                .flat_map(|s| s.history())
                .map(|s| serde_json::json!([s.at_ms, s.records_in, s.records_out]))
                .collect();
            p.insert("history".into(), history.into());
            let refusals: Vec<_> = stats
                .iter()
                .flat_map(|s| s.recent_refusals())
                .map(|r| {
                    serde_json::json!({"at_ms": unix_ms(r.at), "stage": &*r.stage, "class": r.class.as_str(), "reason": r.reason})
                })
                .collect();
            p.insert("refusals".into(), refusals.into());
            let errors: Vec<_> = flowgate_sdk::health::recent_errors(&name)
                .into_iter()
                .map(|e| serde_json::json!({"at_ms": unix_ms(e.at), "part": e.part, "error": e.error}))
                .collect();
            p.insert("errors".into(), errors.into());
            pipelines.insert(name, p.into());
        }
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "started_ms": *STARTED_MS,
            "now_ms": unix_ms(SystemTime::now()),
            "pipelines": pipelines,
        })
        .to_string()
    }
}

/// Each pipeline as `/health` and the status page show it: its state (a
/// running one with a reason is `degraded`), the error or reason, and what
/// its source says of itself (a standby, say).
fn shown(
    states: &BTreeMap<String, (PipelineState, Option<String>)>,
) -> BTreeMap<String, serde_json::Map<String, serde_json::Value>> {
    let mut notes = flowgate_sdk::health::source_notes();
    states
        .iter()
        .map(|(name, (state, reason))| {
            let mut p = match (reason, serde_json::to_value(state)) {
                (Some(reason), _) => {
                    let mut p = serde_json::Map::new();
                    p.insert("state".into(), "degraded".into());
                    p.insert("reason".into(), reason.clone().into());
                    p
                }
                (None, Ok(serde_json::Value::Object(p))) => p,
                (None, _) => serde_json::Map::new(),
            };
            if let Some(note) = notes.remove(name) {
                p.insert("source".into(), note.into());
            }
            (name.clone(), p)
        })
        .collect()
}

/// How often the status page's chart gets a point.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

static STARTED_MS: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| unix_ms(SystemTime::now()));

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The lag bounds `lag` is over, described.
fn over_bounds(bounds: &HealthConfig, lag: &flowgate_sdk::health::Lag) -> Vec<String> {
    let mut over = Vec::new();
    if let (Some(max), Some(records)) = (bounds.max_lag_records, lag.records)
        && records > max
    {
        over.push(format!("lag {records} records over the bound of {max}"));
    }
    if let (Some(max), Some(bytes)) = (bounds.max_lag_bytes, lag.bytes)
        && bytes > max.0
    {
        over.push(format!("lag {bytes} bytes over the bound of {}", max.0));
    }
    if let (Some(max), Some(seconds)) = (bounds.max_lag_seconds, lag.seconds)
        && seconds > max.0.as_secs_f64()
    {
        over.push(format!("lag {seconds:.1}s over the bound of {max}"));
    }
    over
}

/// The end of the progress line for `pipeline`: its lag as its source
/// measures it and the parts in trouble, `lag 1.2k records / 340 ms ·
/// sink retrying 12s (connection refused)`.
pub fn status_line(pipeline: &str) -> String {
    let lag = flowgate_sdk::health::lag(pipeline);
    let mut parts = Vec::new();
    if let Some(r) = lag.records {
        parts.push(format!("{} records", compact(r as f64)));
    }
    if let Some(b) = lag.bytes {
        parts.push(format!("{}B", compact(b as f64)));
    }
    // Every pipeline measures it; shown once something waits.
    if let Some(s) = lag.seconds.filter(|s| *s >= 0.001 || !parts.is_empty()) {
        parts.push(if s < 1.0 { format!("{:.0} ms", s * 1000.0) } else { format!("{s:.1} s") });
    }
    let mut line = if parts.is_empty() { String::new() } else { format!(" · lag {}", parts.join(" / ")) };
    for (part, t) in flowgate_sdk::health::troubles(pipeline) {
        line.push_str(&format!(" · {}", t.describe(&part)));
    }
    line
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

/// The status page: one file, no external resources, so that it works offline.
const STATUS_PAGE: &str = include_str!("status.html");

/// Binds now (so a taken port fails the start) and serves in the background.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    metrics: PrometheusHandle,
    tls: Option<Arc<openssl::ssl::SslAcceptor>>,
) -> anyhow::Result<SocketAddr> {
    // The status page's uptime counts from here.
    std::sync::LazyLock::force(&STARTED_MS);
    let json = |(code, body): (StatusCode, String)| {
        std::future::ready((code, [("content-type", "application/json")], body).into_response())
    };
    let (for_ready, for_health, for_status) = (health.clone(), health.clone(), health);
    let app = Router::new()
        .route("/", get(|| std::future::ready(axum::response::Html(STATUS_PAGE))))
        .route("/status.json", get(move || json((StatusCode::OK, for_status.status()))))
        .route("/metrics", get(move || std::future::ready(metrics.render())))
        .route("/health", get(move || json(for_health.report())))
        .route("/health/ready", get(move || json(for_ready.ready())))
        .route("/health/live", get(move || json((StatusCode::OK, r#"{"status":"live"}"#.to_string()))));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(crate::http::serve(listener, app, tls));
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgate_sdk::health::{recovered, trouble};

    #[test]
    fn a_cut_off_source_degrades_at_once_and_a_retrying_sink_after_the_grace_time() {
        let health = Health::new(Duration::from_millis(50));
        assert_eq!(health.ready().0, StatusCode::SERVICE_UNAVAILABLE, "no pipeline known yet");
        health.set("server-test", PipelineState::Starting);
        assert_eq!(health.ready().0, StatusCode::SERVICE_UNAVAILABLE, "still starting");
        health.set("server-test", PipelineState::Running);
        assert_eq!(health.ready().0, StatusCode::OK);
        trouble("server-test", "sink", "retrying", "connection refused".into(), false);
        assert_eq!(health.ready().0, StatusCode::OK, "within the grace time");
        std::thread::sleep(Duration::from_millis(60));
        let (code, body) = health.report();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        // Compared as JSON: key order depends on serde_json's features, which
        // differ between a build of this crate alone and of the workspace.
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            report["pipelines"]["server-test"],
            serde_json::json!({"state": "degraded", "reason": "sink retrying 0s (connection refused)"}),
            "{body}"
        );
        assert_eq!(health.ready().0, StatusCode::SERVICE_UNAVAILABLE);
        assert!(status_line("server-test").starts_with(" · sink retrying"));
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
