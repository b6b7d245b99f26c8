//! A plugin as a pipeline step: one instance per pipeline worker, reused across
//! batches, replaced after a failure. A failing batch is split in halves until
//! the records that cause the failure are found; only they go to the error policy.

use std::sync::Arc;

use flowgate_sdk::{Batch, ConnectorError, Record, RefusalClass, Transform, async_trait, blocking};
use wasmtime::{Store, Trap};

use crate::bindings::{v1, v2};
use crate::format::{MAX_EMITTED_PER_RECORD, Outcome, decode_outcomes, encode_batch};
use crate::host::{HostState, PluginInfo};
use crate::runtime::{EPOCH_TICK, LoadedPlugin, Pre, WasmRuntime};
use crate::{WasmConfig, WasmError};

struct Live {
    store: Store<HostState>,
    bindings: Bindings,
}

/// An instance's exports, by the contract version it was built against.
enum Bindings {
    V1(v1::Transform),
    V2(v2::Transform),
}

impl Bindings {
    fn init(&self, store: &mut Store<HostState>, config: &str) -> wasmtime::Result<Result<(), String>> {
        match self {
            Bindings::V1(b) => b.flowgate_transform_transformer().call_init(store, config),
            Bindings::V2(b) => b.flowgate_transform_transformer().call_init(store, config),
        }
    }

    fn process(&self, store: &mut Store<HostState>, batch: &[u8]) -> wasmtime::Result<Vec<u8>> {
        match self {
            Bindings::V1(b) => b.flowgate_transform_transformer().call_process(store, batch),
            Bindings::V2(b) => b.flowgate_transform_transformer().call_process(store, batch),
        }
    }
}

/// What a plugin does, as metrics (labels `pipeline`, `plugin`).
struct PluginMetrics {
    calls: metrics::Counter,
    records: metrics::Counter,
    seconds: metrics::Histogram,
    instances: metrics::Counter,
    bisections: metrics::Counter,
    recovered: metrics::Counter,
    trap: metrics::Counter,
    timeout: metrics::Counter,
    memory: metrics::Counter,
    malformed: metrics::Counter,
    error: metrics::Counter,
}

impl PluginMetrics {
    fn new(pipeline: &str, plugin: &str) -> Self {
        let labels = [("pipeline", pipeline.to_string()), ("plugin", plugin.to_string())];
        // Every kind of failure is there from the start at 0, so that the
        // first one shows as an increase.
        let failures = |kind: &'static str| {
            let mut l = labels.to_vec();
            l.push(("kind", kind.to_string()));
            metrics::counter!("flowgate_plugin_failures_total", &l)
        };
        let m = PluginMetrics {
            calls: metrics::counter!("flowgate_plugin_calls_total", &labels),
            records: metrics::counter!("flowgate_plugin_records_total", &labels),
            seconds: metrics::histogram!("flowgate_plugin_seconds", &labels),
            instances: metrics::counter!("flowgate_plugin_instances_total", &labels),
            bisections: metrics::counter!("flowgate_plugin_bisections_total", &labels),
            recovered: metrics::counter!("flowgate_plugin_recovered_total", &labels),
            trap: failures("trap"),
            timeout: failures("timeout"),
            memory: failures("memory"),
            malformed: failures("malformed"),
            error: failures("error"),
        };
        for c in [&m.trap, &m.timeout, &m.memory, &m.malformed, &m.error, &m.bisections, &m.recovered] {
            c.increment(0);
        }
        m
    }
}

/// Why a call of the plugin failed.
#[derive(Clone, Copy)]
enum Failure {
    Trap,
    Timeout,
    Memory,
    Malformed,
    /// The host refused the call (an answer over the copy limit, say).
    Error,
}

pub struct WasmTransform {
    metrics: PluginMetrics,
    plugin: Arc<LoadedPlugin>,
    config: WasmConfig,
    config_json: String,
    info: Arc<PluginInfo>,
    stage: Arc<str>,
    deadline_ticks: u64,
    live: Option<Live>,
    packed: Vec<u8>,
}

/// The plugin's name in logs and metrics: its file name without `.wasm`.
pub fn plugin_name(config: &WasmConfig) -> String {
    config.path.file_stem().map_or_else(|| "plugin".into(), |s| s.to_string_lossy().into_owned())
}

