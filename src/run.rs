//! `flowgate run` and `flowgate validate`: load files, report problems, run the
//! pipelines side by side, stop them gracefully on a signal.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use flowgate_sdk::error_chain;
use tokio_util::sync::CancellationToken;

use crate::config::{self, MessageFormat, PipelineConfig};
use crate::engine::Summary;
use crate::server::{self, Health, PipelineState};

/// Exit status for configuration problems, distinct from runtime failures (1).
pub const EXIT_CONFIG: u8 = 2;

/// Loads every file, printing every problem of every file. `None` if any had one.
pub fn load_all(
    files: &[PathBuf],
    format: MessageFormat,
    check: config::Check<'_>,
) -> Option<Vec<(PathBuf, PipelineConfig)>> {
    let mut ok = true;
    let mut loaded = Vec::new();
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for file in files {
        match config::load_file_with(file, check) {
            Ok(c) => {
                if let Some(other) = names.insert(c.name.clone(), file.clone()) {
                    crate::errln!(
                        "{}: error: pipeline name `{}` is also used by {}; names key stored positions and must differ",
                        file.display(),
                        c.name,
                        other.display()
                    );
                    ok = false;
                }
                loaded.push((file.clone(), c));
            }
            Err(e) => {
                crate::errln!(@raw "{}", e.render(format));
                ok = false;
            }
        }
    }
    ok.then_some(loaded)
}

/// `connect` also checks that the services a pipeline names answer (`--check`).
/// `connect`: also check the services, with this state directory.
pub fn validate(files: &[PathBuf], format: MessageFormat, connect: Option<&Path>) -> ExitCode {
    let connected;
    let check: config::Check<'_> = match connect {
        Some(state_dir) => {
            connected = move |c: &PipelineConfig| crate::plan::check_connected(c, state_dir);
            &connected
        }
        None => &crate::plan::check,
    };
    match load_all(files, format, check) {
        Some(loaded) => {
            for (file, c) in loaded {
                crate::outln!("{}: ok (pipeline `{}`)", file.display(), c.name);
            }
            ExitCode::SUCCESS
        }
        None => ExitCode::from(EXIT_CONFIG),
    }
}

/// `flowgate snapshot FILE --table T`: asks the running pipeline of `file`
/// to read `tables` again, through its source (a `postgres_cdc` source writes
/// the request into the WAL, where whichever process runs it reads it).
pub fn snapshot(file: &Path, tables: &[String], format: MessageFormat) -> ExitCode {
    let Some(loaded) = load_all(&[file.to_path_buf()], format, &crate::plan::check) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let Some((_, config)) = loaded.into_iter().next() else { return ExitCode::from(EXIT_CONFIG) };
    let ctx = flowgate_sdk::OpenContext::new(
        config.name.as_str(),
        config.source.kind,
        flowgate_sdk::Role::Source,
        flowgate_sdk::StateStore::new(default_state_dir()),
    );
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            crate::errln!("error: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(config.source.connector.request_snapshot(&ctx, tables)) {
        None => {
            crate::errln!(
                "error: the `{}` source of pipeline `{}` takes no snapshots on demand",
                config.source.kind,
                config.name
            );
            ExitCode::from(EXIT_CONFIG)
        }
        Some(Ok(done)) => {
            crate::outln!("{done}");
            ExitCode::SUCCESS
        }
        Some(Err(e)) => {
            crate::errln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// A server's certificate and key, and the CA its clients' certificates must
/// be signed by (mutual TLS), as PEM files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

pub struct RunOptions {
    /// Stop every pipeline when one fails (by default the others go on).
    pub fail_fast: bool,
    pub metrics_addr: Option<SocketAddr>,
    /// HTTPS (and client certificates) for the metrics address.
    pub metrics_tls: Option<TlsFiles>,
    pub progress: Option<Duration>,
    /// How long a part may retry before its pipeline counts as degraded.
    pub degraded_after: Duration,
    pub state_dir: PathBuf,
    pub message_format: MessageFormat,
}

/// First signal: stop reading, drain, commit, exit. Second: exit at once.
fn on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        let mut first = true;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if !first {
                tracing::warn!("second signal: exiting without draining");
                std::process::exit(130);
            }
            first = false;
            tracing::info!(
                "signal received: draining in-flight records and committing positions (again to exit at once)"
            );
            token.cancel();
        }
    });
}

