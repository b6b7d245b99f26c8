//! Runs one pipeline: a source task, an optional transform task and a sink task,
//! joined by bounded channels so that a slow stage slows the ones before it.
//!
//! Positions: every batch gets an [`Ack`](flowgate_sdk::Ack) from the pipeline's
//! [`AckTracker`]. The sink task acknowledges a batch only after its records are
//! written and its refused records are dead-lettered (or skipped), and the source
//! commits only the contiguous watermark. A crash therefore loses nothing: at
//! worst the batches after the last commit are read and written again.

mod errors;
mod stats;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use flowgate_sdk::{AckTracker, Batch, ConnectorError, LateReject, Prepare, Read, Sink, Source, Transform, health};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use errors::{ErrorHandler, envelope};
pub use stats::{Stats, Summary, compact};

use crate::config::BatchConfig;

/// How often positions are committed while records flow; it bounds how much is
/// read again after a crash. Commits also happen at the end of input and on shutdown.
const COMMIT_EVERY: Duration = Duration::from_millis(250);

/// Why a pipeline stopped. Show it with `flowgate_sdk::error_chain`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    // The connector's error is shown with its causes in the message, so it
    // is a field rather than a `#[source]`, which would show them twice.
    #[error("{stage} failed: {}", cause.chain())]
    Connector { stage: String, cause: ConnectorError },
    #[error("{stage} refused a record and the error policy is `fail`: {reason}\n  record: {record}")]
    Refused { stage: String, reason: String, record: String },
    #[error("stopped while {stage} was retrying: {}", cause.chain())]
    Interrupted { stage: String, cause: ConnectorError },
    /// A stage's task panicked or was cancelled.
    #[error("{stage} failed")]
    Task {
        stage: String,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("batch {seq} was dropped before it was written; positions stay before it")]
    Dropped { seq: u64 },
}

impl EngineError {
    fn connector(stage: &str, cause: ConnectorError) -> Self {
        EngineError::Connector { stage: stage.to_string(), cause }
    }
}

/// Exponential backoff from `min` up to 30 s, jittered (pipelines waiting on
/// one service do not retry in step), without a limit.
pub(crate) fn retry_backoff(min: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Waits `delay` before retrying after the transient error `e`; if the
/// pipeline is stopped meanwhile, `e` comes back as the reason it stopped.
async fn sleep_unless_stopped(
    delay: Duration,
    stage: &str,
    e: ConnectorError,
    shutdown: &CancellationToken,
) -> Result<(), EngineError> {
    tokio::select! {
        _ = tokio::time::sleep(delay) => Ok(()),
        _ = shutdown.cancelled() => Err(EngineError::Interrupted { stage: stage.into(), cause: e }),
    }
}

/// Writes a batch, retrying transient errors with exponential backoff (100 ms up
/// to 30 s, without limit: an outage makes the pipeline wait, not drop data)
/// until it succeeds or the pipeline is stopped.
pub async fn write_with_retry(
    sink: &mut dyn Sink,
    batch: &mut Batch,
    stage: &str,
    pipeline: &str,
    shutdown: &CancellationToken,
) -> Result<(), EngineError> {
    let mut backoff = retry_backoff(Duration::from_millis(100));
    let mut attempt = 1u32;
    loop {
        match sink.write(batch).await {
            Ok(()) => {
                if attempt > 1 {
                    health::recovered(pipeline, stage);
                    tracing::info!(pipeline, stage, attempt, "write succeeded after retrying");
                }
                return Ok(());
            }
            Err(e) if e.is_retryable() => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                health::trouble(pipeline, stage, "retrying", e.chain(), false);
                tracing::warn!(pipeline, stage, attempt, retry_in = ?delay, error = %e.chain(), "write failed; retrying");
                sleep_unless_stopped(delay, stage, e, shutdown).await?;
                attempt += 1;
            }
            Err(e) => return Err(EngineError::connector(stage, e)),
        }
    }
}

