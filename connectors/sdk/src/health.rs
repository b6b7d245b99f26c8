//! What connectors say of themselves on `/health`, beside the pipeline's
//! state: a Postgres source standing by while another process runs its slot,
//! say. A process-wide registry, as the `metrics` facade is: a connector
//! reports where it is, without a handle threaded to it.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

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
