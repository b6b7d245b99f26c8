use std::sync::Arc;

use crate::{Ack, Record};

/// A record that a stage refused, with the reason. The engine hands it to the
/// pipeline's error policy (fail, skip or dead-letter) before the batch is acked.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub record: Record,
    pub reason: String,
    /// What kind of problem it is, for metrics and alerts.
    pub class: RefusalClass,
    /// Which stage refused it: `source`, `transform[0]:wasm`, `sink`, ...
    pub stage: Arc<str>,
}

/// What kind of problem made a stage refuse a record: a label with a few
/// values for metrics and alerts, where the reason is free text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalClass {
    /// It cannot be read as its format says: not JSON, not Avro, bad text.
    Malformed,
    /// It does not fit its schema.
    Schema,
    /// A plugin refused it (its `fail` outcome).
    Plugin,
    /// A plugin faulted on it: trapped, ran past its deadline or memory,
    /// answered malformed.
    PluginFault,
    /// A destination template (topic, key, table) cannot be filled from it.
    Template,
    /// The service refused it: a database constraint, the broker (too
    /// large), an HTTP 4xx.
    Refused,
}

impl RefusalClass {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalClass::Malformed => "malformed",
            RefusalClass::Schema => "schema",
            RefusalClass::Plugin => "plugin",
            RefusalClass::PluginFault => "plugin_fault",
            RefusalClass::Template => "template",
            RefusalClass::Refused => "refused",
        }
    }
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
    /// The batch's acknowledgement: taken by the engine when the batch is done;
    /// an asynchronous sink ([`DeliveryMode`](crate::DeliveryMode)) splits
    /// handles from it for the records it finishes later.
    pub ack: Option<Ack>,
    /// The source's position once this batch is handled, for sinks that commit it
    /// atomically with the records (exactly-once). Set by sources that have one.
    pub position: Option<Position>,
    /// What the sink's [`Prepare`](crate::Prepare) step made of the records,
    /// for its `write`.
    pub prepared: Option<Prepared>,
}

/// A sink's own result of [`Prepare::prepare`](crate::Prepare) on a batch, for
/// its `write` to take back. Opaque to the engine.
pub struct Prepared(Box<dyn std::any::Any + Send + Sync>);

impl Prepared {
    pub fn new<T: Send + Sync + 'static>(value: T) -> Self {
        Prepared(Box::new(value))
    }

    /// The value, if it is a `T`.
    pub fn take<T: 'static>(self) -> Option<T> {
        self.0.downcast().ok().map(|b| *b)
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prepared(..)")
    }
}

/// Where a source stands after a batch, in the source's own encoding.
///
/// A position is made of parts, each keyed by what it covers (`kafka:orders:3`
/// for one partition, `postgres` for a change feed) with a text value only
/// the source reads. A part replaces the stored part of the same key, so a
/// source whose batches cover some of its partitions hands out only those.
/// Sinks that keep positions with their data store `(pipeline, key, value)`
/// and never look inside; at start they give the parts back
/// ([`OpenContext::resume`](crate::OpenContext)) and the source decodes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Position {
    parts: Vec<(String, String)>,
}

impl Position {
    /// Sets part `key`, replacing one already there.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let (key, value) = (key.into(), value.into());
        match self.parts.iter_mut().find(|(k, _)| *k == key) {
            Some(part) => part.1 = value,
            None => self.parts.push((key, value)),
        }
    }

    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.set(key, value);
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.parts.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The parts, in the order they were set.
    pub fn parts(&self) -> impl Iterator<Item = (&str, &str)> {
        self.parts.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Position {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut p = Position::default();
        for (k, v) in iter {
            p.set(k, v);
        }
        p
    }
}

/// What a source remembers of the batches it handed out and the engine has
/// not acknowledged yet, oldest first: their sequence numbers with the source's
/// own record of where each leaves it. On `commit`, the source reads the
/// batches below the watermark, makes their position durable, then releases them,
/// so that a failed save is tried again at the next commit.
#[derive(Debug)]
pub struct PendingPositions<P> {
    batches: std::collections::VecDeque<(u64, P)>,
}

impl<P> Default for PendingPositions<P> {
    fn default() -> Self {
        PendingPositions { batches: std::collections::VecDeque::new() }
    }
}

impl<P> PendingPositions<P> {
    /// Remembers batch `seq`; sequence numbers never go down.
    pub fn push(&mut self, seq: u64, position: P) {
        debug_assert!(self.batches.back().is_none_or(|(s, _)| *s <= seq), "batch {seq} out of order");
        self.batches.push_back((seq, position));
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The batches every record of which is durably handled (below `done`).
    pub fn covered(&self, done: crate::Watermark) -> impl Iterator<Item = &(u64, P)> {
        self.batches.iter().take_while(move |(seq, _)| *seq < done.0)
    }

    /// Forgets the batches below `done`, once what they lead to is saved.
    pub fn release(&mut self, done: crate::Watermark) {
        self.take_covered(done);
    }

    /// Removes the batches below `done` and hands them over, oldest first:
    /// for a source whose entries are answered rather than saved (a request
    /// waiting for its records to be written).
    pub fn take_covered(&mut self, done: crate::Watermark) -> std::collections::vec_deque::Drain<'_, (u64, P)> {
        let n = self.covered(done).count();
        self.batches.drain(..n)
    }

    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// The newest batch remembered, to add to its position.
    pub fn last_mut(&mut self) -> Option<&mut (u64, P)> {
        self.batches.back_mut()
    }

    /// All remembered batches, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &(u64, P)> {
        self.batches.iter()
    }
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
        Batch {
            seq,
            records: Vec::with_capacity(capacity),
            rejected: Vec::new(),
            ack: None,
            position: None,
            prepared: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.rejected.is_empty()
    }

    pub fn reject(&mut self, record: Record, class: RefusalClass, reason: impl Into<String>, stage: &Arc<str>) {
        self.rejected.push(Rejected { record, reason: reason.into(), class, stage: Arc::clone(stage) });
    }
}
