//! The `http` source: requests queued by the server become batches, and each
//! request is answered once the batches holding its records are acknowledged.
//!
//! Bookkeeping: a request's records may span several batches (a batch holds
//! at most `batch_size` records) and a batch may hold several requests. When
//! the last record of a request is put into a batch, the request is filed in
//! the `Ledger` under that batch's `seq`. Batches are handed out in `seq`
//! order, so the ledger is ordered too; `commit(done)` answers, from its
//! front, every request whose last batch is below the watermark: all batches
//! below it are durably handled, so all of that request's records are.
//! Requests not answered that way (the pipeline stops, a batch fails) get
//! `503` when the source closes or is dropped: their answer channels close.

use std::net::SocketAddr;
use std::time::Duration;

use flowgate_sdk::{
    Batch, ConnectorError, OpenContext, PendingPositions, Read, Record, Source, Watermark, async_trait,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::HttpSourceConfig;
use crate::body::Submission;
use crate::error::HttpError;
use crate::server;

/// How long `read` waits for a first request before returning `Idle`, so
/// that the engine commits meanwhile.
const IDLE: Duration = Duration::from_secs(1);

/// Requests waiting for their batches to be acknowledged, each filed under
/// the `seq` of the last batch holding one of its records, with how many
/// records it had and where to answer.
#[derive(Default)]
struct Ledger {
    filed: PendingPositions<(usize, oneshot::Sender<usize>)>,
}

impl Ledger {
    /// Files a request whose last record went into batch `last_seq`. Batches
    /// are filled in `seq` order, so this keeps the ledger ordered.
    fn file(&mut self, last_seq: u64, accepted: usize, reply: oneshot::Sender<usize>) {
        self.filed.push(last_seq, (accepted, reply));
    }

    /// Answers every request whose batches are all below `done`; how many.
    fn commit(&mut self, done: Watermark) -> usize {
        let mut answered = 0;
        for (_, (accepted, reply)) in self.filed.take_covered(done) {
            // A client that went away does not care; its records are written anyway.
            let _ = reply.send(accepted);
            answered += 1;
        }
        answered
    }

    fn len(&self) -> usize {
        self.filed.len()
    }
}

/// A request whose records did not all fit into the last batch.
struct Partial {
    rest: std::vec::IntoIter<Record>,
    accepted: usize,
    reply: oneshot::Sender<usize>,
}

pub struct HttpSource {
    queue: mpsc::Receiver<Submission>,
    max: usize,
    linger: Duration,
    partial: Option<Partial>,
    ledger: Ledger,
    address: SocketAddr,
    /// Stops the server when the source closes or is dropped.
    server: Option<DropGuard>,
}

impl HttpSource {
    pub async fn open(config: HttpSourceConfig, ctx: &OpenContext) -> Result<Self, HttpError> {
        let stop = CancellationToken::new();
        let (tx, queue) = mpsc::channel(config.queue.max(1));
        let address = server::start(&config, tx, stop.clone()).await?;
        tracing::info!(pipeline = %ctx.pipeline, address = %address, "http source listening");
        Ok(HttpSource {
            queue,
            max: ctx.batch_size.max(1),
            linger: ctx.linger,
            partial: None,
            ledger: Ledger::default(),
            address,
            server: Some(stop.drop_guard()),
        })
    }

    /// The address the server is bound to (the port chosen for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Puts as much of the partly taken request into `batch` as fits, filing
    /// the request once its last record is in.
    fn take_partial(&mut self, batch: &mut Batch) {
        let Some(p) = self.partial.as_mut() else { return };
        let room = self.max.saturating_sub(batch.records.len());
        batch.records.extend(p.rest.by_ref().take(room));
        if p.rest.as_slice().is_empty()
            && let Some(p) = self.partial.take()
        {
            self.ledger.file(batch.seq, p.accepted, p.reply);
        }
    }

    fn take(&mut self, submission: Submission, batch: &mut Batch) {
        // Only called with room in the batch, so any earlier request is filed.
        debug_assert!(self.partial.is_none());
        let accepted = submission.records.len();
        self.partial = Some(Partial { rest: submission.records.into_iter(), accepted, reply: submission.reply });
        self.take_partial(batch);
    }
}

#[async_trait]
impl Source for HttpSource {
    /// Cancel-safe: a request leaves the queue only into `self`, and records
    /// put into a batch that is then dropped belong to requests that are
    /// never filed under an acknowledged `seq`, so they get 503, not 200.
    async fn read(&mut self, batch: &mut Batch) -> Result<Read, ConnectorError> {
        self.take_partial(batch);
        if batch.records.is_empty() {
            match tokio::time::timeout(IDLE, self.queue.recv()).await {
                Err(_) => return Ok(Read::Idle),
                Ok(None) => return Err(HttpError::ServerStopped.into()),
                Ok(Some(s)) => self.take(s, batch),
            }
        }
        // Fill the batch with what arrives within the linger time.
        let deadline = tokio::time::Instant::now() + self.linger;
        while batch.records.len() < self.max {
            match tokio::time::timeout_at(deadline, self.queue.recv()).await {
                Ok(Some(s)) => self.take(s, batch),
                Ok(None) | Err(_) => break,
            }
        }
        Ok(Read::Data)
    }

    async fn commit(&mut self, done: Watermark) -> Result<(), ConnectorError> {
        let answered = self.ledger.commit(done);
        if answered > 0 {
            tracing::debug!(answered, watermark = done.0, "requests answered");
        }
        Ok(())
    }

    /// Called after the final commit: whatever is still waiting was not
    /// written (for sure), so its client gets 503 and sends it again.
    async fn close(&mut self) -> Result<(), ConnectorError> {
        // Stop taking requests first: none is queued that could not be answered.
        drop(self.server.take());
        self.queue.close();
        let mut unanswered = self.ledger.len() + usize::from(self.partial.is_some());
        while self.queue.try_recv().is_ok() {
            unanswered += 1;
        }
        // Dropping the answer channels answers 503.
        self.partial = None;
        self.ledger = Ledger::default();
        if unanswered > 0 {
            tracing::info!(requests = unanswered, "answering requests not written with 503");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use flowgate_sdk::{Role, StateStore};
    use serde_json::json;

    use super::*;

    impl HttpSource {
        /// A source fed by `queue`, without a server.
        fn fed_by(queue: mpsc::Receiver<Submission>, max: usize) -> Self {
            HttpSource {
                queue,
                max,
                linger: Duration::from_millis(20),
                partial: None,
                ledger: Ledger::default(),
                address: SocketAddr::from(([127, 0, 0, 1], 0)),
                server: None,
            }
        }
    }

    fn submission(values: &[&str]) -> (Submission, oneshot::Receiver<usize>) {
        let (reply, answer) = oneshot::channel();
        let records = values.iter().map(|v| Record::from_value(v.to_string())).collect();
        (Submission { records, reply }, answer)
    }

    #[test]
    fn commit_answers_only_requests_whose_last_batch_is_below_the_watermark() {
        let mut ledger = Ledger::default();
        let (r0, mut a0) = oneshot::channel();
        let (r1, mut a1) = oneshot::channel();
        let (r2, mut a2) = oneshot::channel();
        ledger.file(0, 3, r0);
        ledger.file(2, 5, r1); // Spans batches 1 and 2.
        ledger.file(2, 1, r2);
        assert_eq!(ledger.commit(Watermark(0)), 0);
        assert_eq!(ledger.commit(Watermark(1)), 1);
        assert_eq!(a0.try_recv(), Ok(3));
        assert_eq!(ledger.commit(Watermark(2)), 0, "batch 2 is not done");
        assert!(a1.try_recv().is_err() && a2.try_recv().is_err());
        assert_eq!(ledger.commit(Watermark(3)), 2);
        assert_eq!((a1.try_recv(), a2.try_recv()), (Ok(5), Ok(1)));
        assert_eq!(ledger.len(), 0);
    }

    #[tokio::test]
    async fn a_request_spanning_batches_is_answered_after_its_last_one() {
        let (tx, rx) = mpsc::channel(4);
        let mut src = HttpSource::fed_by(rx, 2);
        let (a, mut answer_a) = submission(&["1", "2", "3"]);
        let (b, mut answer_b) = submission(&["4"]);
        tx.send(a).await.unwrap();
        tx.send(b).await.unwrap();

        let mut first = Batch::with_capacity(0, 2);
        assert_eq!(src.read(&mut first).await.unwrap(), Read::Data);
        assert_eq!(first.records.len(), 2);
        let mut second = Batch::with_capacity(1, 2);
        assert_eq!(src.read(&mut second).await.unwrap(), Read::Data);
        let values: Vec<_> = second.records.iter().map(|r| r.value.clone()).collect();
        assert_eq!(values, ["3", "4"]);

        src.commit(Watermark(1)).await.unwrap();
        assert!(answer_a.try_recv().is_err(), "record 3 is in batch 1, not yet done");
        src.commit(Watermark(2)).await.unwrap();
        assert_eq!((answer_a.try_recv(), answer_b.try_recv()), (Ok(3), Ok(1)));
    }

    #[tokio::test]
    async fn idle_without_requests_and_503_for_what_is_left_at_close() {
        let (tx, rx) = mpsc::channel(4);
        let mut src = HttpSource::fed_by(rx, 10);
        let mut batch = Batch::with_capacity(0, 10);
        assert_eq!(src.read(&mut batch).await.unwrap(), Read::Idle);

        let (a, answer_a) = submission(&["1"]);
        let (b, answer_b) = submission(&["2"]);
        tx.send(a).await.unwrap();
        assert_eq!(src.read(&mut batch).await.unwrap(), Read::Data);
        tx.send(b).await.unwrap(); // Queued, never read.
        src.commit(Watermark(0)).await.unwrap();
        src.close().await.unwrap();
        assert!(answer_a.await.is_err(), "not acknowledged: the client must retry");
        assert!(answer_b.await.is_err());
        assert!(tx.try_send(submission(&["3"]).0).is_err(), "closed to new requests");
    }

    fn ctx() -> OpenContext {
        OpenContext::new("t", "http", Role::Source, StateStore::new("unused"))
            .with_batch(100, Duration::from_millis(10))
    }

    async fn open(settings: serde_json::Value) -> (HttpSource, String) {
        let mut settings = settings;
        settings["listen"] = json!("127.0.0.1:0");
        let config: HttpSourceConfig = serde_json::from_value(settings).unwrap();
        let src = HttpSource::open(config, &ctx()).await.unwrap();
        let url = format!("http://{}/in", src.local_addr());
        (src, url)
    }

    #[tokio::test]
    async fn answers_200_only_once_the_batch_is_acknowledged() {
        let (mut src, url) = open(json!({"path": "/in"})).await;
        let post = tokio::spawn(reqwest::Client::new().post(url).body("{\"a\":1}\n\n{\"a\":2}\n").send());
        let mut batch = Batch::with_capacity(0, 100);
        assert_eq!(src.read(&mut batch).await.unwrap(), Read::Data);
        let values: Vec<_> = batch.records.iter().map(|r| r.value.clone()).collect();
        assert_eq!(values, [r#"{"a":1}"#, r#"{"a":2}"#]);
        assert!(batch.records[0].timestamp.is_some());

        src.commit(Watermark(0)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!post.is_finished(), "answered before the batch was written");
        src.commit(Watermark(1)).await.unwrap();
        let answer = post.await.unwrap().unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.text().await.unwrap(), r#"{"accepted":2}"#);
    }

    #[tokio::test]
    async fn refuses_bad_requests_before_taking_anything() {
        let (mut src, url) = open(json!({"path": "/in", "token": "s3cret", "max_request_size": 64})).await;
        let client = reqwest::Client::new();
        let status = |r: reqwest::Response| r.status().as_u16();
        let no_token = client.post(&url).body("1").send().await.unwrap();
        assert_eq!(status(no_token), 401);
        let wrong = client.post(&url).bearer_auth("nope").body("1").send().await.unwrap();
        assert_eq!(status(wrong), 401);
        let bad = client.post(&url).bearer_auth("s3cret").body("1\n{x}\n").send().await.unwrap();
        assert_eq!(bad.status(), 400);
        assert!(bad.text().await.unwrap().contains("line 2"));
        let big = client.post(&url).bearer_auth("s3cret").body(vec![b' '; 65]).send().await.unwrap();
        assert_eq!(status(big), 413);
        let elsewhere = client.post(url.replace("/in", "/out")).bearer_auth("s3cret").body("1").send().await.unwrap();
        assert_eq!(status(elsewhere), 404);
        let get = client.get(&url).bearer_auth("s3cret").send().await.unwrap();
        assert_eq!(status(get), 405);
        let mut batch = Batch::with_capacity(0, 100);
        assert_eq!(src.read(&mut batch).await.unwrap(), Read::Idle, "nothing of them was taken");
    }

    #[tokio::test]
    async fn a_full_queue_answers_503_at_once_and_a_stopped_source_503_too() {
        let (src, url) = open(json!({"path": "/in", "queue": 1, "retry_after": "2s"})).await;
        let client = reqwest::Client::new();
        let mut a = tokio::spawn(client.post(&url).body("1").send());
        let mut b = tokio::spawn(client.post(&url).body("2").send());
        // One request fits in the queue and waits; the other is turned away.
        let (busy, waiting) = tokio::select! {
            r = &mut a => (r, b),
            r = &mut b => (r, a),
        };
        let busy = busy.unwrap().unwrap();
        assert_eq!(busy.status(), 503);
        assert_eq!(busy.headers()["retry-after"], "2");
        assert!(!waiting.is_finished());
        drop(src);
        assert_eq!(waiting.await.unwrap().unwrap().status(), 503, "the pipeline stopped: send again");
    }
}
