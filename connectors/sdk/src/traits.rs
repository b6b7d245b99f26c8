use std::sync::Arc;

use async_trait::async_trait;

use crate::{Batch, ConnectorError, Position, Watermark};

/// The outcome of one [`Source::read`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// The batch holds records (or rejected input).
    Data,
    /// Nothing arrived for a while; the batch is empty. Returning lets the engine
    /// commit positions while the source waits.
    Idle,
    /// The input is exhausted; the pipeline drains and stops.
    End,
}

/// Where records come from.
///
/// The engine calls `read` with an empty batch whose `seq` is set. A source remembers
/// the position reached by each batch it returns; `commit` then tells it that every
/// batch below the watermark is durably handled, and the source persists the
/// position of the last of them (Kafka offsets, a Postgres LSN, a file offset).
/// A source must not block in `read` for much longer than a second without
/// returning [`Read::Idle`].
#[async_trait]
pub trait Source: Send {
    async fn read(&mut self, batch: &mut Batch) -> Result<Read, ConnectorError>;

    async fn commit(&mut self, done: Watermark) -> Result<(), ConnectorError>;

    /// Called about every 250 ms while the engine holds the source back (the
    /// stages after it are full: a slow sink, or one waiting out an outage).
    /// A source whose service expels a silent client keeps its session here
    /// without taking new records: a Kafka consumer that does not poll for
    /// `max.poll.interval.ms` leaves its group, and its partitions are read
    /// again by another member.
    async fn keep_alive(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Whether the source waits for an acknowledgement before it goes on (it
    /// bounds what it has out unacknowledged): the engine then commits as
    /// soon as the watermark moves, instead of every 250 ms. Such a source
    /// returns from `read` within milliseconds while it waits.
    fn commit_soon(&self) -> bool {
        false
    }

    /// Releases connections; called once after the final commit.
    async fn close(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// Rewrites records. A transform replaces `batch.records`, may move records it
/// refuses to `batch.rejected` with a reason, and must not touch `batch.ack`.
#[async_trait]
pub trait Transform: Send {
    async fn apply(&mut self, batch: &mut Batch) -> Result<(), ConnectorError>;
}

/// How a sink tells the engine that a batch is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    /// Once `write` and then `commit` returned. The sink leaves `batch.ack`
    /// alone; the engine acknowledges.
    Synchronous,
    /// By acknowledgement: `write` hands records on and splits handles from
    /// `batch.ack` (always set) that it acknowledges as records become durable
    /// (delivery reports); records that fail after `write` returned go to its
    /// [`LateRejects`](crate::LateRejects). Only a sink opened with a
    /// late-reject channel may be asynchronous.
    Asynchronous,
}

/// Where records go, and where dead letters go: the engine delivers a batch
/// of either the same way, `write` then `commit`, each retried on a transient
/// error until it succeeds or the pipeline stops.
///
/// `write` moves records that can never be written (a constraint violation, a
/// value of the wrong shape) to `batch.rejected` with the reason, and the
/// engine applies the error policy to them before `commit`. A transient error
/// makes the engine call `write` again with the same batch, so a sink must
/// either write a batch atomically or accept that a retry may repeat records
/// (at-least-once).
#[async_trait]
pub trait Sink: Send {
    async fn write(&mut self, batch: &mut Batch) -> Result<(), ConnectorError>;

    /// The sink's work on a batch that needs neither its connection nor its
    /// state (parsing records into rows), if it has any: the engine runs it on
    /// each batch before `write`, while the sink writes the batches before it.
    fn preparer(&self) -> Option<Arc<dyn Prepare>> {
        None
    }

    /// Whether a batch is durable when `commit` returns or when it is acknowledged.
    fn delivery(&self) -> DeliveryMode {
        DeliveryMode::Synchronous
    }

    /// Called after `write` and after the batch's refused records are handled,
    /// before it is acknowledged: sinks that store `batch.position` with their
    /// data commit both here. A transient error makes the engine write the batch
    /// again and call `commit` again.
    async fn commit(&mut self, _batch: &mut Batch) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// The source position this sink stored with its data (effectively-once
    /// delivery), for the source to resume from; `None` when it keeps none.
    async fn stored_position(&mut self) -> Result<Option<Position>, ConnectorError> {
        Ok(None)
    }

    /// Flushes and releases resources; called once when the pipeline stops.
    async fn close(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// A sink's [`Sink::preparer`]: it leaves its result in `batch.prepared`,
/// which `write` takes. Nothing else touches the records between the two,
/// but `write` must also work without it (a retried batch, dead letters).
pub trait Prepare: Send + Sync {
    fn prepare(&self, batch: &mut Batch);
}