fn progress(name: String, stats: std::sync::Arc<crate::engine::Stats>, every: Duration, done: CancellationToken) {
    tokio::spawn(async move {
        let mut previous: Option<Summary> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = done.cancelled() => return,
            }
            let now = stats.summary();
            tracing::info!(pipeline = %name, "{}{}", now.line(previous.as_ref()), server::status_line(&name));
            previous = Some(now);
        }
    });
}

pub async fn run(files: &[PathBuf], options: RunOptions) -> ExitCode {
    // Before the check: it starts the plugins that the pipelines then run,
    // and metric handles taken before the recorder report nowhere.
    let recorder = match options.metrics_addr.map(|_| server::install_recorder()) {
        Some(Ok(handle)) => Some(handle),
        Some(Err(e)) => {
            tracing::error!("{e:#}");
            return ExitCode::FAILURE;
        }
        None => None,
    };
    let Some(loaded) = load_all(files, options.message_format, &crate::plan::check) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let health = Health::new(options.degraded_after);
    health.watch();
    // Known before the port opens: with none known yet, `/health/ready` would
    // say every pipeline is running.
    for (_, config) in &loaded {
        health.set(&config.name, PipelineState::Starting);
        health.bound(&config.name, config.health.clone());
    }
    if let (Some(addr), Some(handle)) = (options.metrics_addr, recorder)
        && !serve_metrics(addr, options.metrics_tls.as_ref(), health.clone(), handle).await
    {
        return ExitCode::FAILURE;
    }
    if let Err(e) = serve_embedded_registries(&loaded, &options.state_dir).await {
        tracing::error!("{e:#}");
        return ExitCode::FAILURE;
    }
    let shutdown = CancellationToken::new();
    on_signals(shutdown.clone());

    let mut runs = Vec::new();
    for (file, config) in loaded {
        let (health, shutdown, state_dir) = (health.clone(), shutdown.clone(), options.state_dir.clone());
        let (progress_every, fail_fast) = (options.progress.filter(|d| !d.is_zero()), options.fail_fast);
        runs.push(tokio::spawn(async move {
            let name = config.name.clone();
            let pipeline = match open_with_retry(&config, &state_dir, &health, &shutdown).await {
                Ok(Some(p)) => p,
                // Stopped before a service it waited for came back: nothing was read.
                Ok(None) => {
                    health.set(&name, PipelineState::Finished);
                    return true;
                }
                Err(e) => {
                    let error = error_chain(&e);
                    tracing::error!("{error}");
                    health.set(&name, PipelineState::Failed { error });
                    if fail_fast {
                        shutdown.cancel();
                    }
                    return false;
                }
            };
            tracing::info!(pipeline = %name, file = %file.display(), "started");
            health.attach(&name, std::sync::Arc::clone(&pipeline.stats));
            health.set(&name, PipelineState::Running);
            let done = CancellationToken::new();
            if let Some(every) = progress_every {
                progress(name.clone(), std::sync::Arc::clone(&pipeline.stats), every, done.clone());
            }
            let draining = {
                let (health, shutdown, name) = (health.clone(), shutdown.clone(), name.clone());
                tokio::spawn(async move {
                    shutdown.cancelled().await;
                    health.set(&name, PipelineState::Draining);
                })
            };
            let result = pipeline.run(shutdown.clone()).await;
            draining.abort();
            done.cancel();
            match &result {
                Ok(s) => {
                    health.set(&name, PipelineState::Finished);
                    tracing::info!(pipeline = %name, elapsed_ms = s.elapsed.as_millis() as u64, "finished: {}", s.line(None));
                }
                Err(e) => {
                    let error = error_chain(e);
                    tracing::error!(pipeline = %name, "failed: {error}");
                    health.set(&name, PipelineState::Failed { error });
                    if fail_fast {
                        shutdown.cancel();
                    }
                }
            }
            result.is_ok()
        }));
    }
    let mut all_ok = true;
    for r in runs {
        all_ok &= r.await.unwrap_or(false);
    }
    if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Opens a pipeline, waiting with backoff (1 s up to 30 s) while a service it
/// needs cannot be reached, as a running pipeline waits out an outage.
/// `Ok(None)`: stopped while waiting.
async fn open_with_retry(
    config: &PipelineConfig,
    state_dir: &std::path::Path,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<Option<crate::engine::Pipeline>, crate::plan::OpenError> {
    let mut backoff = crate::engine::retry_backoff(Duration::from_secs(1));
    loop {
        let e = match crate::plan::open(config, state_dir).await {
            Ok(p) => return Ok(Some(p)),
            Err(e) if e.is_retryable() => e,
            Err(e) => return Err(e),
        };
        let delay = backoff.next().unwrap_or(Duration::from_secs(30));
        let error = error_chain(&e);
        tracing::warn!(pipeline = %config.name, retry_in = ?delay, "{error}; waiting for it");
        health.set(&config.name, PipelineState::Waiting { error });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Ok(None),
        }
    }
}

/// Where positions are kept when `--state-dir` is not given.
pub fn default_state_dir() -> &'static Path {
    Path::new(".flowgate/state")
}

