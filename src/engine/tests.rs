use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use flowgate_sdk::{Record, Watermark, async_trait};

use super::*;
use crate::config::ErrorPolicy;

/// Emits `batches` batches of `per` records numbered 0, 1, 2...; records commits.
struct MemSource {
    batches: u64,
    per: u64,
    next: u64,
    commits: Arc<Mutex<Vec<u64>>>,
    reads: Arc<AtomicU64>,
}

#[async_trait]
impl Source for MemSource {
    async fn read(&mut self, batch: &mut Batch) -> Result<Read, ConnectorError> {
        if self.next == self.batches {
            return Ok(Read::End);
        }
        for i in 0..self.per {
            batch.records.push(Record::from_value((self.next * self.per + i).to_string()));
        }
        self.next += 1;
        self.reads.fetch_add(1, SeqCst);
        Ok(Read::Data)
    }

    async fn commit(&mut self, done: Watermark) -> Result<(), ConnectorError> {
        self.commits.lock().unwrap().push(done.0);
        Ok(())
    }
}

#[derive(Default)]
struct MemSink {
    out: Arc<Mutex<Vec<String>>>,
    /// Transient failures before each success, while > 0.
    transient: u32,
    /// Refuse records whose value ends with this digit.
    refuse_digit: Option<char>,
    /// Fail fatally on the n-th write.
    fatal_at: Option<usize>,
    writes: usize,
    delay: Option<Duration>,
    written: Option<Arc<AtomicU64>>,
    /// With a prepare step that counts the records; what each write found.
    prepared: Option<Arc<Mutex<Vec<Option<usize>>>>>,
    /// With a prepare step that panics.
    prepare_panics: bool,
}

struct Panics;

impl Prepare for Panics {
    fn prepare(&self, _batch: &mut Batch) {
        panic!("a bug in a sink's prepare step");
    }
}

/// Leaves the batch's record count for the sink's `write`.
struct CountRecords;

impl Prepare for CountRecords {
    fn prepare(&self, batch: &mut Batch) {
        batch.prepared = Some(flowgate_sdk::Prepared::new(batch.records.len()));
    }
}

#[async_trait]
impl Sink for MemSink {
    fn preparer(&self) -> Option<Arc<dyn Prepare>> {
        if self.prepare_panics {
            return Some(Arc::new(Panics));
        }
        self.prepared.as_ref().map(|_| Arc::new(CountRecords) as Arc<dyn Prepare>)
    }

    async fn write(&mut self, batch: &mut Batch) -> Result<(), ConnectorError> {
        if let Some(seen) = &self.prepared {
            let count = batch.prepared.take().and_then(|p| p.take::<usize>());
            assert!(count.is_none_or(|n| n == batch.records.len()), "prepared for these records");
            seen.lock().unwrap().push(count);
        }
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        if self.transient > 0 {
            self.transient -= 1;
            return Err(ConnectorError::transient("database restarting", std::io::Error::other("refused")));
        }
        self.writes += 1;
        if self.fatal_at == Some(self.writes) {
            return Err(ConnectorError::fatal("table dropped"));
        }
        let stage: Arc<str> = "sink".into();
        for r in std::mem::take(&mut batch.records) {
            let v = String::from_utf8(r.value.to_vec()).unwrap();
            if self.refuse_digit.is_some_and(|d| v.ends_with(d)) {
                batch.reject(r, flowgate_sdk::RefusalClass::Refused, format!("{v} is refused"), &stage);
            } else {
                self.out.lock().unwrap().push(v);
                batch.records.push(r);
            }
        }
        if let Some(w) = &self.written {
            w.fetch_add(1, SeqCst);
        }
        Ok(())
    }
}

/// Drops records ending in 0, doubles records ending in 5, refuses those ending in 7.
struct Shuffle;

#[async_trait]
impl Transform for Shuffle {
    async fn apply(&mut self, batch: &mut Batch) -> Result<(), ConnectorError> {
        let stage: Arc<str> = "transform[0]:shuffle".into();
        for r in std::mem::take(&mut batch.records) {
            match r.value.last() {
                Some(b'0') => {}
                Some(b'5') => {
                    batch.records.push(r.clone());
                    batch.records.push(r);
                }
                Some(b'7') => batch.reject(r, flowgate_sdk::RefusalClass::Plugin, "sevens are bad luck", &stage),
                _ => batch.records.push(r),
            }
        }
        Ok(())
    }
}

/// Acknowledges batches later from another task, like a Kafka sink's delivery
/// reports, and refuses records ending in 9 only then.
struct AsyncSink {
    out: Arc<Mutex<Vec<String>>>,
    late: flowgate_sdk::LateRejects,
}

