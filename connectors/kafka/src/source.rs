//! The Kafka source: a consumer group member whose offsets follow acknowledgements.
//!
//! Each batch remembers, per partition, the offset after its last record. When the
//! engine reports a watermark, the offsets of the batches below it are stored, and
//! librdkafka commits stored offsets every 250 ms, when partitions are revoked, and
//! on close. Nothing is stored for a record before the sink (or the dead-letter
//! sink) has it. With `delivery: exactly_once` the sink commits the offsets inside
//! its transaction instead, and the source stores nothing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowgate_sdk::{
    Batch, ConnectorError, Metadata, OpenContext, PendingPositions, Read, Record, Source, Watermark, async_trait,
    blocking,
};
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::client::{ClientLog, client_config, record_of};
use crate::config::{KafkaSourceConfig, Start};
use crate::error::KafkaConnectorError;
use crate::group::{ConsumerCtx, GroupState, KafkaConsumer, lock};
use crate::pairing::ExactlyOncePairing;
use crate::position::{self, PartitionOffset};

pub struct KafkaSource {
    consumer: Arc<KafkaConsumer>,
    group: Arc<GroupState>,
    batch_size: usize,
    linger: Duration,
    exactly_once: bool,
    /// Batches handed out and not yet below the watermark, with their positions.
    pending: PendingPositions<Vec<PartitionOffset>>,
    topics: Vec<Arc<str>>,
    /// A copy of the assignment's generations, refreshed after each rebalance.
    generations: HashMap<(Arc<str>, i32), u64>,
    seen_rebalances: u64,
    /// Records that arrived while the engine was not reading (of a partition
    /// assigned meanwhile): handed out at the next read, never dropped.
    held: Option<Held>,
    /// Every partition paused while the engine was not reading, resumed
    /// together at the next read: pausing is the partition's own flag, which
    /// a revocation and a later assignment keep.
    paused: HashSet<(Arc<str>, i32)>,
}

/// Records read while paused, with what `drop_revoked` needs should the
/// group rebalance before they are handed out.
struct Held {
    records: Vec<Record>,
    offsets: Vec<PartitionOffset>,
    gens: Vec<u64>,
}

/// Consumer settings for a source; also used by `validate --check`.
pub(crate) fn consumer_config(config: &KafkaSourceConfig, exactly_once: bool) -> rdkafka::ClientConfig {
    let session = config.session_timeout.0.as_millis().max(1000);
    let reset = match config.start {
        Start::Latest => "latest",
        Start::Earliest | Start::Timestamp(_) => "earliest",
    };
    let defaults = [
        ("group.id", config.group.clone()),
        ("enable.auto.commit", (!exactly_once).to_string()),
        ("enable.auto.offset.store", "false".to_string()),
        ("auto.commit.interval.ms", "250".to_string()),
        ("auto.offset.reset", reset.to_string()),
        ("session.timeout.ms", session.to_string()),
        ("heartbeat.interval.ms", (session / 4).to_string()),
        ("isolation.level", "read_committed".to_string()),
        // Bounds what librdkafka prefetches per partition.
        ("queued.max.messages.kbytes", "16384".to_string()),
        // Once that prefetch is full, librdkafka waits this long before fetching
        // again (default 1 s). A pipeline slower than the broker drains it well
        // within that and then sat idle: with the default, Kafka -> Wasm -> Kafka
        // ran at 141k records/s, with 10 ms at 408k (docs/benchmarks.md).
        ("fetch.queue.backoff.ms", "10".to_string()),
        ("statistics.interval.ms", crate::observe::STATISTICS_INTERVAL.to_string()),
    ];
    client_config(&config.brokers.bootstrap(), &defaults, &config.properties)
}