/// Serves `/metrics`, `/health` and the status page on `addr` (over HTTPS
/// with `tls`); false (logged) when it cannot.
async fn serve_metrics(
    addr: SocketAddr,
    tls: Option<&TlsFiles>,
    health: Health,
    handle: metrics_exporter_prometheus::PrometheusHandle,
) -> bool {
    let served = async {
        let tls = match tls {
            Some(t) => Some(crate::http::tls_acceptor(&t.cert, &t.key, t.client_ca.as_deref())?),
            None => None,
        };
        server::serve(addr, health, handle, tls).await
    };
    match served.await {
        Ok(bound) => {
            let scheme = if tls.is_some() { "https" } else { "http" };
            tracing::info!(%bound, scheme, "serving /metrics, /health, /health/live, /health/ready and the status page at /");
            true
        }
        Err(e) => {
            tracing::error!("{e:#}");
            false
        }
    }
}

/// Starts the registry of each pipeline that uses the embedded one (one per
/// address, shared by the pipelines naming it).
async fn serve_embedded_registries(loaded: &[(PathBuf, PipelineConfig)], state_dir: &Path) -> anyhow::Result<()> {
    let mut served: Vec<(SocketAddr, String)> = Vec::new();
    for (_, config) in loaded.iter().filter(|(_, c)| c.uses_registry()) {
        let registry = config.registry();
        let Some(serve) = registry.embedded() else { continue };
        let store = crate::registry::embedded_store(serve, state_dir)?;
        match served.iter().find(|(addr, _)| *addr == serve.listen) {
            Some((_, s)) if *s == store => continue,
            Some((addr, s)) => {
                anyhow::bail!("two pipelines serve a registry on {addr} with different stores ({s}, {store})")
            }
            None => {}
        }
        crate::registry::serve(serve, &store, Default::default()).await.map_err(|e| {
            anyhow::anyhow!(
                "pipeline {}: {e:#} (to use a registry that is already running there, set `registry: {{url: http://{}}}`)",
                config.name,
                serve.listen
            )
        })?;
        served.push((serve.listen, store));
    }
    Ok(())
}

/// `flowgate registry serve`: the registry until a signal.
pub async fn serve_registry(
    serve: &flowgate_avro::config::ServeConfig,
    store: &str,
    limits: crate::registry::Limits,
    metrics: Option<(SocketAddr, Option<TlsFiles>)>,
) -> ExitCode {
    if let Some((_, message, hint)) = serve.problem() {
        tracing::error!("{message}; {hint}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if let Some((addr, tls)) = metrics {
        let served = match server::install_recorder() {
            Ok(handle) => serve_metrics(addr, tls.as_ref(), Health::default(), handle).await,
            Err(e) => {
                tracing::error!("{e:#}");
                false
            }
        };
        if !served {
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = crate::registry::serve(serve, store, limits).await {
        tracing::error!("{e:#}");
        return ExitCode::FAILURE;
    }
    let shutdown = CancellationToken::new();
    on_signals(shutdown.clone());
    shutdown.cancelled().await;
    tracing::info!("schema registry stopped");
    ExitCode::SUCCESS
}