#[async_trait]
impl Sink for AsyncSink {
    async fn write(&mut self, batch: &mut Batch) -> Result<(), ConnectorError> {
        let ack = batch.ack.take().expect("the engine hands over the ack");
        let records = std::mem::take(&mut batch.records);
        let (out, late) = (Arc::clone(&self.out), self.late.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(3)).await;
            for r in records {
                let v = String::from_utf8(r.value.to_vec()).unwrap();
                if v.ends_with('9') {
                    let rejected = flowgate_sdk::Rejected {
                        record: r,
                        reason: "too late".into(),
                        class: flowgate_sdk::RefusalClass::Refused,
                        stage: "sink".into(),
                    };
                    late.send(LateReject { rejected, ack: ack.split() }).unwrap();
                } else {
                    out.lock().unwrap().push(v);
                }
            }
            ack.ack();
        });
        Ok(())
    }
}

/// Stages records in `write` and makes them visible in `commit`, failing the
/// first `abort` commits transiently (an aborted transaction). With `held`,
/// asynchronous: it keeps a share of each batch's acknowledgement until the
/// test acknowledges it.
#[derive(Default)]
struct TxSink {
    staged: Vec<String>,
    committed: Arc<Mutex<Vec<String>>>,
    events: Arc<Mutex<Vec<&'static str>>>,
    abort: u32,
    held: Option<Arc<Mutex<Vec<flowgate_sdk::Ack>>>>,
}

#[async_trait]
impl Sink for TxSink {
    fn delivery(&self) -> flowgate_sdk::DeliveryMode {
        match self.held {
            Some(_) => flowgate_sdk::DeliveryMode::Asynchronous,
            None => flowgate_sdk::DeliveryMode::Synchronous,
        }
    }

    async fn write(&mut self, batch: &mut Batch) -> Result<(), ConnectorError> {
        self.events.lock().unwrap().push("write");
        self.staged = batch.records.iter().map(|r| String::from_utf8(r.value.to_vec()).unwrap()).collect();
        if let Some(held) = &self.held {
            held.lock().unwrap().push(batch.ack.as_ref().expect("an asynchronous sink gets the ack").split());
        }
        Ok(())
    }

    async fn commit(&mut self, _batch: &mut Batch) -> Result<(), ConnectorError> {
        self.events.lock().unwrap().push("commit");
        if self.abort > 0 {
            self.abort -= 1;
            self.staged.clear();
            return Err(ConnectorError::transient("transaction aborted", std::io::Error::other("fenced")));
        }
        self.committed.lock().unwrap().append(&mut self.staged);
        Ok(())
    }
}

struct Harness {
    commits: Arc<Mutex<Vec<u64>>>,
    reads: Arc<AtomicU64>,
}

fn pipeline(
    batches: u64,
    per: u64,
    sink: MemSink,
    transforms: crate::engine::Chain,
    policy: ErrorPolicy,
    dead_letter: Option<MemSink>,
) -> (Pipeline, Harness) {
    let h = Harness { commits: Arc::default(), reads: Arc::default() };
    let source = MemSource { batches, per, next: 0, commits: Arc::clone(&h.commits), reads: Arc::clone(&h.reads) };
    let name: Arc<str> = "test".into();
    let p = Pipeline {
        stats: Arc::new(Stats::new(&name)),
        errors: ErrorHandler::new(policy, dead_letter.map(|d| Box::new(d) as Box<dyn Sink>), Arc::clone(&name)),
        name,
        source: Box::new(source),
        transforms: vec![transforms],
        sink: Box::new(sink),
        late: mpsc::unbounded_channel().1,
        batch: BatchConfig { size: per as usize, linger: flowgate_sdk::HumanDuration::from_millis(10), buffer: 2 },
    };
    (p, h)
}

#[tokio::test]
async fn delivers_everything_in_order_and_commits_the_end() {
    let sink = MemSink::default();
    let out = Arc::clone(&sink.out);
    let (p, h) = pipeline(50, 10, sink, vec![], ErrorPolicy::Fail, None);
    let summary = p.run(CancellationToken::new()).await.unwrap();
    let expected: Vec<String> = (0..500).map(|i| i.to_string()).collect();
    assert_eq!(*out.lock().unwrap(), expected);
    assert_eq!(h.commits.lock().unwrap().last(), Some(&50));
    assert_eq!((summary.records_in, summary.records_out), (500, 500));
}

