//! Ordered acknowledgement.
//!
//! Every batch a source produces gets a sequence number and an [`Ack`]. Sinks finish
//! batches in any order (a Kafka sink's delivery reports arrive out of order), but a
//! source may only advance its position past a batch once that batch *and every batch
//! before it* is done. The [`AckTracker`] turns completions into that contiguous
//! [`Watermark`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use tokio::sync::Notify;

/// All batches with a sequence number below this are durably handled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Watermark(pub u64);

#[derive(Debug, Default)]
struct Inner {
    next_seq: u64,
    /// Lowest sequence number not yet done; the watermark.
    low: u64,
    /// Done batches above `low`, waiting for the gap below them to close.
    done: BTreeSet<u64>,
    /// The first batch whose handle was dropped without being acknowledged.
    failed: Option<u64>,
    /// Batches not yet done: when each was handed out, and the source
    /// timestamp of its oldest record.
    pending: BTreeMap<u64, (Instant, Option<i64>)>,
}

/// What the tracker tells its observer when a batch is done.
#[derive(Clone, Copy, Debug)]
pub struct Done {
    /// Records the source read into the batch.
    pub read: u64,
    /// Records written by the sink, as counted on the batch's handles.
    pub written: u64,
    /// When the batch was handed out.
    pub since: Instant,
    /// The source timestamp (ms since the epoch) of its oldest record, if
    /// its records have one.
    pub oldest_ms: Option<i64>,
}

type Observer = Box<dyn Fn(&Done) + Send + Sync>;

#[derive(Default)]
pub struct AckTracker {
    inner: Mutex<Inner>,
    changed: Notify,
    /// Records handed out and not yet done.
    records_in_flight: AtomicU64,
    observer: OnceLock<Observer>,
}

