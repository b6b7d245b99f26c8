//! What the parts of a pipeline say of themselves on `/health`, beside the
//! pipeline's state: a Postgres source standing by while another process
//! runs its slot, a source cut off from its service, a sink retrying. A
//! process-wide registry, as the `metrics` facade is: a connector reports
//! where it is, without a handle threaded to it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

static NOTES: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

fn notes_lock() -> MutexGuard<'static, BTreeMap<String, String>> {
    NOTES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets (or with `None` clears) what the source of `pipeline` says of itself.
pub fn note_source(pipeline: &str, note: Option<String>) {
    let mut notes = notes_lock();
    match note {
        Some(n) => notes.insert(pipeline.to_string(), n),
        None => notes.remove(pipeline),
    };
}

/// What each pipeline's source says of itself, by pipeline.
pub fn source_notes() -> BTreeMap<String, String> {
    notes_lock().clone()
}

/// A part of a pipeline that cannot do its work: a source cut off from its
/// service, a sink whose writes are being retried.
#[derive(Clone, Debug)]
pub struct Trouble {
    pub since: Instant,
    /// What the part is doing about it: `retrying`, `cut off`.
    pub what: &'static str,
    /// The last error.
    pub cause: String,
    /// Degrades the pipeline at once (a source cut off) rather than once it
    /// has lasted the run's grace time (a write retried, which usually
    /// succeeds the next time).
    pub at_once: bool,
}

type Troubles = BTreeMap<(String, String), Trouble>;

static TROUBLES: Mutex<Troubles> = Mutex::new(BTreeMap::new());

fn troubles_lock() -> MutexGuard<'static, Troubles> {
    TROUBLES.lock().unwrap_or_else(|e| e.into_inner())
}

/// `part` of `pipeline` (`source`, `sink`, a transform's stage) cannot do its
/// work because of `cause`; since its first report, until [`recovered`].
pub fn trouble(pipeline: &str, part: &str, what: &'static str, cause: String, at_once: bool) {
    let mut troubles = troubles_lock();
    let changed = match troubles.get_mut(&(pipeline.to_string(), part.to_string())) {
        Some(t) if t.cause == cause => false,
        Some(t) => {
            t.cause.clone_from(&cause);
            true
        }
        None => {
            let t = Trouble { since: Instant::now(), what, cause: cause.clone(), at_once };
            troubles.insert((pipeline.to_string(), part.to_string()), t);
            true
        }
    };
    drop(troubles);
    // Each new trouble, and each new cause of one, is kept for the status
    // page; a cause repeated by every retry is kept once.
    if changed {
        let mut recent = recent_lock();
        let list = recent.entry(pipeline.to_string()).or_default();
        if list.len() == RECENT_ERRORS {
            list.pop_front();
        }
        list.push_back(RecentError { at: SystemTime::now(), part: part.to_string(), error: cause });
    }
}

/// How many of a pipeline's last errors are kept.
pub const RECENT_ERRORS: usize = 8;

/// An error a part of a pipeline reported, as the status page lists it.
#[derive(Clone, Debug)]
pub struct RecentError {
    pub at: SystemTime,
    pub part: String,
    pub error: String,
}

static RECENT: Mutex<BTreeMap<String, VecDeque<RecentError>>> = Mutex::new(BTreeMap::new());

fn recent_lock() -> MutexGuard<'static, BTreeMap<String, VecDeque<RecentError>>> {
    RECENT.lock().unwrap_or_else(|e| e.into_inner())
}

/// The last errors the parts of `pipeline` reported, oldest first.
pub fn recent_errors(pipeline: &str) -> Vec<RecentError> {
    recent_lock().get(pipeline).map(|l| l.iter().cloned().collect()).unwrap_or_default()
}

/// How far a pipeline's source is behind its input, as far as the source
/// can tell: records (Kafka: the high watermark minus the committed
/// offset, over its partitions), bytes (Postgres: the WAL its slot keeps)
/// and seconds (now minus the time of the last record read).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Lag {
    pub records: Option<u64>,
    pub bytes: Option<u64>,
    pub seconds: Option<f64>,
}

static LAGS: Mutex<BTreeMap<String, Lag>> = Mutex::new(BTreeMap::new());

fn lags_lock() -> MutexGuard<'static, BTreeMap<String, Lag>> {
    LAGS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The source of `pipeline` is `records` behind (also `flowgate_lag_records`).
pub fn lag_records(pipeline: &str, records: u64) {
    lags_lock().entry(pipeline.to_string()).or_default().records = Some(records);
    metrics::gauge!("flowgate_lag_records", "pipeline" => pipeline.to_string()).set(records as f64);
}

/// The source of `pipeline` is `bytes` behind (also `flowgate_lag_bytes`).
pub fn lag_bytes(pipeline: &str, bytes: u64) {
    lags_lock().entry(pipeline.to_string()).or_default().bytes = Some(bytes);
    metrics::gauge!("flowgate_lag_bytes", "pipeline" => pipeline.to_string()).set(bytes as f64);
}

/// The source of `pipeline` is `seconds` behind (also `flowgate_lag_seconds`).
pub fn lag_seconds(pipeline: &str, seconds: f64) {
    lags_lock().entry(pipeline.to_string()).or_default().seconds = Some(seconds);
    metrics::gauge!("flowgate_lag_seconds", "pipeline" => pipeline.to_string()).set(seconds);
}

/// What the source of `pipeline` last said of its lag.
pub fn lag(pipeline: &str) -> Lag {
    lags_lock().get(pipeline).copied().unwrap_or_default()
}

impl Trouble {
    /// `sink retrying 12s (connection refused)`.
    pub fn describe(&self, part: &str) -> String {
        format!("{part} {} {}s ({})", self.what, self.since.elapsed().as_secs(), self.cause)
    }
}

/// `part` of `pipeline` works again.
pub fn recovered(pipeline: &str, part: &str) {
    troubles_lock().remove(&(pipeline.to_string(), part.to_string()));
}

/// The parts of `pipeline` in trouble, by part.
pub fn troubles(pipeline: &str) -> Vec<(String, Trouble)> {
    troubles_lock().iter().filter(|((p, _), _)| p == pipeline).map(|((_, part), t)| (part.clone(), t.clone())).collect()
}

/// Forgets what the parts of `pipeline` reported (it starts again, or ended).
pub fn forget(pipeline: &str) {
    troubles_lock().retain(|(p, _), _| p != pipeline);
    lags_lock().remove(pipeline);
}