#[tokio::test(start_paused = true)]
async fn transient_sink_errors_are_retried_until_they_pass() {
    let sink = MemSink { transient: 5, ..MemSink::default() };
    let out = Arc::clone(&sink.out);
    let (p, h) = pipeline(3, 4, sink, vec![], ErrorPolicy::Fail, None);
    p.run(CancellationToken::new()).await.unwrap();
    assert_eq!(out.lock().unwrap().len(), 12);
    assert_eq!(h.commits.lock().unwrap().last(), Some(&3));
}

/// Fails transiently `left` times (as a step whose schema registry is out of
/// reach), then passes batches through.
struct Flaky {
    left: u32,
}

#[async_trait]
impl Transform for Flaky {
    async fn apply(&mut self, _batch: &mut Batch) -> Result<(), ConnectorError> {
        if self.left == 0 {
            return Ok(());
        }
        self.left -= 1;
        Err(ConnectorError::transient("registry out of reach", std::io::Error::other("refused")))
    }
}

#[tokio::test(start_paused = true)]
async fn transient_transform_errors_are_retried_with_the_same_batch() {
    let sink = MemSink::default();
    let out = Arc::clone(&sink.out);
    let flaky: Box<dyn Transform> = Box::new(Flaky { left: 4 });
    let (p, h) = pipeline(3, 4, sink, vec![("transform[0]:flaky".into(), flaky)], ErrorPolicy::Fail, None);
    p.run(CancellationToken::new()).await.unwrap();
    let expected: Vec<String> = (0..12).map(|i| i.to_string()).collect();
    assert_eq!(*out.lock().unwrap(), expected);
    assert_eq!(h.commits.lock().unwrap().last(), Some(&3));
}

#[tokio::test]
async fn a_fatal_sink_error_stops_and_commits_only_what_was_written() {
    let sink = MemSink { fatal_at: Some(4), ..MemSink::default() };
    let out = Arc::clone(&sink.out);
    let (p, h) = pipeline(100, 10, sink, vec![], ErrorPolicy::Fail, None);
    let err = p.run(CancellationToken::new()).await.unwrap_err();
    assert!(err.to_string().contains("table dropped"), "{err}");
    assert_eq!(out.lock().unwrap().len(), 30);
    assert_eq!(*h.commits.lock().unwrap().last().unwrap(), 3, "batches 0-2 written, batch 3 failed");
}

#[tokio::test]
async fn refused_records_go_to_the_dead_letter_sink_before_the_ack() {
    let sink = MemSink { refuse_digit: Some('3'), ..MemSink::default() };
    let dlq = MemSink::default();
    let (out, dead) = (Arc::clone(&sink.out), Arc::clone(&dlq.out));
    let transforms: Vec<(Arc<str>, Box<dyn Transform>)> = vec![("transform[0]:shuffle".into(), Box::new(Shuffle))];
    let (p, h) = pipeline(10, 10, sink, transforms, ErrorPolicy::DeadLetter, Some(dlq));
    let summary = p.run(CancellationToken::new()).await.unwrap();
    let out = out.lock().unwrap();
    // 100 inputs: 10 dropped (..0), 10 doubled (..5), 10 refused by the transform
    // (..7) and 10 by the sink (..3).
    assert_eq!(out.len(), 100 - 10 + 10 - 10 - 10);
    assert_eq!(out.iter().filter(|v| v.ends_with('5')).count(), 20);
    let dead = dead.lock().unwrap();
    assert_eq!(dead.len(), 20);
    let docs: Vec<serde_json::Value> = dead.iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert!(docs.iter().any(|d| d["stage"] == "sink" && d["reason"] == "13 is refused"));
    assert!(docs.iter().any(|d| d["stage"] == "transform[0]:shuffle" && d["record"]["value"] == 17));
    assert_eq!((summary.rejected, summary.dead_lettered), (20, 20));
    assert_eq!(h.commits.lock().unwrap().last(), Some(&10));
}

#[tokio::test]
async fn skip_goes_on_and_fail_stops_at_the_first_refusal() {
    let sink = MemSink { refuse_digit: Some('3'), ..MemSink::default() };
    let out = Arc::clone(&sink.out);
    let (p, _) = pipeline(10, 10, sink, vec![], ErrorPolicy::Skip, None);
    assert_eq!(p.run(CancellationToken::new()).await.unwrap().rejected, 10);
    assert_eq!(out.lock().unwrap().len(), 90);

    let sink = MemSink { refuse_digit: Some('3'), ..MemSink::default() };
    let (p, h) = pipeline(10, 10, sink, vec![], ErrorPolicy::Fail, None);
    let err = p.run(CancellationToken::new()).await.unwrap_err().to_string();
    assert!(err.contains("3 is refused") && err.contains("policy is `fail`"), "{err}");
    assert_eq!(h.commits.lock().unwrap().last().copied().unwrap_or(0), 0, "batch 0 held a refused record");
}

