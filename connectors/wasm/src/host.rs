//! What a plugin instance sees of the host: the `host` interface (log, counter),
//! a WASI sandbox without capabilities whose stdout/stderr become log lines, a
//! memory limiter, and clocks whose sleeps end at the call's deadline.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::clocks::HostMonotonicClock;
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::{v1, v2};

/// Lines a plugin may log per second (stdout, stderr and `log` together); the
/// rest are counted and reported once logging is allowed again.
const LOG_LINES_PER_SECOND: f64 = 50.0;
/// Distinct counter names per plugin, each at most this long: a metric per
/// record id would grow the host's memory without end.
const MAX_COUNTERS: usize = 100;
const MAX_COUNTER_NAME: usize = 64;

/// One plugin of one pipeline: its name, log budget and counters, shared by
/// every instance that replaces a failed one.
pub struct PluginInfo {
    pub name: Arc<str>,
    pub pipeline: Arc<str>,
    log: Mutex<LogBudget>,
    counters: Mutex<HashMap<String, metrics::Counter>>,
}

struct LogBudget {
    tokens: f64,
    refilled: Instant,
    suppressed: u64,
}

impl PluginInfo {
    pub fn new(name: &str, pipeline: &str) -> Arc<Self> {
        Arc::new(PluginInfo {
            name: name.into(),
            pipeline: pipeline.into(),
            log: Mutex::new(LogBudget { tokens: LOG_LINES_PER_SECOND, refilled: Instant::now(), suppressed: 0 }),
            counters: Mutex::new(HashMap::new()),
        })
    }

    pub fn log(&self, level: tracing::Level, message: &str) {
        let suppressed = {
            let mut b = self.log.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let refill = now.duration_since(b.refilled).as_secs_f64() * LOG_LINES_PER_SECOND;
            b.tokens = (b.tokens + refill).min(LOG_LINES_PER_SECOND);
            b.refilled = now;
            if b.tokens < 1.0 {
                b.suppressed += 1;
                return;
            }
            b.tokens -= 1.0;
            std::mem::take(&mut b.suppressed)
        };
        let (plugin, pipeline) = (&self.name, &self.pipeline);
        if suppressed > 0 {
            tracing::warn!(%plugin, %pipeline, suppressed, "plugin log lines dropped by the rate limit");
        }
        match level {
            tracing::Level::TRACE => tracing::trace!(%plugin, %pipeline, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(%plugin, %pipeline, "{message}"),
            tracing::Level::INFO => tracing::info!(%plugin, %pipeline, "{message}"),
            tracing::Level::WARN => tracing::warn!(%plugin, %pipeline, "{message}"),
            _ => tracing::error!(%plugin, %pipeline, "{message}"),
        }
    }

    fn count(&self, name: String, delta: u64) {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if !counters.contains_key(&name) && (counters.len() >= MAX_COUNTERS || name.len() > MAX_COUNTER_NAME) {
            self.log(
                tracing::Level::WARN,
                &format!(
                    "counter `{}` ignored: at most {MAX_COUNTERS} names of up to {MAX_COUNTER_NAME} bytes",
                    name.chars().take(80).collect::<String>()
                ),
            );
            return;
        }
        counters
            .entry(name)
            .or_insert_with_key(|name| {
                metrics::counter!(
                    "flowgate_plugin_counter_total",
                    "pipeline" => self.pipeline.to_string(),
                    "plugin" => self.name.to_string(),
                    "name" => name.clone()
                )
            })
            .increment(delta);
    }
}

/// Caps linear memory and remembers whether it had to refuse, so that the trap
/// that follows can be reported as what it is.
pub struct MemoryLimiter {
    pub max: usize,
    pub current: usize,
    pub refused: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.refused = true;
            wasmtime::bail!("memory would grow to {desired} bytes, past the plugin's max_memory of {} bytes", self.max);
        }
        self.current = desired;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

pub struct HostState {
    pub info: Arc<PluginInfo>,
    pub limiter: MemoryLimiter,
    /// When the current call must end: a sleep ends then at the latest.
    pub deadline: Option<Instant>,
    /// The plugin asked to wait past `deadline` in this call.
    pub waited_too_long: bool,
    /// The origin of the plugin's monotonic clock.
    clock: Instant,
    wasi: WasiCtx,
    table: ResourceTable,
}

/// The monotonic clock a plugin reads: nanoseconds since its instance
/// started. Flowgate's own, so that a sleep until an instant of it can be
/// cut at the deadline like a sleep for a duration.
struct Clock(Instant);

impl HostMonotonicClock for Clock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// A plugin's sleep: ready at its time, or never (a time too far to say).
struct Sleep(Option<tokio::time::Instant>);

#[async_trait::async_trait]
impl Pollable for Sleep {
    async fn ready(&mut self) {
        match self.0 {
            Some(until) => tokio::time::sleep_until(until).await,
            None => std::future::pending().await,
        }
    }
}

impl HostState {
    pub fn new(info: Arc<PluginInfo>, max_memory: usize, env: &std::collections::BTreeMap<String, String>) -> Self {
        let mut wasi = WasiCtxBuilder::new();
        // No preopened directories, no arguments, no network: the sandbox grants
        // nothing but what the pipeline lists.
        wasi.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        wasi.stdout(LogStream { info: Arc::clone(&info), level: tracing::Level::INFO, line: Default::default() });
        wasi.stderr(LogStream { info: Arc::clone(&info), level: tracing::Level::WARN, line: Default::default() });
        for (k, v) in env {
            wasi.env(k, v);
        }
        let clock = Instant::now();
        wasi.monotonic_clock(Clock(clock));
        HostState {
            info,
            limiter: MemoryLimiter { max: max_memory, current: 0, refused: false },
            deadline: None,
            waited_too_long: false,
            clock,
            wasi: wasi.build(),
            table: ResourceTable::new(),
        }
    }