impl KafkaSource {
    /// Creates the consumer and subscribes. When an exactly-once Kafka sink
    /// left an [`ExactlyOncePairing`] in the pipeline's resources, offset
    /// commits are handed to its transactions and the consumer is put in the
    /// pairing. Values are handed out as they are; the runtime places the
    /// decoding stage of `format` after the source.
    pub fn open(config: KafkaSourceConfig, ctx: &OpenContext) -> Result<Self, KafkaConnectorError> {
        let pairing = ctx.resources.get::<ExactlyOncePairing>();
        let exactly_once = pairing.is_some();
        let group = Arc::new(GroupState::default());
        let context = ConsumerCtx {
            log: ClientLog::new(format!("{}:source", ctx.pipeline).into()),
            observe: Arc::new(crate::observe::SourceObserver::new(&ctx.pipeline)),
            group: Arc::clone(&group),
            start: config.start.clone(),
            exactly_once,
            resume: Mutex::new(match &ctx.resume {
                Some(stored) => {
                    position::decode(stored).into_iter().map(|p| ((p.topic.to_string(), p.partition), p.next)).collect()
                }
                None => HashMap::new(),
            }),
        };
        let consumer: KafkaConsumer =
            consumer_config(&config, exactly_once).create_with_context(context).map_err(KafkaConnectorError::config)?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(|e| KafkaConnectorError::client("cannot subscribe", e))?;
        tracing::info!(pipeline = %ctx.pipeline, group = %config.group, topics = ?config.topics, "kafka source subscribed");
        let consumer = Arc::new(consumer);
        if let Some(pairing) = pairing {
            // Only one source per pipeline: the cell is empty.
            let _ = pairing.0.set(Arc::clone(&consumer));
        }
        Ok(KafkaSource {
            consumer,
            group,
            batch_size: ctx.batch_size,
            linger: ctx.linger,
            exactly_once,
            pending: PendingPositions::default(),
            topics: Vec::new(),
            generations: HashMap::new(),
            seen_rebalances: u64::MAX,
            held: None,
            paused: HashSet::new(),
        })
    }

    fn topic(&mut self, name: &str) -> Arc<str> {
        if let Some(t) = self.topics.iter().find(|t| &***t == name) {
            return Arc::clone(t);
        }
        let t: Arc<str> = name.into();
        self.topics.push(Arc::clone(&t));
        t
    }

    /// Adds a record to the batch, with the generation its partition was
    /// assigned in when it was read.
    fn push(
        &mut self,
        m: &BorrowedMessage<'_>,
        records: &mut Vec<Record>,
        offsets: &mut Vec<PartitionOffset>,
        gens: &mut Vec<u64>,
    ) {
        let topic = self.topic(m.topic());
        let (partition, offset) = (m.partition(), m.offset());
        let rebalances = self.group.rebalances.load(Ordering::Acquire);
        if rebalances != self.seen_rebalances {
            self.generations = lock(&self.group.assigned).partitions.clone();
            self.seen_rebalances = rebalances;
        }
        let generation = self.generations.get(&(Arc::clone(&topic), partition)).copied().unwrap_or(0);
        gens.push(generation);
        match offsets.iter_mut().find(|p| p.partition == partition && p.generation == generation && p.topic == topic) {
            Some(p) => p.next = offset + 1,
            None => {
                offsets.push(PartitionOffset { topic: Arc::clone(&topic), partition, next: offset + 1, generation })
            }
        }
        let meta =
            Metadata::default().with("topic", topic).with("partition", i64::from(partition)).with("offset", offset);
        records.push(record_of(m, meta));
    }