pub struct Pipeline {
    pub name: Arc<str>,
    pub source: Box<dyn Source>,
    /// The transform chain, one copy per worker (none: no transforms), each
    /// transform with its stage name (`transform[0]:wasm`).
    pub transforms: Vec<Chain>,
    pub sink: Box<dyn Sink>,
    /// Records the sink refuses after `write` returned (see [`flowgate_sdk::LateRejects`]).
    pub late: mpsc::UnboundedReceiver<LateReject>,
    pub errors: ErrorHandler,
    pub batch: BatchConfig,
    pub stats: Arc<Stats>,
}

/// One copy of the transform chain: each transform with its stage name.
pub type Chain = Vec<(Arc<str>, Box<dyn Transform>)>;

/// A chain with each transform's time histogram.
type TimedChain = Vec<(metrics::Histogram, Arc<str>, Box<dyn Transform>)>;

/// Runs `batch` through `chain`. A transient error (a schema registry out of
/// reach) is retried with the same batch: transforms change a batch only once
/// they succeed. A lasting one stops the pipeline.
async fn apply_chain(
    name: &str,
    chain: &mut TimedChain,
    batch: &mut Batch,
    stop: &CancellationToken,
) -> Result<(), EngineError> {
    for (took, stage, t) in chain.iter_mut() {
        if batch.records.is_empty() {
            break;
        }
        let started = Instant::now();
        let mut backoff = retry_backoff(Duration::from_millis(100));
        let mut retried = false;
        loop {
            match t.apply(batch).await {
                Ok(()) => {
                    if retried {
                        health::recovered(name, stage);
                    }
                    took.record(started.elapsed().as_secs_f64());
                    break;
                }
                Err(e) if e.is_retryable() => {
                    retried = true;
                    health::trouble(name, stage, "retrying", e.chain(), false);
                    let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                    tracing::warn!(stage = &**stage, retry_in = ?delay, error = %e.chain(), "transform failed; retrying");
                    if let Err(stopped) = sleep_unless_stopped(delay, stage, e, stop).await {
                        stop.cancel();
                        return Err(stopped);
                    }
                }
                Err(e) => {
                    stop.cancel();
                    return Err(EngineError::connector(stage, e));
                }
            }
        }
    }
    Ok(())
}

/// The transform stage: one chain runs batches one after the other; several
/// (`workers`) run side by side, each on its own batch, and the batches go on
/// in the order they came: the sink, the acknowledgements and the order per
/// key are as with one. At most as many batches as chains are between this
/// stage's input and output, finished or not (a slow batch at the head holds
/// the others back rather than let them pile up), so memory stays bounded by
/// the pipeline's buffers.
async fn transform_task(
    name: Arc<str>,
    chains: Vec<Chain>,
    mut rx: mpsc::Receiver<Batch>,
    tx: mpsc::Sender<Batch>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) -> Result<(), EngineError> {
    let timed = |chain: Chain| -> TimedChain {
        chain.into_iter().map(|(stage, t)| (stats.stage_histogram(&stage), stage, t)).collect()
    };
    let mut free: Vec<TimedChain> = chains.into_iter().map(timed).collect();
    if free.len() == 1 {
        let mut chain = free.pop().expect("one chain");
        while let Some(mut batch) = rx.recv().await {
            stats.m_queue_transform.set(rx.len() as f64);
            apply_chain(&name, &mut chain, &mut batch, &stop).await?;
            if tx.send(batch).await.is_err() {
                break; // The sink task stopped; its error is reported from there.
            }
        }
        return Ok(());
    }
    let workers = free.len();
    let (back_tx, mut back_rx) = mpsc::channel::<TimedChain>(workers);
    // The batches in the workers, in the order they came.
    let mut working: VecDeque<tokio::task::JoinHandle<Result<Batch, EngineError>>> = VecDeque::new();
    let mut input_open = true;
    while input_open || !working.is_empty() {
        tokio::select! {
            biased;
            Some(chain) = back_rx.recv() => free.push(chain),
            done = async { working.front_mut().expect("not empty").await }, if !working.is_empty() => {
                working.pop_front();
                let batch = match done {
                    Ok(Ok(batch)) => batch,
                    Ok(Err(e)) => {
                        abandon(working);
                        return Err(e);
                    }
                    Err(e) => {
                        stop.cancel();
                        abandon(working);
                        return Err(EngineError::Task { stage: "transform".into(), source: e });
                    }
                };
                if tx.send(batch).await.is_err() {
                    break; // The sink task stopped; its error is reported from there.
                }
            }
            batch = rx.recv(), if input_open && !free.is_empty() && working.len() < workers => {
                let Some(mut batch) = batch else {
                    input_open = false;
                    continue;
                };
                stats.m_queue_transform.set(rx.len() as f64);
                let mut chain = free.pop().expect("a free chain");
                let (name, stop, back) = (Arc::clone(&name), stop.clone(), back_tx.clone());
                working.push_back(tokio::spawn(async move {
                    let applied = apply_chain(&name, &mut chain, &mut batch, &stop).await;
                    // Closed only once this task is gone: the send cannot fail but on shutdown.
                    let _ = back.send(chain).await;
                    applied.map(|()| batch)
                }));
            }
        }
    }
    Ok(())
}