    /// `wasi:clocks/monotonic-clock.subscribe-duration`: a pollable ready
    /// after `nanos`. A blocking host call is out of reach of the epoch
    /// deadline, which interrupts only wasm code; a wait that would end past
    /// the call's deadline is therefore ready at once, and
    /// `waited_too_long` tells the caller to end the call (the runtime sets
    /// the epoch deadline to now), so `sleep(3600)` costs nothing, not an
    /// hour. A wait within the deadline is kept.
    pub fn subscribe_duration(&mut self, nanos: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let until = Instant::now().checked_add(Duration::from_nanos(nanos));
        let until = match (until, self.deadline) {
            (Some(u), Some(d)) if u <= d => Some(u),
            (_, Some(_)) => {
                self.waited_too_long = true;
                Some(Instant::now())
            }
            (u, None) => u,
        };
        let sleep = self.table.push(Sleep(until.map(tokio::time::Instant::from_std)))?;
        wasmtime_wasi::p2::subscribe(&mut self.table, sleep)
    }

    /// `wasi:clocks/monotonic-clock.subscribe-instant`, as [`Self::subscribe_duration`].
    pub fn subscribe_instant(&mut self, when: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let now = self.clock.elapsed().as_nanos() as u64;
        self.subscribe_duration(when.saturating_sub(now))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// The host interface of a contract version: the same host for each, only
/// the generated types differ.
macro_rules! host_interface {
    ($version:ident) => {
        impl $version::flowgate::transform::host::Host for HostState {
            fn log(&mut self, level: $version::flowgate::transform::host::Level, message: String) {
                use $version::flowgate::transform::host::Level as L;
                let level = match level {
                    L::Trace => tracing::Level::TRACE,
                    L::Debug => tracing::Level::DEBUG,
                    L::Info => tracing::Level::INFO,
                    L::Warn => tracing::Level::WARN,
                    L::Error => tracing::Level::ERROR,
                };
                self.info.log(level, &message);
            }

            fn counter(&mut self, name: String, delta: u64) {
                self.info.count(name, delta);
            }
        }
    };
}

host_interface!(v1);
host_interface!(v2);

/// A plugin's stdout or stderr: complete lines become log lines.
#[derive(Clone)]
struct LogStream {
    info: Arc<PluginInfo>,
    level: tracing::Level,
    line: Arc<Mutex<Vec<u8>>>,
}

impl LogStream {
    fn push(&self, bytes: &[u8]) {
        let mut line = self.line.lock().unwrap_or_else(|p| p.into_inner());
        line.extend_from_slice(bytes);
        while let Some(end) = line.iter().position(|b| *b == b'\n') {
            let text: Vec<u8> = line.drain(..=end).collect();
            self.info.log(self.level, String::from_utf8_lossy(&text).trim_end());
        }
        // A line that never ends must not grow without bound.
        if line.len() > 16 << 10 {
            let text: Vec<u8> = std::mem::take(&mut *line);
            self.info.log(self.level, &String::from_utf8_lossy(&text));
        }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl OutputStream for LogStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