    /// A consume error: fatal when waiting cannot help, otherwise logged while
    /// librdkafka recovers on its own.
    fn consume_error(&self, e: KafkaError) -> Result<(), ConnectorError> {
        let code = e.rdkafka_error_code();
        let fatal = matches!(
            code,
            Some(
                RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::UnknownTopic
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::GroupAuthorizationFailed
                    | RDKafkaErrorCode::SaslAuthenticationFailed
                    | RDKafkaErrorCode::Authentication
                    | RDKafkaErrorCode::Fatal
            )
        );
        if fatal {
            let what = match code {
                Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                    "a subscribed topic does not exist"
                }
                _ => "the broker refused the consumer",
            };
            return Err(ConnectorError::fatal_from(what, e));
        }
        tracing::warn!(error = %e, "kafka consumer error; continuing");
        Ok(())
    }

    /// Hands the batch out with its offsets.
    fn hand_out(&mut self, batch: &mut Batch, offsets: Vec<PartitionOffset>) -> Read {
        batch.position = Some(position::encode(&offsets));
        self.pending.push(batch.seq, offsets);
        self.group.handed_out.store(batch.seq + 1, Ordering::Release);
        Read::Data
    }

    /// Polls the consumer for `wait` without taking new records: one that does
    /// not poll for `max.poll.interval.ms` leaves its group, and its partitions
    /// go elsewhere. The assigned partitions are paused so that polling reads
    /// nothing new (librdkafka drops what it prefetched and, on resume, fetches
    /// from after the last record read); a record of a partition assigned since
    /// the last pause joins the held ones.
    async fn poll_paused(&mut self, held: &mut Held, wait: Duration) -> Result<(), ConnectorError> {
        let consumer = Arc::clone(&self.consumer);
        let assigned =
            consumer.assignment().map_err(|e| KafkaConnectorError::client("cannot read the assignment", e))?;
        self.pause(&assigned)?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Err(_) => return Ok(()),
                Ok(Err(e)) => self.consume_error(e)?,
                Ok(Ok(m)) => {
                    self.push(&m, &mut held.records, &mut held.offsets, &mut held.gens);
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(m.topic(), m.partition());
                    self.pause(&tpl)?;
                }
            }
        }
    }

    fn pause(&mut self, partitions: &TopicPartitionList) -> Result<(), ConnectorError> {
        // Noted before the call, so that resume() undoes whatever it did.
        for p in partitions.elements() {
            let topic = self.topic(p.topic());
            self.paused.insert((topic, p.partition()));
        }
        self.consumer
            .pause(partitions)
            .map_err(|e| KafkaConnectorError::client("cannot pause the partitions", e).into())
    }

    /// Resumes every partition [`KafkaSource::poll_paused`] paused, assigned or
    /// not (for one the consumer no longer owns, that only clears the flag).
    /// Never fails: the batch just handed out must not be lost to an error
    /// here. librdkafka accepts the call as a whole; should it ever refuse, the
    /// resume is tried again on the next read.
    fn resume(&mut self) {
        if self.paused.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &self.paused {
            tpl.add_partition(topic, *partition);
        }
        match self.consumer.resume(&tpl) {
            Ok(()) => self.paused.clear(),
            Err(e) => tracing::warn!(error = %e, "cannot resume the paused partitions; trying again"),
        }
    }

    /// Drops records of partitions revoked (or revoked and assigned again) while
    /// the batch was being read: librdkafka fetches them again from the committed
    /// offset for the partition's current owner.
    fn drop_revoked(&self, batch: &mut Batch, offsets: &mut Vec<PartitionOffset>, gens: &mut Vec<u64>) {
        let a = lock(&self.group.assigned);
        let current = |topic: &Arc<str>, partition: i32, generation: u64| {
            a.partitions.get(&(Arc::clone(topic), partition)) == Some(&generation)
        };
        offsets.retain(|p| current(&p.topic, p.partition, p.generation));
        let keep: Vec<bool> = batch
            .records
            .iter()
            .zip(gens.iter())
            .map(|(r, &generation)| match (r.meta.text("topic"), r.meta.int("partition")) {
                (Some(topic), Some(partition)) => current(topic, partition as i32, generation),
                _ => true,
            })
            .collect();
        let mut k = keep.iter();
        batch.records.retain(|_| *k.next().expect("a flag per record"));
        let mut k = keep.iter();
        gens.retain(|_| *k.next().expect("a flag per record"));
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn read(&mut self, batch: &mut Batch) -> Result<Read, ConnectorError> {
        self.resume();
        if let Some(held) = self.held.take() {
            batch.records = held.records;
            let (mut offsets, mut gens) = (held.offsets, held.gens);
            // Partitions lost while paused are read again by their new owner.
            self.drop_revoked(batch, &mut offsets, &mut gens);
            return Ok(if batch.records.is_empty() { Read::Idle } else { self.hand_out(batch, offsets) });
        }
        let consumer = Arc::clone(&self.consumer);
        consumer.context().log.check_fatal()?;
        let rebalances = self.group.rebalances.load(Ordering::Acquire);
        let mut offsets: Vec<PartitionOffset> = Vec::new();
        let mut gens: Vec<u64> = Vec::new();
        let first = match tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            Err(_) => return Ok(Read::Idle),
            Ok(Err(e)) => {
                self.consume_error(e)?;
                return Ok(Read::Idle);
            }
            Ok(Ok(m)) => m,
        };
        self.push(&first, &mut batch.records, &mut offsets, &mut gens);
        drop(first);
        let deadline = tokio::time::Instant::now() + self.linger;
        while batch.records.len() < self.batch_size {
            // Take what librdkafka has queued without a timer per record.
            let next = match consumer.recv().now_or_never() {
                Some(r) => r,
                None => match tokio::time::timeout_at(deadline, consumer.recv()).await {
                    Ok(r) => r,
                    Err(_) => break,
                },
            };
            match next {
                Ok(m) => self.push(&m, &mut batch.records, &mut offsets, &mut gens),
                Err(e) => {
                    self.consume_error(e)?;
                    break;
                }
            }
        }
        if self.group.rebalances.load(Ordering::Acquire) != rebalances {
            self.drop_revoked(batch, &mut offsets, &mut gens);
        }
        if batch.records.is_empty() {
            return Ok(Read::Idle);
        }
        Ok(self.hand_out(batch, offsets))
    }

    /// The engine is not reading (the sink is slow or down): stay in the group,
    /// partitions paused, until it reads again. Records that arrive anyway (of
    /// a partition assigned meanwhile) are held for the next read.
    async fn keep_alive(&mut self) -> Result<(), ConnectorError> {
        let mut held = self.held.take().unwrap_or(Held { records: Vec::new(), offsets: Vec::new(), gens: Vec::new() });
        let polled = self.poll_paused(&mut held, Duration::from_millis(50)).await;
        if !held.records.is_empty() {
            self.held = Some(held);
        }
        polled
    }

    async fn commit(&mut self, done: Watermark) -> Result<(), ConnectorError> {
        let latest = position::merge(self.pending.covered(done).flat_map(|(_, offsets)| offsets));
        if self.exactly_once || latest.is_empty() {
            // The exactly-once sink committed them in its transactions.
            self.pending.release(done);
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for p in latest.iter().filter(|p| self.group.is_current(p)) {
            tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next))
                .map_err(|e| KafkaConnectorError::client("bad offset", e))?;
        }
        let stored = match tpl.count() {
            0 => Ok(()),
            _ => match self.consumer.store_offsets(&tpl) {
                Ok(()) => {
                    self.consumer.context().observe.stored();
                    Ok(())
                }
                // Revoked between the check and the store: the next owner reads them again.
                Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => Ok(()),
                Err(e) => Err(KafkaConnectorError::client("cannot store offsets", e).into()),
            },
        };
        // Kept when storing failed, for the next commit to store them.
        if stored.is_ok() {
            self.pending.release(done);
        }
        stored
    }

    async fn close(&mut self) -> Result<(), ConnectorError> {
        self.group.closing.store(true, Ordering::Release);
        if self.exactly_once {
            // Nothing more will be committed: the revocation when the consumer
            // closes must not wait for batches a failed sink left behind.
            self.group.handed_out.store(0, Ordering::Release);
            return Ok(());
        }
        let consumer = Arc::clone(&self.consumer);
        match blocking(|| consumer.commit_consumer_state(CommitMode::Sync)) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(e) => Err(KafkaConnectorError::client("final offset commit failed", e).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use flowgate_sdk::{Record, Role, StateStore};
    use rdkafka::ClientConfig;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    use super::*;
    use crate::config::{Brokers, Properties};

    fn source(
        mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        topics: &[&str],
        start: Start,
    ) -> KafkaSource {
        let config = KafkaSourceConfig {
            brokers: Brokers::One(mock.bootstrap_servers()),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            group: "g".into(),
            start,
            session_timeout: flowgate_sdk::HumanDuration::from_millis(6000),
            format: flowgate_formats::Format::Bytes,
            properties: Properties::default(),
        };
        let ctx = OpenContext::new("p", "kafka", Role::Source, StateStore::new(std::env::temp_dir()))
            .with_batch(100, Duration::from_millis(200));
        KafkaSource::open(config, &ctx).unwrap()
    }

    async fn read_n(source: &mut KafkaSource, n: usize) -> Vec<Record> {
        let mut records = Vec::new();
        for seq in 0..40 {
            let mut batch = Batch::with_capacity(seq, 100);
            if source.read(&mut batch).await.unwrap() == Read::Data {
                records.extend(batch.records);
            }
            if records.len() >= n {
                break;
            }
        }
        records
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follows_topic_patterns() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("audit.a", 1, 1).unwrap();
        mock.create_topic("audit.b", 1, 1).unwrap();
        mock.create_topic("other", 1, 1).unwrap();
        let producer: FutureProducer =
            ClientConfig::new().set("bootstrap.servers", mock.bootstrap_servers()).create().unwrap();
        for (i, topic) in ["audit.a", "audit.b", "other", "audit.a", "audit.b"].iter().enumerate() {
            let value = format!("v{i}");
            let rec = FutureRecord::to(topic).key("k").payload(&value);
            producer.send(rec, Duration::from_secs(5)).await.unwrap();
        }
        let mut s = source(&mock, &["^audit\\..*"], Start::Earliest);
        let got = read_n(&mut s, 4).await;
        let mut values: Vec<&[u8]> = got.iter().map(|r| r.value.as_ref()).collect();
        values.sort();
        assert_eq!(values, [&b"v0"[..], b"v1", b"v3", b"v4"], "`other` does not match");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_batches_with_positions_and_metadata() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("t", 2, 1).unwrap();
        let producer: FutureProducer =
            ClientConfig::new().set("bootstrap.servers", mock.bootstrap_servers()).create().unwrap();
        for i in 0..10 {
            let key = format!("k{i}");
            let rec = FutureRecord::to("t").key(&key).payload("v").partition(i % 2);
            producer.send(rec, Duration::from_secs(5)).await.unwrap();
        }
        let config = KafkaSourceConfig {
            brokers: Brokers::One(mock.bootstrap_servers()),
            topics: vec!["t".into()],
            group: "g".into(),
            start: Start::Earliest,
            session_timeout: flowgate_sdk::HumanDuration::from_millis(6000),
            format: flowgate_formats::Format::Bytes,
            properties: Properties::default(),
        };
        let dir = tempfile::tempdir().unwrap();
        let ctx = OpenContext::new("p", "kafka", Role::Source, StateStore::new(dir.path()))
            .with_batch(100, Duration::from_millis(200));
        let mut source = KafkaSource::open(config, &ctx).unwrap();
        let mut records = Vec::new();
        let mut position = None;
        for seq in 0..30 {
            let mut batch = Batch::with_capacity(seq, 100);
            if source.read(&mut batch).await.unwrap() == Read::Data {
                records.extend(batch.records);
                position = batch.position;
            }
            if records.len() == 10 {
                break;
            }
        }
        assert_eq!(records.len(), 10);
        assert_eq!(records[0].meta.text("topic").map(|t| &**t), Some("t"));
        let offsets = position::decode(&position.expect("no position"));
        assert!(offsets.iter().all(|p| p.next == 5 && p.generation == 1), "{offsets:?}");
    }
}