impl WasmTransform {
    /// Loads the plugin and starts one instance, so that a plugin refusing its
    /// config stops the pipeline before anything is read.
    pub fn new(config: WasmConfig, pipeline: &str, stage: &str) -> Result<Self, WasmError> {
        let plugin = WasmRuntime::global()?.load(&config.path)?;
        let info = PluginInfo::new(&plugin_name(&config), pipeline);
        // Clamped: the engine adds the deadline to the current epoch.
        let deadline_ticks =
            (config.timeout.0.as_nanos() / EPOCH_TICK.as_nanos()).clamp(1, u64::MAX as u128 / 2) as u64;
        let mut t = WasmTransform {
            metrics: PluginMetrics::new(pipeline, &plugin_name(&config)),
            plugin,
            // The contract promises a JSON object: `{}` when the pipeline gives none.
            config_json: if config.config.is_null() { "{}".into() } else { config.config.to_string() },
            config,
            info,
            stage: stage.into(),
            deadline_ticks,
            live: None,
            packed: Vec::new(),
        };
        // `init` may block in WASI (a line printed waits on the host's
        // stream), which on a runtime's thread must not start a runtime of
        // its own: `run` checks pipelines on one.
        t.live = Some(blocking(|| t.instantiate())?);
        Ok(t)
    }

    fn instantiate(&self) -> Result<Live, WasmError> {
        self.metrics.instances.increment(1);
        let start_err = |message: String| WasmError::Start { plugin: self.info.name.to_string(), message };
        let state = HostState::new(Arc::clone(&self.info), self.config.max_memory.0 as usize, &self.config.env);
        let mut store = Store::new(self.plugin.pre.engine(), state);
        store.limiter(|s| &mut s.limiter);
        // wasmtime caps what one call copies out of the plugin at 128 MiB
        // unless told otherwise, with an error of its own: the plugin's memory
        // cap is the one limit its answers meet (it cannot hold more).
        store.set_hostcall_fuel(self.config.max_memory.0 as usize);
        store.set_epoch_deadline(self.deadline_ticks);
        store.data_mut().deadline = Some(call_deadline(&self.config));
        let bindings = match &self.plugin.pre {
            Pre::V1(pre) => pre.instantiate(&mut store).map(Bindings::V1),
            Pre::V2(pre) => pre.instantiate(&mut store).map(Bindings::V2),
        }
        .map_err(|e| start_err(self.describe(&e, &store)))?;
        match bindings.init(&mut store, &self.config_json) {
            Ok(Ok(())) => Ok(Live { store, bindings }),
            Ok(Err(message)) => Err(WasmError::Init { plugin: self.info.name.to_string(), message }),
            Err(e) => Err(start_err(self.describe(&e, &store))),
        }
    }

    /// Why a call failed, in words.
    fn describe(&self, e: &wasmtime::Error, store: &Store<HostState>) -> String {
        self.classify(e, store).1
    }