/// Runs the sink's [`Prepare`] step on each batch on its way to the sink. On
/// a blocking thread: a batch takes milliseconds of CPU, and the runtime's
/// workers must stay free to wake the sink as each of its round trips ends.
/// The queue before it is the sink's queue in the metrics.
async fn prepare_task(
    prepare: Arc<dyn Prepare>,
    (mut rx, tx): (mpsc::Receiver<Batch>, mpsc::Sender<Batch>),
    stats: Arc<Stats>,
    stop: CancellationToken,
) -> Result<(), EngineError> {
    while let Some(mut batch) = rx.recv().await {
        stats.m_queue_sink.set(rx.len() as f64);
        if !batch.records.is_empty() {
            let prepare = Arc::clone(&prepare);
            let prepared = tokio::task::spawn_blocking(move || {
                prepare.prepare(&mut batch);
                batch
            })
            .await;
            batch = match prepared {
                Ok(batch) => batch,
                Err(e) => {
                    stop.cancel();
                    return Err(EngineError::Task { stage: "sink.prepare".into(), source: e });
                }
            };
        }
        if tx.send(batch).await.is_err() {
            break; // The sink task stopped; its error is reported from there.
        }
    }
    Ok(())
}

/// Stops the workers still on batches that will not be delivered: the
/// pipeline is stopping, and their acknowledgements, dropped, keep the
/// source's position before them.
fn abandon(working: VecDeque<tokio::task::JoinHandle<Result<Batch, EngineError>>>) {
    for worker in working {
        worker.abort();
    }
}

/// What happens to the records a sink refuses while a batch is delivered.
pub(crate) enum Refusals<'a> {
    /// The pipeline's error policy (the pipeline's sink).
    Policy(&'a mut ErrorHandler, &'a Stats),
    /// None may be refused: a dead letter that cannot be written stops the pipeline.
    DeadLetters,
}

