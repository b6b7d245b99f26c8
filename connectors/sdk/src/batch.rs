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
    /// asynchronously and acknowledges them itself. A batch without one (such as a
    /// dead-letter batch) must be durable when `write` returns.
    pub ack: Option<Ack>,
    /// The source's position once this batch is handled, for sinks that commit it
    /// atomically with the records (exactly-once). Set by sources that have one.
    pub position: Option<Position>,
}

/// Where a source stands after a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Position {
    /// Per partition read in the batch, the offset of the next record after it.
    Kafka(Vec<PartitionOffset>),
    /// A Postgres change feed: `end` is the end LSN of the last transaction
    /// the batch completes; `within`, when the batch stops inside the next
    /// transaction, that transaction's id and how many of its changes the
    /// batches up to this one hold. A feed resumes after `end`, skipping those
    /// changes if the first transaction it meets is that one. (Counted, not
    /// compared by LSN: the rows of one multi-row insert share an LSN.)
    Lsn { end: u64, within: Option<(u32, u64)> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionOffset {
    pub topic: Arc<str>,
    pub partition: i32,
    pub next: i64,
    /// The source's assignment generation of the partition when it was read; the
    /// position is stale once the partition was revoked since.
    pub generation: u64,
}

/// A record a sink refused after its `write` returned (a Kafka delivery that failed
/// for good), with a handle of its batch's acknowledgement: the engine applies the
/// error policy to it, then acknowledges.
#[derive(Debug)]
pub struct LateReject {
    pub rejected: Rejected,
    pub ack: Ack,
}

/// Where asynchronous sinks send their [`LateReject`]s. Unbounded because a sink's
/// delivery callbacks must not block; it holds at most the records in flight.
pub type LateRejects = tokio::sync::mpsc::UnboundedSender<LateReject>;

impl Batch {
    pub fn with_capacity(seq: u64, capacity: usize) -> Self {
        Batch { seq, records: Vec::with_capacity(capacity), rejected: Vec::new(), ack: None, position: None }
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.rejected.is_empty()
    }

    pub fn reject(&mut self, record: Record, reason: impl Into<String>, stage: &Arc<str>) {
        self.rejected.push(Rejected { record, reason: reason.into(), stage: Arc::clone(stage) });
    }
}