    /// Why a call failed: its kind, and in words.
    fn classify(&self, e: &wasmtime::Error, store: &Store<HostState>) -> (Failure, String) {
        if store.data().limiter.refused {
            return (Failure::Memory, format!("it exceeded its memory limit of {}", self.config.max_memory));
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) if store.data().waited_too_long => (
                Failure::Timeout,
                format!(
                    "it ran past its timeout of {}: it asked the host to wait (sleep, poll) past it",
                    self.config.timeout
                ),
            ),
            Some(Trap::Interrupt) => (Failure::Timeout, format!("it ran past its timeout of {}", self.config.timeout)),
            Some(trap) => (Failure::Trap, format!("it trapped: {trap}")),
            None => (Failure::Error, format!("{e:#}")),
        }
    }

    /// One call of `process`. `Err` carries the reason the batch as a whole failed.
    fn call(&mut self, records: &[Record]) -> Result<Result<Vec<Outcome>, String>, WasmError> {
        if self.live.is_none() {
            self.live = Some(self.instantiate()?);
        }
        let live = self.live.as_mut().expect("instantiated above");
        let contract = self.plugin.contract;
        encode_batch(contract, records, &mut self.packed);
        live.store.set_epoch_deadline(self.deadline_ticks);
        live.store.data_mut().deadline = Some(call_deadline(&self.config));
        live.store.data_mut().waited_too_long = false;
        let started = std::time::Instant::now();
        let result = live.bindings.process(&mut live.store, &self.packed);
        self.metrics.seconds.record(started.elapsed().as_secs_f64());
        self.metrics.calls.increment(1);
        self.metrics.records.increment(records.len() as u64);
        let outcome = match result {
            Ok(output) => decode_outcomes(contract, output, records, max_emitted(&self.config, records.len()))
                .map_err(|e| (Failure::Malformed, format!("it returned a malformed batch: {e}"))),
            Err(e) => Err(self.classify(&e, &self.live.as_ref().expect("live").store)),
        };
        let outcome = outcome.map_err(|(kind, reason)| {
            match kind {
                Failure::Trap => &self.metrics.trap,
                Failure::Timeout => &self.metrics.timeout,
                Failure::Memory => &self.metrics.memory,
                Failure::Malformed => &self.metrics.malformed,
                Failure::Error => &self.metrics.error,
            }
            .increment(1);
            reason
        });
        match &outcome {
            // A trapped instance cannot be entered again; a merely confused one is
            // not trusted either.
            Err(_) => self.live = None,
            // Guest memory never shrinks: one huge batch would pin it. Start afresh
            // once an instance holds more than half of its allowance.
            Ok(_) if live_memory(&self.live) > self.config.max_memory.0 as usize / 2 => self.live = None,
            Ok(_) => {}
        }
        Ok(outcome)
    }

    /// Outcomes for `records`, bisecting around failures.
    fn run(&mut self, records: &[Record], out: &mut Vec<Result<Outcome, String>>) -> Result<(), WasmError> {
        match self.call(records)? {
            Ok(outcomes) => out.extend(outcomes.into_iter().map(Ok)),
            Err(reason) if records.len() == 1 => {
                tracing::warn!(plugin = %self.info.name, pipeline = %self.info.pipeline, %reason,
                    "plugin failed on a record; it goes to the error policy");
                out.push(Err(reason));
            }
            Err(reason) => {
                self.metrics.bisections.increment(1);
                tracing::debug!(plugin = %self.info.name, %reason, records = records.len(), "batch failed; splitting it");
                let before = out.len();
                let (left, right) = records.split_at(records.len() / 2);
                self.run(left, out)?;
                self.run(right, out)?;
                // Every record went through in smaller calls: the batch, not a
                // record, was too much (a timeout too short for its size).
                if out[before..].iter().all(Result::is_ok) {
                    self.metrics.recovered.increment(1);
                    tracing::info!(plugin = %self.info.name, pipeline = %self.info.pipeline, %reason,
                        records = records.len(), "plugin failed on a batch whose halves then went through");
                }
            }
        }
        Ok(())
    }

    /// The settings it was made with.
    pub fn config(&self) -> &WasmConfig {
        &self.config
    }

    /// One call of `process` on `records`, as a pipeline makes it, without
    /// splitting a failed batch: the inner `Err` says why the call failed or
    /// where its answer breaks the format (`flowgate plugin check`).
    pub fn try_batch(&mut self, records: &[Record]) -> Result<Result<Vec<Outcome>, String>, WasmError> {
        self.call(records)
    }

    fn apply_sync(&mut self, batch: &mut Batch) -> Result<(), ConnectorError> {
        let records = std::mem::take(&mut batch.records);
        let mut results = Vec::with_capacity(records.len());
        self.run(&records, &mut results)?;
        batch.records.reserve(records.len());
        for (record, result) in records.into_iter().zip(results) {
            match result {
                Ok(Outcome::Keep) => batch.records.push(record),
                Ok(Outcome::Emit(emitted)) => batch.records.extend(emitted),
                Ok(Outcome::Fail(reason)) => batch.reject(record, RefusalClass::Plugin, reason, &self.stage),
                Ok(Outcome::Value(value)) => batch.records.push(Record { value, ..record }),
                Err(reason) => {
                    let reason = format!("plugin {} failed on this record: {reason}", self.info.name);
                    batch.reject(record, RefusalClass::PluginFault, reason, &self.stage);
                }
            }
        }
        Ok(())
    }
}

/// When a call starting now must have ended: a wait the plugin asks for
/// may not end later (one epoch tick past its timeout, as the epoch
/// deadline).
fn call_deadline(config: &WasmConfig) -> std::time::Instant {
    std::time::Instant::now() + config.timeout.0 + EPOCH_TICK
}

/// Records a call may emit in all: at most one per 64 bytes of the plugin's
/// memory allowance (a host record costs about 150 bytes), and never less
/// than one record's own limit, so that a record alone is held to that alone.
fn max_emitted(config: &WasmConfig, inputs: usize) -> usize {
    inputs
        .saturating_mul(MAX_EMITTED_PER_RECORD)
        .min((config.max_memory.0 / 64) as usize)
        .max(MAX_EMITTED_PER_RECORD)
        .max(inputs)
}

fn live_memory(live: &Option<Live>) -> usize {
    live.as_ref().map_or(0, |l| l.store.data().limiter.current)
}

#[async_trait]
impl Transform for WasmTransform {
    async fn apply(&mut self, batch: &mut Batch) -> Result<(), ConnectorError> {
        blocking(|| self.apply_sync(batch))
    }
}
