//! The Kafka sink.
//!
//! At-least-once (default): records are handed to librdkafka and `write` returns;
//! each record holds a share of its batch's acknowledgement, released by its
//! delivery report. librdkafka retries transient failures itself (with
//! `message.timeout.ms` unlimited by default, a broker outage makes the pipeline
//! wait); a record that fails for good goes to the error policy through the
//! engine's late-rejection channel. A full producer queue makes `write` wait, which
//! slows the source.
//!
//! Exactly-once: each batch is one transaction holding its records and the
//! source's consumer offsets after it; `write` produces and waits for delivery,
//! `commit` adds the offsets and commits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowgate_sdk::{
    Ack, Batch, Bytes, ConnectorError, DeliveryMode, EncodeError, LateReject, LateRejects, Metadata, OpenContext,
    Record, RecordTemplate, RefusalClass, Rejected, Sink, ValueEncoder, async_trait, blocking,
};
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as KHeader, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use crate::client::{ClientLog, client_config, client_context, record_of};
use crate::config::{Delivery, KafkaSinkConfig};
use crate::error::{KafkaConnectorError, retryable};
use crate::group::KafkaConsumer;
use crate::observe::{STATISTICS_INTERVAL, SinkObserver};
use crate::pairing::ExactlyOncePairing;
use flowgate_formats::Formatting;

/// How long closing waits for records still in flight (a broker that is down at
/// shutdown). Records not delivered by then stay unacknowledged and are read again.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one transaction call; a timeout aborts and writes the batch again.
const TXN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `write` waits on a full producer queue before returning a transient
/// error (so the engine can retry, or stop when asked to).
const QUEUE_FULL_WAIT: Duration = Duration::from_secs(5);

/// What a record's delivery report completes.
pub struct Pending {
    /// This record's share of its batch's acknowledgement (at-least-once, async).
    ack: Option<Ack>,
    meta: Metadata,
    /// Where a synchronous write collects failures instead of the late channel,
    /// with the record's index in its batch.
    failures: Option<(Arc<Mutex<Vec<Failure>>>, usize)>,
    /// When it was sent, for the one record in many whose delivery is timed.
    sent: Option<Instant>,
}

struct Failure {
    index: usize,
    reason: String,
    transient: bool,
}

pub struct ProducerCtx {
    log: ClientLog,
    observe: Arc<SinkObserver>,
    stage: Arc<str>,
    late: Option<LateRejects>,
    /// Records whose delivery timed out (a finite `message.timeout.ms`), with their
    /// topic: sent again.
    retry: Mutex<Vec<(Record, String, Pending)>>,
}

client_context!(ProducerCtx, statistics);

impl ProducerCtx {
    fn statistics(&self, s: Statistics) {
        self.observe.statistics(&s);
    }
}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, d: Box<Pending>) {
        let (e, m) = match result {
            Ok(_) => {
                if let Some(sent) = d.sent {
                    self.observe.delivered(sent);
                }
                if let Some(ack) = d.ack {
                    ack.ack();
                }
                return;
            }
            Err((e, m)) => (e, m),
        };
        let code = e.rdkafka_error_code();
        if matches!(code, Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)) {
            // Given up at shutdown: dropping the share holds the position before it.
            return;
        }
        // librdkafka already retried anything retriable without a time limit; what
        // comes back is final, except a timeout the user configured.
        let transient = code == Some(RDKafkaErrorCode::MessageTimedOut);
        let reason = format!("Kafka refused the record for topic `{}`: {e}", m.topic());
        let Pending { ack, meta, failures, .. } = *d;
        if let Some((f, index)) = failures {
            f.lock().unwrap_or_else(|p| p.into_inner()).push(Failure { index, reason, transient });
            return;
        }
        let record = record_of(m, meta);
        if transient {
            tracing::warn!(client = &*self.log.name, error = %e, "delivery failed; sending the record again");
            let d = Pending { ack, meta: record.meta.clone(), failures: None, sent: self.observe.send_time() };
            self.retry.lock().unwrap_or_else(|p| p.into_inner()).push((record, m.topic().to_string(), d));
            return;
        }
        let (Some(ack), Some(late)) = (ack, &self.late) else { return };
        let rejected = Rejected { record, reason, class: RefusalClass::Refused, stage: Arc::clone(&self.stage) };
        // The engine is gone only when the pipeline is stopping; the dropped share
        // then keeps the position before this record.
        let _ = late.send(LateReject { rejected, ack });
    }
}

