use std::sync::Arc;

use crate::{Ack, Record};

/// A record that a stage refused, with the reason. The engine hands it to the
/// pipeline's error policy (fail, skip or dead-letter) before the batch is acked.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub record: Record,
    pub reason: String,
    /// Which stage refused it: `source`, `transform[0]:wasm`, `sink`, ...
    pub stage: Arc<str>,
}

/// Records moving through the pipeline together, with their acknowledgement handle.
///
/// Records a transform derives from a batch (by mapping, filtering or fan-out) stay in
/// it and share its handle: the source position behind them advances once all of
/// them are written.
#[derive(Debug)]
pub struct Batch {
    pub seq: u64,
    pub records: Vec<Record>,
    pub rejected: Vec<Rejected>,
    /// Taken by the engine when the batch is done, or by a sink that finishes records
    /// asynchronously and acknowledges them itself.
    pub ack: Option<Ack>,
}

impl Batch {
    pub fn with_capacity(seq: u64, capacity: usize) -> Self {
        Batch { seq, records: Vec::with_capacity(capacity), rejected: Vec::new(), ack: None }
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.rejected.is_empty()
    }

    pub fn reject(&mut self, record: Record, reason: impl Into<String>, stage: &Arc<str>) {
        self.rejected.push(Rejected { record, reason: reason.into(), stage: Arc::clone(stage) });
    }
}