/// Delivers one batch to a sink, the same way for records and dead letters:
/// writes, disposes of refused records, then commits; a transient commit
/// failure (an aborted transaction) writes the batch again. Durable on return
/// for a synchronous sink; an asynchronous one acknowledges through `batch.ack`.
pub(crate) async fn deliver(
    sink: &mut dyn Sink,
    stage: &str,
    mut refusals: Refusals<'_>,
    batch: &mut Batch,
    name: &str,
    shutdown: &CancellationToken,
) -> Result<(), EngineError> {
    let mut backoff = retry_backoff(Duration::from_millis(100));
    let mut retried = false;
    // The pipeline's own sink is timed; dead-letter sinks are not.
    let stats = match &refusals {
        Refusals::Policy(_, stats) => Some(*stats),
        Refusals::DeadLetters => None,
    };
    loop {
        if !batch.records.is_empty() {
            let started = Instant::now();
            write_with_retry(sink, batch, stage, name, shutdown).await?;
            if let Some(stats) = stats {
                stats.m_sink_write.record(started.elapsed().as_secs_f64());
            }
        }
        match &mut refusals {
            Refusals::Policy(errors, stats) => errors.handle(batch, stats, shutdown).await?,
            Refusals::DeadLetters => {
                if let Some(r) = batch.rejected.first() {
                    return Err(EngineError::Refused {
                        stage: stage.into(),
                        reason: format!("the dead-letter sink refused a record: {}", r.reason),
                        record: errors::locate(&r.record),
                    });
                }
            }
        }
        let started = Instant::now();
        match sink.commit(batch).await {
            Ok(()) => {
                if retried {
                    health::recovered(name, stage);
                }
                if let Some(stats) = stats {
                    stats.m_sink_commit.record(started.elapsed().as_secs_f64());
                }
                return Ok(());
            }
            Err(e) if e.is_retryable() => {
                retried = true;
                health::trouble(name, stage, "retrying its commit", e.chain(), false);
                let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                tracing::warn!(pipeline = name, stage, retry_in = ?delay, error = %e.chain(), "commit failed; writing the batch again");
                sleep_unless_stopped(delay, stage, e, shutdown).await?;
            }
            Err(e) => return Err(EngineError::connector(stage, e)),
        }
    }
}

/// Applies the error policy to a record the sink refused after `write` returned,
/// then releases its share of the batch.
async fn handle_late(
    errors: &mut ErrorHandler,
    late: LateReject,
    stats: &Stats,
    shutdown: &CancellationToken,
) -> Result<(), EngineError> {
    // It was counted as written when its batch was delivered.
    late.ack.count_written(-1);
    let mut batch = Batch::with_capacity(late.ack.seq(), 0);
    batch.rejected.push(late.rejected);
    // Its share of the batch goes with it, for an asynchronous dead-letter sink to split.
    batch.ack = Some(late.ack);
    errors.handle(&mut batch, stats, shutdown).await?;
    if let Some(ack) = batch.ack.take() {
        ack.ack();
    }
    Ok(())
}