impl std::fmt::Debug for AckTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckTracker").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl AckTracker {
    pub fn new() -> Arc<Self> {
        Arc::new(AckTracker::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves only plain integers behind; the
        // state is still consistent, so poisoning is not a reason to fail.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sequence number the next [`AckTracker::begin`] will hand out.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// Opens the next batch and returns its handle.
    pub fn begin(self: &Arc<Self>) -> Ack {
        self.begin_batch(0, None)
    }

    /// Opens the next batch, of `read` records whose oldest has the source
    /// timestamp `oldest_ms`, and returns its handle.
    pub fn begin_batch(self: &Arc<Self>, read: u64, oldest_ms: Option<i64>) -> Ack {
        let since = Instant::now();
        let seq = {
            let mut inner = self.lock();
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner.pending.insert(seq, (since, oldest_ms));
            seq
        };
        self.records_in_flight.fetch_add(read, Ordering::Relaxed);
        let shared =
            Shared { seq, pending: AtomicUsize::new(1), tracker: Arc::clone(self), read, written: AtomicI64::new(0) };
        Ack { shared: Some(Arc::new(shared)) }
    }

    /// Calls `observer` as each batch is done (at most one observer).
    pub fn observe(&self, observer: impl Fn(&Done) + Send + Sync + 'static) {
        // A second observer is a programming error; the first one stays.
        let _ = self.observer.set(Box::new(observer));
    }

    /// Records of the batches handed out and not yet done.
    pub fn records_in_flight(&self) -> u64 {
        self.records_in_flight.load(Ordering::Relaxed)
    }

    /// Of the batches not yet done, the earliest read: when it was handed
    /// out, and the oldest source timestamp among them (ms since the epoch).
    pub fn oldest_pending(&self) -> Option<(Instant, Option<i64>)> {
        let inner = self.lock();
        let (since, _) = *inner.pending.values().next()?;
        Some((since, inner.pending.values().filter_map(|(_, ms)| *ms).min()))
    }

    pub fn watermark(&self) -> Watermark {
        Watermark(self.lock().low)
    }

    /// Batches handed out but not yet done.
    pub fn in_flight(&self) -> u64 {
        let inner = self.lock();
        inner.next_seq - inner.low
    }

    /// The first batch that was given up (its handle dropped without an ack), if any.
    pub fn failed(&self) -> Option<u64> {
        self.lock().failed
    }

    /// Waits until every batch handed out so far is done, or one has failed.
    pub async fn settled(&self) {
        loop {
            let notified = self.changed.notified();
            {
                let inner = self.lock();
                if inner.low == inner.next_seq || inner.failed.is_some() {
                    return;
                }
            }
            notified.await;
        }
    }

    fn complete(&self, shared: &Shared) {
        let seq = shared.seq;
        self.records_in_flight.fetch_sub(shared.read, Ordering::Relaxed);
        let begun = {
            let mut inner = self.lock();
            let begun = inner.pending.remove(&seq);
            if seq == inner.low {
                inner.low += 1;
                while inner.done.first() == Some(&inner.low) {
                    inner.done.pop_first();
                    inner.low += 1;
                }
            } else {
                inner.done.insert(seq);
            }
            begun
        };
        // After the watermark moved, so that the observer sees it moved.
        if let (Some(observe), Some((since, oldest_ms))) = (self.observer.get(), begun) {
            observe(&Done {
                read: shared.read,
                written: shared.written.load(Ordering::Relaxed).max(0) as u64,
                since,
                oldest_ms,
            });
        }
        self.changed.notify_waiters();
    }

    fn fail(&self, seq: u64) {
        {
            let mut inner = self.lock();
            inner.failed = Some(inner.failed.map_or(seq, |f| f.min(seq)));
        }
        self.changed.notify_waiters();
    }
}

#[derive(Debug)]
struct Shared {
    seq: u64,
    pending: AtomicUsize,
    tracker: Arc<AckTracker>,
    read: u64,
    /// Records written, counted by whoever writes them (less those refused
    /// after all): the batch's records count as written only once it is done.
    written: AtomicI64,
}

/// The acknowledgement handle of one batch.
///
/// A batch is done when every handle split from it has been acknowledged. A handle
/// dropped without [`Ack::ack`] marks the batch failed: the source's position never
/// moves past it, and the engine stops the pipeline rather than lose the records.
#[derive(Debug)]
pub struct Ack {
    shared: Option<Arc<Shared>>,
}

impl Ack {
    /// The batch's sequence number.
    pub fn seq(&self) -> u64 {
        self.shared.as_ref().map_or(u64::MAX, |s| s.seq)
    }

    /// A further handle for the same batch: the batch is done only once this one is
    /// acknowledged too. Sinks that finish records asynchronously (delivery reports)
    /// split one handle per in-flight unit.
    pub fn split(&self) -> Ack {
        if let Some(s) = &self.shared {
            s.pending.fetch_add(1, Ordering::Relaxed);
        }
        Ack { shared: self.shared.clone() }
    }

    /// Counts `n` records of the batch as written (negative: refused after
    /// all); they count once the whole batch is done.
    pub fn count_written(&self, n: i64) {
        if let Some(s) = &self.shared {
            s.written.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Marks this handle's share of the batch durably handled.
    pub fn ack(mut self) {
        if let Some(s) = self.shared.take()
            && s.pending.fetch_sub(1, Ordering::AcqRel) == 1
        {
            s.tracker.complete(&s);
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Some(s) = self.shared.take() {
            s.tracker.fail(s.seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_advances_only_over_contiguous_completions() {
        let t = AckTracker::new();
        let a: Vec<Ack> = (0..5).map(|_| t.begin()).collect();
        let mut a = a.into_iter();
        let (a0, a1, a2, a3, a4) =
            (a.next().unwrap(), a.next().unwrap(), a.next().unwrap(), a.next().unwrap(), a.next().unwrap());
        a2.ack();
        a1.ack();
        assert_eq!(t.watermark(), Watermark(0), "batch 0 still open");
        a0.ack();
        assert_eq!(t.watermark(), Watermark(3));
        a4.ack();
        assert_eq!(t.watermark(), Watermark(3));
        assert_eq!(t.in_flight(), 2);
        a3.ack();
        assert_eq!(t.watermark(), Watermark(5));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn split_handles_must_all_ack() {
        let t = AckTracker::new();
        let a = t.begin();
        let b = a.split();
        let c = b.split();
        a.ack();
        c.ack();
        assert_eq!(t.watermark(), Watermark(0));
        b.ack();
        assert_eq!(t.watermark(), Watermark(1));
    }

    #[test]
    fn dropped_handle_fails_the_batch_and_holds_the_watermark() {
        let t = AckTracker::new();
        let a = t.begin();
        let b = t.begin();
        let b2 = b.split();
        b.ack();
        drop(b2);
        a.ack();
        assert_eq!(t.failed(), Some(1));
        assert_eq!(t.watermark(), Watermark(1));
    }

    #[tokio::test]
    async fn settled_wakes_when_everything_is_done() {
        let t = AckTracker::new();
        let a = t.begin();
        let waiter = {
            let t = Arc::clone(&t);
            tokio::spawn(async move { t.settled().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        a.ack();
        waiter.await.unwrap();
    }

    #[test]
    fn written_records_count_once_every_share_of_the_batch_is_done() {
        let t = AckTracker::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        t.observe(move |d| log.lock().unwrap().push((d.read, d.written, d.oldest_ms)));
        let a = t.begin_batch(10, Some(42));
        assert_eq!(t.records_in_flight(), 10);
        a.count_written(10);
        let late = a.split();
        a.ack();
        assert!(seen.lock().unwrap().is_empty(), "a share is still out");
        // One record of the share is refused after all.
        late.count_written(-1);
        late.ack();
        assert_eq!(*seen.lock().unwrap(), vec![(10, 9, Some(42))]);
        assert_eq!(t.records_in_flight(), 0);
        assert_eq!(t.oldest_pending(), None);
        let (b, c) = (t.begin_batch(1, Some(7)), t.begin_batch(1, Some(3)));
        assert_eq!(t.oldest_pending().map(|(_, ms)| ms), Some(Some(3)));
        c.ack();
        assert_eq!(t.oldest_pending().map(|(_, ms)| ms), Some(Some(7)));
        b.ack();
    }
}