#[tokio::test]
async fn a_slow_sink_holds_the_source_back() {
    let written = Arc::new(AtomicU64::new(0));
    let sink =
        MemSink { delay: Some(Duration::from_millis(5)), written: Some(Arc::clone(&written)), ..MemSink::default() };
    let (p, h) = pipeline(200, 10, sink, vec![], ErrorPolicy::Fail, None);
    let reads = Arc::clone(&h.reads);
    let run = tokio::spawn(p.run(CancellationToken::new()));
    let mut max_ahead = 0;
    while !run.is_finished() {
        let ahead = reads.load(SeqCst).saturating_sub(written.load(SeqCst));
        max_ahead = max_ahead.max(ahead);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    run.await.unwrap().unwrap();
    // Channel of 2 batches, one in the sink's hands, one being read and handed over.
    assert!(max_ahead <= 4, "the source ran {max_ahead} batches ahead of the sink");
}

#[tokio::test]
async fn shutdown_drains_and_commits_what_was_acknowledged() {
    let sink = MemSink { delay: Some(Duration::from_millis(2)), ..MemSink::default() };
    let out = Arc::clone(&sink.out);
    let (p, h) = pipeline(u64::MAX, 10, sink, vec![], ErrorPolicy::Fail, None);
    let token = CancellationToken::new();
    let run = tokio::spawn(p.run(token.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    token.cancel();
    let summary = run.await.unwrap().unwrap();
    let written = out.lock().unwrap().len() as u64;
    assert!(written > 0);
    assert_eq!(summary.records_out, written);
    assert_eq!(*h.commits.lock().unwrap().last().unwrap() * 10, written, "every written batch is committed");
}

#[tokio::test]
async fn asynchronous_acks_and_late_refusals_reach_the_error_policy_before_the_commit() {
    let (late_tx, late_rx) = mpsc::unbounded_channel();
    let sink = AsyncSink { out: Arc::default(), late: late_tx };
    let out = Arc::clone(&sink.out);
    let dlq = MemSink::default();
    let dead = Arc::clone(&dlq.out);
    let (mut p, h) = pipeline(20, 10, MemSink::default(), vec![], ErrorPolicy::DeadLetter, Some(dlq));
    p.sink = Box::new(sink);
    p.late = late_rx;
    let summary = p.run(CancellationToken::new()).await.unwrap();
    assert_eq!(out.lock().unwrap().len(), 180);
    let dead = dead.lock().unwrap();
    assert_eq!(dead.len(), 20, "every record ending in 9 is dead-lettered");
    assert!(dead[0].contains("too late"));
    assert_eq!(summary.dead_lettered, 20);
    assert_eq!(h.commits.lock().unwrap().last(), Some(&20));
}

#[tokio::test(start_paused = true)]
async fn a_failed_commit_writes_the_batch_again_after_its_refusals_are_handled() {
    let sink = TxSink { abort: 2, ..TxSink::default() };
    let (committed, events) = (Arc::clone(&sink.committed), Arc::clone(&sink.events));
    let (mut p, h) = pipeline(3, 5, MemSink::default(), vec![], ErrorPolicy::Fail, None);
    p.sink = Box::new(sink);
    p.run(CancellationToken::new()).await.unwrap();
    let expected: Vec<String> = (0..15).map(|i| i.to_string()).collect();
    assert_eq!(*committed.lock().unwrap(), expected, "each record committed once, in order");
    let events = events.lock().unwrap();
    assert_eq!(events[..6], ["write", "commit", "write", "commit", "write", "commit"]);
    assert_eq!(events.len(), 10);
    assert_eq!(h.commits.lock().unwrap().last(), Some(&3));
}

fn with_dead_letters(sink: MemSink, dead_letter: TxSink) -> (Pipeline, Harness) {
    let (mut p, h) = pipeline(10, 10, sink, vec![], ErrorPolicy::DeadLetter, None);
    p.errors = ErrorHandler::new(ErrorPolicy::DeadLetter, Some(Box::new(dead_letter)), Arc::clone(&p.name));
    (p, h)
}

#[tokio::test]
async fn dead_letters_are_delivered_like_records_write_then_commit() {
    let dlq = TxSink::default();
    let committed = Arc::clone(&dlq.committed);
    let (p, h) = with_dead_letters(MemSink { refuse_digit: Some('3'), ..MemSink::default() }, dlq);
    let summary = p.run(CancellationToken::new()).await.unwrap();
    assert_eq!(summary.dead_lettered, 10);
    // Written and never committed, they would be lost with the transaction.
    assert_eq!(committed.lock().unwrap().len(), 10);
    assert_eq!(h.commits.lock().unwrap().last(), Some(&10));
}

#[tokio::test]
async fn a_batch_is_acknowledged_only_once_an_asynchronous_dead_letter_sink_acknowledges() {
    let held = Arc::new(Mutex::new(Vec::new()));
    let dlq = TxSink { held: Some(Arc::clone(&held)), ..TxSink::default() };
    let (p, h) = with_dead_letters(MemSink { refuse_digit: Some('3'), ..MemSink::default() }, dlq);
    let run = tokio::spawn(p.run(CancellationToken::new()));
    // Every batch refuses one record; while the dead-letter sink holds their
    // acknowledgements, the source's position stays at the start.
    while held.lock().unwrap().len() < 10 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.commits.lock().unwrap().iter().all(|&c| c == 0), "{:?}", h.commits.lock().unwrap());
    for ack in held.lock().unwrap().drain(..) {
        ack.ack();
    }
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.dead_lettered, 10);
    assert_eq!(h.commits.lock().unwrap().last(), Some(&10));
}

/// Holds the batch whose first record is "0" until `open` is set.
struct Gate {
    open: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
impl Transform for Gate {
    async fn apply(&mut self, batch: &mut Batch) -> Result<(), ConnectorError> {
        if batch.records.first().is_some_and(|r| &r.value[..] == b"0") {
            while !self.open.load(SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_batch_holds_the_other_workers_back_and_order_is_kept() {
    let sink = MemSink::default();
    let out = Arc::clone(&sink.out);
    let (mut p, h) = pipeline(100, 10, sink, vec![], ErrorPolicy::Fail, None);
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let chain = || -> Chain { vec![("transform[0]:gate".into(), Box::new(Gate { open: Arc::clone(&open) }))] };
    p.transforms = vec![chain(), chain(), chain()];
    let run = tokio::spawn(p.run(CancellationToken::new()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Three in the workers (one held, two done behind it), two queued before
    // them (`buffer: 2`), one in the source's hand: not the hundred there are.
    let read = h.reads.load(SeqCst);
    assert!(read <= 6, "{read} batches read while the first is held");
    assert!(out.lock().unwrap().is_empty(), "nothing overtakes the held batch");
    open.store(true, SeqCst);
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.records_out, 1000);
    let values: Vec<u64> = out.lock().unwrap().iter().map(|v| v.parse().unwrap()).collect();
    assert_eq!(values, (0..1000).collect::<Vec<_>>(), "in the order read");
}

#[tokio::test(start_paused = true)]
async fn the_sinks_prepare_step_sees_each_batch_after_the_transforms_and_a_retry_goes_without() {
    let seen = Arc::default();
    let sink = MemSink { transient: 1, prepared: Some(Arc::clone(&seen)), ..Default::default() };
    let out = Arc::clone(&sink.out);
    let transforms: Vec<(Arc<str>, Box<dyn Transform>)> = vec![("transform[0]:shuffle".into(), Box::new(Shuffle))];
    let (p, _h) = pipeline(5, 10, sink, transforms, ErrorPolicy::Skip, None);
    p.run(CancellationToken::new()).await.unwrap();
    // Of 50 records, Shuffle drops 5, doubles 5 and refuses 5.
    assert_eq!(out.lock().unwrap().len(), 45);
    let seen = seen.lock().unwrap().clone();
    // The first write failed and was retried: the plan was taken by then.
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert!(seen[0].is_some() && seen[1].is_none() && seen[2..].iter().all(Option::is_some), "{seen:?}");
}

#[tokio::test]
async fn a_panic_in_the_prepare_step_stops_the_pipeline_and_commits_nothing_unwritten() {
    let sink = MemSink { prepare_panics: true, ..Default::default() };
    let out = Arc::clone(&sink.out);
    let (p, h) = pipeline(50, 10, sink, vec![], ErrorPolicy::Fail, None);
    let e = p.run(CancellationToken::new()).await.unwrap_err();
    assert!(matches!(&e, EngineError::Task { stage, .. } if stage == "sink.prepare"), "{e:?}");
    assert!(out.lock().unwrap().is_empty());
    assert!(h.commits.lock().unwrap().iter().all(|&w| w == 0), "{:?}", h.commits.lock().unwrap());
}