/// Writes batches and handles late refusals: those arrive until every batch
/// handed out is settled, which is what the tracker beside `late` says.
/// `(rx, queue)`: its input, and whether that is the queue the metrics show
/// (not when a prepare step is before it).
async fn sink_task(
    mut sink: Box<dyn Sink>,
    mut errors: ErrorHandler,
    (mut rx, queue): (mpsc::Receiver<Batch>, bool),
    (mut late, tracker): (mpsc::UnboundedReceiver<LateReject>, Arc<AckTracker>),
    stats: Arc<Stats>,
    name: Arc<str>,
    shutdown: CancellationToken,
) -> Result<(), EngineError> {
    let result = async {
        loop {
            tokio::select! {
                biased;
                Some(l) = late.recv() => handle_late(&mut errors, l, &stats, &shutdown).await?,
                batch = rx.recv() => {
                    let Some(mut batch) = batch else { break };
                    if queue {
                        stats.m_queue_sink.set(rx.len() as f64);
                    }
                    let started = Instant::now();
                    let refusals = Refusals::Policy(&mut errors, &stats);
                    deliver(sink.as_mut(), "sink", refusals, &mut batch, &name, &shutdown).await?;
                    stats.delivered(started.elapsed());
                    if let Some(ack) = batch.ack.take() {
                        // They count as written once the batch is done: for an
                        // asynchronous sink, once their deliveries are confirmed.
                        ack.count_written(batch.records.len() as i64);
                        ack.ack();
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        shutdown.cancel(); // Stop the source; it commits what was acknowledged.
    }
    // Closing waits for asynchronous deliveries. Failures among them keep
    // arriving on `late` until every batch handed out is settled.
    let closed = sink.close().await.map_err(|e| EngineError::connector("sink", e));
    let mut late_result = Ok(());
    if result.is_ok() {
        loop {
            tokio::select! {
                Some(l) = late.recv() => {
                    late_result = handle_late(&mut errors, l, &stats, &shutdown).await;
                    if late_result.is_err() {
                        break;
                    }
                }
                _ = tracker.settled() => break,
            }
        }
    }
    let dlq_closed = match errors.dead_letter.as_mut() {
        Some(d) => d.close().await.map_err(|e| EngineError::connector("dead_letter", e)),
        None => Ok(()),
    };
    result.and(late_result).and(closed).and(dlq_closed)
}

impl Pipeline {
    /// Runs until the source ends, `shutdown` is cancelled, or a stage fails. In
    /// every case the positions of all acknowledged batches are committed before
    /// it returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<Summary, EngineError> {
        let Pipeline { name, mut source, transforms, sink, late, errors, batch: batching, stats } = self;
        let tracker = AckTracker::new();
        stats.track(&tracker);
        {
            let stats = Arc::clone(&stats);
            tracker.observe(move |done| stats.done(done));
        }
        // Stops the pipeline's own stages when one of them fails.
        let stop = shutdown.child_token();

        let (source_tx, source_rx) = mpsc::channel::<Batch>(batching.buffer);
        let (sink_rx, transform_handle) = if transforms.iter().all(Vec::is_empty) {
            (source_rx, None)
        } else {
            let (tx, rx) = mpsc::channel::<Batch>(batching.buffer);
            let task = transform_task(Arc::clone(&name), transforms, source_rx, tx, Arc::clone(&stats), stop.clone());
            (rx, Some(tokio::spawn(task)))
        };
        // The sink's connection-free work on a batch overlaps its writing of the
        // batch before it. One batch ready ahead (and one more on its way) is
        // enough for that; more would hold prepared batches (about twice
        // their records' size) for nothing.
        let (sink_rx, prepare_handle) = match sink.preparer() {
            Some(prepare) => {
                let (tx, rx) = mpsc::channel::<Batch>(1);
                let task = prepare_task(prepare, (sink_rx, tx), Arc::clone(&stats), stop.clone());
                (rx, Some(tokio::spawn(task)))
            }
            None => (sink_rx, None),
        };
        let sink_handle = tokio::spawn(sink_task(
            sink,
            errors,
            (sink_rx, prepare_handle.is_none()),
            (late, Arc::clone(&tracker)),
            Arc::clone(&stats),
            Arc::clone(&name),
            stop.clone(),
        ));

        let mut committed = tracker.watermark();
        let mut last_commit = Instant::now();
        let mut source_error = None;
        let mut ended = false;
        // The source's reads are failing: it is cut off from its service.
        let mut cut_off = false;
        while !stop.is_cancelled() && tracker.failed().is_none() {
            let mut batch = Batch::with_capacity(tracker.next_seq(), batching.size);
            let read = tokio::select! {
                r = source.read(&mut batch) => r,
                _ = stop.cancelled() => break,
            };
            if cut_off && read.is_ok() {
                cut_off = false;
                health::recovered(&name, "source");
            }
            match read {
                Ok(Read::Data) => {
                    // Wait for room downstream, committing meanwhile: a sink that is
                    // slow or waiting out an outage holds the source here, and the
                    // source keeps its session with its service alive.
                    let permit = loop {
                        tokio::select! {
                            permit = source_tx.reserve() => break Ok(permit.ok()),
                            _ = tokio::time::sleep(COMMIT_EVERY) => {
                                commit(&mut source, &tracker, &mut committed, &mut last_commit, &name).await;
                                match source.keep_alive().await {
                                    Ok(()) => {}
                                    Err(e) if e.is_retryable() => {
                                        tracing::warn!(pipeline = %name, error = %e.chain(), "source keep-alive failed; trying again");
                                    }
                                    Err(e) => break Err(e),
                                }
                            }
                        }
                    };
                    let permit = match permit {
                        Ok(Some(permit)) => permit,
                        Ok(None) => break, // The sink task stopped.
                        Err(e) => {
                            source_error = Some(EngineError::connector("source", e));
                            break;
                        }
                    };
                    let read = batch.records.len() as u64 + batch.rejected.len() as u64;
                    let oldest = batch.records.iter().filter_map(|r| r.timestamp).min();
                    batch.ack = Some(tracker.begin_batch(read, oldest));
                    stats.read(read);
                    permit.send(batch);
                }
                Ok(Read::Idle) => {}
                Ok(Read::End) => {
                    ended = true;
                    break;
                }
                Err(e) if e.is_retryable() => {
                    cut_off = true;
                    health::trouble(&name, "source", "cut off", e.chain(), true);
                    tracing::warn!(pipeline = %name, error = %e.chain(), "source read failed; retrying in 1s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.cancelled() => break,
                    }
                }
                Err(e) => {
                    source_error = Some(EngineError::connector("source", e));
                    break;
                }
            }
            if last_commit.elapsed() >= COMMIT_EVERY || source.commit_soon() {
                commit(&mut source, &tracker, &mut committed, &mut last_commit, &name).await;
            }
        }
        if ended {
            tracing::info!(pipeline = %name, "end of input; draining");
        } else if shutdown.is_cancelled() {
            tracing::info!(pipeline = %name, in_flight = tracker.in_flight(), "stopping; draining records in flight");
        }

        // Closing the channel lets the later stages finish what is queued and stop.
        drop(source_tx);
        let transform_result = match transform_handle {
            Some(h) => h.await.unwrap_or_else(|e| Err(EngineError::Task { stage: "transform".into(), source: e })),
            None => Ok(()),
        };
        let prepare_result = match prepare_handle {
            Some(h) => h.await.unwrap_or_else(|e| Err(EngineError::Task { stage: "sink.prepare".into(), source: e })),
            None => Ok(()),
        };
        let sink_result =
            sink_handle.await.unwrap_or_else(|e| Err(EngineError::Task { stage: "sink".into(), source: e }));

        // A sink that finishes records asynchronously may still hold handles of
        // batches it accepted; wait for them (or for one of them to fail).
        if sink_result.is_ok() {
            tracker.settled().await;
        }
        // Everything acknowledged is now final; commit it whatever else happened.
        let final_commit = source.commit(tracker.watermark()).await;
        if let Err(e) = &final_commit {
            tracing::error!(pipeline = %name, error = %e.chain(), "final commit failed");
        }
        if let Err(e) = source.close().await {
            tracing::warn!(pipeline = %name, error = %e.chain(), "closing the source failed");
        }
        let summary = stats.summary();
        // A batch given up without an error from its stage still stops the pipeline.
        let abandoned = match tracker.failed() {
            Some(seq) => Err(EngineError::Dropped { seq }),
            None => Ok(()),
        };
        match source_error.map_or(Ok(()), Err).and(transform_result).and(prepare_result).and(sink_result).and(abandoned)
        {
            Ok(()) => final_commit.map(|_| summary).map_err(|e| EngineError::connector("source", e)),
            Err(e) => Err(e),
        }
    }
}

async fn commit(
    source: &mut Box<dyn Source>,
    tracker: &AckTracker,
    committed: &mut flowgate_sdk::Watermark,
    last_commit: &mut Instant,
    name: &str,
) {
    *last_commit = Instant::now();
    let w = tracker.watermark();
    if w == *committed {
        return;
    }
    match source.commit(w).await {
        Ok(()) => *committed = w,
        // Not fatal: the next commit covers this one; a crash before it only
        // means more records are read again.
        Err(e) => tracing::warn!(pipeline = name, error = %e.chain(), "committing positions failed; will retry"),
    }
}

#[cfg(test)]
mod tests;
