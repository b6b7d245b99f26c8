//! What the parts of a pipeline say of themselves on `/health`, beside the
//! pipeline's state: a Postgres source standing by while another process
//! runs its slot, a source cut off from its service, a sink retrying. A
//! process-wide registry, as the `metrics` facade is: a connector reports
//! where it is, without a handle threaded to it.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

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
    match troubles.get_mut(&(pipeline.to_string(), part.to_string())) {
        Some(t) => t.cause = cause,
        None => {
            let t = Trouble { since: Instant::now(), what, cause, at_once };
            troubles.insert((pipeline.to_string(), part.to_string()), t);
        }
    }
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
}