type KafkaProducer = ThreadedProducer<ProducerCtx>;

/// The exactly-once half: the source's consumer and the transaction state.
struct Transactions {
    /// Set by the source when it opens, after the sink.
    consumer: Arc<std::sync::OnceLock<Arc<KafkaConsumer>>>,
    initialized: bool,
    open: bool,
    /// A batch whose commit timed out: librdkafka may still finish it, so the
    /// next attempt resumes the commit instead of writing the batch again.
    commit_pending: Option<u64>,
    /// A batch whose resumed commit went through: nothing left to write.
    committed: Option<u64>,
    /// When the open transaction began.
    began: Option<Instant>,
}

/// How often a transactional call is repeated while librdkafka says it may be.
const TXN_ATTEMPTS: u32 = 3;

/// Runs a transactional call, repeating it while librdkafka marks the error
/// retriable (the same call then resumes the operation).
fn txn_call(what: &str, f: impl Fn() -> rdkafka::error::KafkaResult<()>) -> Result<(), KafkaError> {
    let mut attempt = 1;
    loop {
        match blocking(&f) {
            Err(KafkaError::Transaction(t)) if t.is_retriable() && attempt < TXN_ATTEMPTS => {
                tracing::warn!(error = %t, attempt, "{what} failed; trying again");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// A transaction failure: fatal ones (fenced by a newer producer with the same
/// `transactional.id`) stop the pipeline; the others make the engine retry.
fn txn_error(what: &str, e: KafkaError) -> ConnectorError {
    let fatal = matches!(&e, KafkaError::Transaction(t) if t.is_fatal());
    let e = KafkaConnectorError::client(what, e);
    if fatal { ConnectorError::fatal_from("Kafka transaction", e) } else { e.into() }
}

pub struct KafkaSink {
    producer: KafkaProducer,
    topic: RecordTemplate,
    key: Option<RecordTemplate>,
    keep_headers: bool,
    stage: Arc<str>,
    txn: Option<Transactions>,
    /// With a `format`: encodes each value (subjects named after the topic).
    encoder: Option<Box<dyn ValueEncoder>>,
}

/// Producer settings for a sink; also used by `validate --check`.
pub(crate) fn producer_config(config: &KafkaSinkConfig, pipeline: &str) -> rdkafka::ClientConfig {
    let mut defaults = vec![
        (
            "acks",
            match config.acks {
                crate::config::Acks::All => "all".to_string(),
                crate::config::Acks::One => "1".to_string(),
            },
        ),
        ("enable.idempotence", config.idempotence.to_string()),
        ("compression.type", config.compression.as_str().to_string()),
        ("linger.ms", config.linger.0.as_millis().to_string()),
        // Unlimited: librdkafka retries through outages; a full queue slows the source.
        ("message.timeout.ms", "0".to_string()),
        ("queue.buffering.max.messages", "100000".to_string()),
        ("queue.buffering.max.kbytes", "65536".to_string()),
        ("batch.num.messages", "10000".to_string()),
        ("statistics.interval.ms", STATISTICS_INTERVAL.to_string()),
    ];
    if config.delivery == Delivery::ExactlyOnce {
        let id = config.transactional_id.clone().unwrap_or_else(|| format!("flowgate-{pipeline}"));
        defaults.push(("transactional.id", id));
        defaults.push(("transaction.timeout.ms", "60000".to_string()));
        // Transactions need a bounded delivery timeout, below the transaction's.
        defaults.retain(|(k, _)| *k != "message.timeout.ms");
        defaults.push(("message.timeout.ms", "55000".to_string()));
    }
    client_config(&config.brokers.bootstrap(), &defaults, &config.properties)
}

impl KafkaSink {
    /// Opens a producer. `ctx.late` receives records that fail for good after
    /// `write` returned; without it (a dead-letter sink) every write waits for
    /// its delivery reports. The encoder of `format` takes the registry client
    /// from the pipeline's resources; `delivery: exactly_once` leaves an
    /// [`ExactlyOncePairing`] there for the source.
    pub fn open(config: KafkaSinkConfig, ctx: &OpenContext) -> Result<Self, KafkaConnectorError> {
        let pipeline = &*ctx.pipeline;
        let stage: Arc<str> = "sink".into();
        let context = ProducerCtx {
            log: ClientLog::new(format!("{pipeline}:sink").into()),
            // Without a channel for late refusals, it is a dead-letter sink.
            observe: Arc::new(SinkObserver::new(pipeline, ctx.late.is_none())),
            stage: Arc::clone(&stage),
            late: ctx.late.clone(),
            retry: Mutex::new(Vec::new()),
        };
        let producer: KafkaProducer =
            producer_config(&config, pipeline).create_with_context(context).map_err(KafkaConnectorError::config)?;
        let txn = match config.delivery {
            Delivery::AtLeastOnce => None,
            Delivery::ExactlyOnce => {
                let pairing = ExactlyOncePairing::default();
                ctx.resources.insert(pairing.clone());
                Some(Transactions {
                    consumer: pairing.0,
                    initialized: false,
                    open: false,
                    commit_pending: None,
                    committed: None,
                    began: None,
                })
            }
        };
        let encoder = Formatting::sink(config.format, config.avro.as_ref(), None)
            .open_encoder(ctx)
            .map_err(KafkaConnectorError::Format)?;
        Ok(KafkaSink {
            producer,
            topic: config.topic,
            key: config.key,
            keep_headers: config.headers,
            stage,
            txn,
            encoder,
        })
    }

    /// Hands one record to librdkafka, waiting while its queue is full.
    /// On failure the record's `Pending` comes back, so that its share of the
    /// acknowledgement can be released once the record is dealt with.
    async fn send(
        &self,
        record: &Record,
        payload: &[u8],
        topic: &str,
        key: Option<&[u8]>,
        d: Pending,
    ) -> Result<(), (KafkaError, Box<Pending>)> {
        let headers = (self.keep_headers && !record.headers.is_empty()).then(|| {
            record.headers.iter().fold(OwnedHeaders::new_with_capacity(record.headers.len()), |hs, h| {
                hs.insert(KHeader { key: &h.name, value: Some(h.value.as_ref()) })
            })
        });
        let mut rec = BaseRecord::with_opaque_to(topic, Box::new(d));
        // An empty value goes out as a null one: a tombstone, which log
        // compaction understands (and which the source reads back as empty).
        if !payload.is_empty() {
            rec = rec.payload(payload);
        }
        rec.key = key;
        rec.headers = headers;
        rec.timestamp = record.timestamp;
        // Read only once the queue is full: a clock read per record was 1.3%
        // of a Kafka -> Kafka pipeline's CPU.
        let mut full_since = None;
        loop {
            match self.producer.send(rec) {
                Ok(()) => return Ok(()),
                // Full while the broker is away: give the engine a chance to stop.
                Err((e @ KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                    if full_since.get_or_insert_with(tokio::time::Instant::now).elapsed() >= QUEUE_FULL_WAIT =>
                {
                    return Err((e, r.delivery_opaque));
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, r)) => return Err((e, r.delivery_opaque)),
            }
        }
    }

    /// Sends again the records whose delivery timed out.
    async fn resend(&self) -> Result<(), ConnectorError> {
        let retry = &self.producer.context().retry;
        let mut retries = std::mem::take(&mut *retry.lock().unwrap_or_else(|p| p.into_inner()));
        while let Some((record, topic, d)) = retries.pop() {
            // Sent as delivered before: already encoded.
            if let Err((e, d)) = self.send(&record, &record.value, &topic, record.key.as_deref(), d).await {
                // Kept for the next attempt, with the ones not tried yet.
                let mut queue = retry.lock().unwrap_or_else(|p| p.into_inner());
                queue.push((record, topic.clone(), *d));
                queue.append(&mut retries);
                return Err(KafkaConnectorError::client(format!("cannot produce to `{topic}`"), e).into());
            }
        }
        Ok(())
    }

    fn begin(&mut self) -> Result<(), ConnectorError> {
        let txn = self.txn.as_mut().expect("exactly-once only");
        let p = &self.producer;
        if !txn.initialized {
            // Also aborts a transaction that a previous process with this id left open.
            txn_call("initialising transactions", || p.init_transactions(TXN_TIMEOUT))
                .map_err(|e| txn_error("cannot initialise Kafka transactions", e))?;
            txn.initialized = true;
        }
        if !txn.open {
            p.begin_transaction().map_err(|e| txn_error("cannot begin a transaction", e))?;
            txn.open = true;
            txn.began = Some(Instant::now());
        }
        Ok(())
    }

    /// Aborts the open transaction, if any. It stays open (and the error is
    /// returned) when the abort does not go through.
    fn abort(&mut self) -> Result<(), ConnectorError> {
        let Some(txn) = self.txn.as_mut() else { return Ok(()) };
        if !txn.open {
            return Ok(());
        }
        let p = &self.producer;
        txn_call("aborting the transaction", || p.abort_transaction(TXN_TIMEOUT))
            .map_err(|e| txn_error("cannot abort the transaction", e))?;
        txn.open = false;
        txn.commit_pending = None;
        p.context().observe.transaction(false, txn.began.take().map(|b| b.elapsed()));
        Ok(())
    }

    /// Finishes a commit that timed out before, for batch `seq`. `Ok(true)` if it
    /// went through, `Ok(false)` if it had to be aborted (write the batch again).
    fn resume_commit(&mut self, seq: u64) -> Result<bool, ConnectorError> {
        let p = &self.producer;
        match txn_call("committing the transaction", || p.commit_transaction(TXN_TIMEOUT)) {
            Ok(()) => {
                let txn = self.txn.as_mut().expect("exactly-once only");
                (txn.open, txn.commit_pending, txn.committed) = (false, None, Some(seq));
                p.context().observe.transaction(true, txn.began.take().map(|b| b.elapsed()));
                Ok(true)
            }
            Err(KafkaError::Transaction(t)) if t.txn_requires_abort() => {
                self.abort()?;
                Ok(false)
            }
            Err(e) => Err(txn_error("the transaction commit did not finish", e)),
        }
    }

    /// Renders topic and key and sends every record of the batch. Records whose
    /// templates cannot be filled, or that librdkafka refuses outright (too large),
    /// are refused; on another error the unsent records are put back.
    async fn send_batch(
        &mut self,
        batch: &mut Batch,
        delivery: impl Fn(&Record, usize) -> Pending,
    ) -> Result<(), ConnectorError> {
        let mut records = std::mem::take(&mut batch.records).into_iter();
        while let Some(record) = records.next() {
            let mut parsed = None;
            let topic = match self.topic.fixed() {
                Some(t) => std::borrow::Cow::Borrowed(t),
                None => match self.topic.render(&record, &mut parsed) {
                    Ok(t) => std::borrow::Cow::Owned(t),
                    Err(e) => {
                        batch.reject(
                            record,
                            RefusalClass::Template,
                            format!("cannot fill topic `{}`: {e}", self.topic),
                            &self.stage,
                        );
                        continue;
                    }
                },
            };
            let key = match &self.key {
                None => record.key.clone(),
                Some(t) => match t.render(&record, &mut parsed) {
                    Ok(k) => Some(Bytes::from(k)),
                    Err(e) => {
                        batch.reject(
                            record,
                            RefusalClass::Template,
                            format!("cannot fill key `{t}`: {e}"),
                            &self.stage,
                        );
                        continue;
                    }
                },
            };
            let payload = match self.encoder.as_mut() {
                None => record.value.clone(),
                Some(encoder) => match encoder.encode(&record, &topic).await {
                    Ok(p) => p,
                    Err(EncodeError::Record(reason)) => {
                        batch.reject(record, RefusalClass::Schema, reason, &self.stage);
                        continue;
                    }
                    Err(e) => {
                        // The registry out of reach: the batch waits and is
                        // written again; refusing (an incompatible schema):
                        // the pipeline stops.
                        batch.records.push(record);
                        batch.records.extend(records);
                        return Err(match e {
                            EncodeError::Service(e) => e,
                            other => ConnectorError::fatal(other.to_string()),
                        });
                    }
                },
            };
            let d = delivery(&record, batch.records.len());
            let Err((e, d)) = self.send(&record, &payload, &topic, key.as_deref(), d).await else {
                batch.records.push(record);
                continue;
            };
            // The record is refused or put back: either way the batch's own share
            // (held by the engine) now stands for it.
            if let Some(ack) = d.ack {
                ack.ack();
            }
            if retryable(&e) {
                batch.records.push(record);
                batch.records.extend(records);
                return Err(KafkaConnectorError::client(format!("cannot produce to `{topic}`"), e).into());
            }
            batch.reject(
                record,
                RefusalClass::Refused,
                format!("Kafka refused the record for topic `{topic}`: {e}"),
                &self.stage,
            );
        }
        Ok(())
    }

    /// Sends the batch and waits for every delivery report; failures go to
    /// `batch.rejected` (for good) or make the write fail (transient).
    async fn write_and_wait(&mut self, batch: &mut Batch) -> Result<(), ConnectorError> {
        let failures: Arc<Mutex<Vec<Failure>>> = Arc::default();
        let f = Arc::clone(&failures);
        let observe = Arc::clone(&self.producer.context().observe);
        let sent = self
            .send_batch(batch, |r, i| Pending {
                ack: None,
                meta: r.meta.clone(),
                failures: Some((Arc::clone(&f), i)),
                sent: observe.send_time(),
            })
            .await;
        let p = &self.producer;
        let flushed = blocking(|| p.flush(TXN_TIMEOUT));
        if let Err(e) = sent.and(flushed.map_err(|e| KafkaConnectorError::client("delivery did not finish", e).into()))
        {
            self.abort()?;
            return Err(e);
        }
        let mut failures = std::mem::take(&mut *failures.lock().unwrap_or_else(|p| p.into_inner()));
        if failures.is_empty() {
            return Ok(());
        }
        let transient = failures.iter().any(|f| f.transient);
        let first = failures[0].reason.clone();
        // Highest index first, so that removing one leaves the others in place.
        failures.sort_by_key(|f| std::cmp::Reverse(f.index));
        for f in failures.into_iter().filter(|f| !f.transient) {
            if f.index < batch.records.len() {
                let r = batch.records.remove(f.index);
                batch.reject(r, RefusalClass::Refused, f.reason, &self.stage);
            }
        }
        if transient || self.txn.is_some() {
            // A transaction with a failed record must be aborted and redone, and a
            // transient failure means trying the batch again.
            self.abort()?;
            return Err(ConnectorError::transient("Kafka delivery failed", std::io::Error::other(first)));
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for KafkaSink {
    /// Asynchronous when opened with a late-reject channel (a pipeline's sink),
    /// except with transactions, which commit in `commit`; a dead-letter sink
    /// waits for its delivery reports in `write`.
    fn delivery(&self) -> DeliveryMode {
        match (&self.txn, &self.producer.context().late) {
            (None, Some(_)) => DeliveryMode::Asynchronous,
            _ => DeliveryMode::Synchronous,
        }
    }

    async fn write(&mut self, batch: &mut Batch) -> Result<(), ConnectorError> {
        self.producer.context().log.check_fatal()?;
        if let Some(txn) = &self.txn {
            if txn.commit_pending == Some(batch.seq) && self.resume_commit(batch.seq)? {
                return Ok(());
            }
            self.abort()?; // A retry after a failed write or commit starts over.
            self.begin()?;
            return self.write_and_wait(batch).await;
        }
        self.resend().await?;
        let async_ack = match self.delivery() {
            DeliveryMode::Asynchronous => Some(
                batch
                    .ack
                    .as_ref()
                    .ok_or_else(|| {
                        ConnectorError::fatal("an asynchronous sink was given a batch without its acknowledgement")
                    })?
                    .split(),
            ),
            DeliveryMode::Synchronous => None,
        };
        match async_ack {
            // The engine releases its own share after the refused records are handled.
            Some(ack) => {
                let observe = Arc::clone(&self.producer.context().observe);
                let result = self
                    .send_batch(batch, |r, _| Pending {
                        ack: Some(ack.split()),
                        meta: r.meta.clone(),
                        failures: None,
                        sent: observe.send_time(),
                    })
                    .await;
                ack.ack();
                result
            }
            None => self.write_and_wait(batch).await,
        }
    }

    async fn commit(&mut self, batch: &mut Batch) -> Result<(), ConnectorError> {
        let Some(txn) = self.txn.as_ref() else { return Ok(()) };
        let consumer = txn.consumer.get().cloned().ok_or_else(|| {
            ConnectorError::fatal("`delivery: exactly_once` needs a `kafka` source to commit offsets through")
        })?;
        let (resumed, open) = (txn.committed == Some(batch.seq), txn.open);
        let group = Arc::clone(&consumer.context().group);
        let mut offsets = TopicPartitionList::new();
        if let Some(stored) = &batch.position {
            for p in crate::position::decode(stored) {
                if group.is_current(&p) {
                    offsets
                        .add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next))
                        .map_err(|e| KafkaConnectorError::client("bad offset", e))?;
                } else {
                    tracing::warn!(topic = %p.topic, partition = p.partition, "partition revoked; its offset is left to its new owner");
                }
            }
        }
        if resumed {
            // Its commit was resumed and finished in `write`.
        } else if offsets.count() > 0 || open {
            self.begin()?;
            let metadata = consumer
                .group_metadata()
                .ok_or_else(|| ConnectorError::fatal("the source has no consumer group metadata"))?;
            let p = &self.producer;
            if offsets.count() > 0 {
                let sent = txn_call("adding offsets to the transaction", || {
                    p.send_offsets_to_transaction(&offsets, &metadata, TXN_TIMEOUT)
                });
                if let Err(e) = sent {
                    self.abort()?;
                    return Err(txn_error("cannot add the offsets to the transaction", e));
                }
            }
            match txn_call("committing the transaction", || p.commit_transaction(TXN_TIMEOUT)) {
                Ok(()) => {
                    let txn = self.txn.as_mut().expect("exactly-once");
                    txn.open = false;
                    p.context().observe.transaction(true, txn.began.take().map(|b| b.elapsed()));
                }
                Err(KafkaError::Transaction(t)) if t.txn_requires_abort() => {
                    self.abort()?;
                    return Err(txn_error("the transaction was aborted", KafkaError::Transaction(t)));
                }
                Err(e) => {
                    // It may still complete: the next attempt resumes it.
                    self.txn.as_mut().expect("exactly-once").commit_pending = Some(batch.seq);
                    return Err(txn_error("the transaction commit did not finish", e));
                }
            }
        }
        group.batch_committed(batch.seq);
        Ok(())
    }

    async fn close(&mut self) -> Result<(), ConnectorError> {
        if let Err(e) = self.abort() {
            tracing::warn!(error = %e.chain(), "aborting the open transaction at close failed");
        }
        let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
        loop {
            self.resend().await?;
            let p = &self.producer;
            let _ = blocking(|| p.flush(Duration::from_millis(500)));
            let retries = self.producer.context().retry.lock().unwrap_or_else(|p| p.into_inner()).len();
            if self.producer.in_flight_count() == 0 && retries == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        let left = self.producer.in_flight_count();
        self.producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        self.producer.context().retry.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Err(ConnectorError::transient(
            format!("{left} records were not delivered within {CLOSE_TIMEOUT:?}; they will be read again"),
            std::io::Error::other(self.producer.context().log.last_error().unwrap_or_default()),
        ))
    }
}
