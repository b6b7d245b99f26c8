//! What the Kafka clients do, as metrics and health: consumer lag per
//! partition, rebalances, commit time, the producer's queue, deliveries and
//! transactions, and a broker that stopped answering. Most figures come from
//! librdkafka's statistics (every `statistics.interval.ms`, 5 s unless the
//! `properties` say otherwise), which it gathers anyway: reading them costs
//! one JSON document per interval, not a thing per record.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowgate_sdk::health;
use metrics::{Counter, Gauge, Histogram};
use rdkafka::statistics::Statistics;

use crate::group::lock;

/// How often librdkafka reports its statistics unless the properties say.
pub(crate) const STATISTICS_INTERVAL: &str = "5000";

/// One delivery in this many is timed, so that timing costs nothing per record.
const DELIVERY_SAMPLE: u64 = 64;

/// How long a broker may leave requests unanswered before it counts as not
/// answering: well above a fetch's long poll (`fetch.wait.max.ms`, 500 ms)
/// and two statistics intervals; librdkafka itself waits `socket.timeout.ms`
/// (60 s) before it calls that an error.
const SILENCE: Duration = Duration::from_secs(10);

/// Watches the brokers a client talks to for one that has requests waiting
/// and has answered none for [`SILENCE`]: frozen, or a network that drops
/// packets.
#[derive(Default)]
struct BrokerWatch {
    /// Responses received so far by each broker, and when that last changed.
    answered: HashMap<String, (u64, Instant)>,
    /// Whether a silence was reported (and not yet cleared).
    reported: bool,
}

/// What a reading of the statistics says of the brokers.
#[derive(Debug, PartialEq)]
enum Brokers {
    Answering,
    /// These brokers have not answered for [`SILENCE`] (the cause, described).
    Silent(String),
}

impl BrokerWatch {
    fn check(&mut self, s: &Statistics) -> Brokers {
        self.check_at(s, Instant::now())
    }

    fn check_at(&mut self, s: &Statistics, now: Instant) -> Brokers {
        let mut silent = Vec::new();
        // Brokers learned from the cluster's metadata: bootstrap addresses,
        // the internal broker and logical ones (the group coordinator, which
        // waits on other members during a rebalance) are left out.
        for (name, b) in s.brokers.iter().filter(|(_, b)| b.source == "learned") {
            let (rx, since) = self.answered.entry(name.clone()).or_insert((b.rx, now));
            if *rx != b.rx {
                (*rx, *since) = (b.rx, now);
            } else if b.waitresp_cnt > 0 && now.duration_since(*since) >= SILENCE {
                // No counts or times in it: a cause that stays the same is one
                // entry among the status page's last errors, not one per reading.
                silent.push(format!("broker {} answers none of the requests waiting on it", b.nodename));
            }
        }
        silent.sort();
        if silent.is_empty() { Brokers::Answering } else { Brokers::Silent(silent.join("; ")) }
    }
}

/// Reports the pipeline's `part` (`source broker`, `sink broker`) not
/// answering, and recovered when it answers again: only its own trouble,
/// never the engine's `source` or `sink` ones.
fn broker_health(pipeline: &str, part: &str, watch: &Mutex<BrokerWatch>, s: &Statistics) {
    let mut watch = lock(watch);
    match watch.check(s) {
        Brokers::Silent(cause) => {
            watch.reported = true;
            health::trouble(pipeline, part, "not answering", cause, false);
        }
        Brokers::Answering if watch.reported => {
            watch.reported = false;
            health::recovered(pipeline, part);
        }
        Brokers::Answering => {}
    }
}

/// The source's figures: lag per partition, assignment, rebalances, commits.
pub(crate) struct SourceObserver {
    pipeline: Arc<str>,
    assigned: Gauge,
    rebalances: Counter,
    commit_seconds: Histogram,
    /// Per partition: lag behind the high watermark from the committed
    /// offset, and from the consumer's position.
    partitions: Mutex<HashMap<(String, i32), (Gauge, Gauge)>>,
    /// Offsets stored and not yet confirmed committed, since when.
    storing_since: Mutex<Option<Instant>>,
    brokers: Mutex<BrokerWatch>,
}

impl SourceObserver {
    pub fn new(pipeline: &str) -> Self {
        let p = pipeline.to_string();
        let o = SourceObserver {
            pipeline: pipeline.into(),
            assigned: metrics::gauge!("flowgate_kafka_assigned_partitions", "pipeline" => p.clone()),
            rebalances: metrics::counter!("flowgate_kafka_rebalances_total", "pipeline" => p.clone()),
            commit_seconds: metrics::histogram!("flowgate_kafka_commit_seconds", "pipeline" => p),
            partitions: Mutex::default(),
            storing_since: Mutex::default(),
            brokers: Mutex::default(),
        };
        o.rebalances.increment(0);
        o
    }

    fn gauges(&self, topic: &str, partition: i32) -> (Gauge, Gauge) {
        let mut partitions = lock(&self.partitions);
        let g = partitions.entry((topic.to_string(), partition)).or_insert_with(|| {
            let labels = [
                ("pipeline", self.pipeline.to_string()),
                ("topic", topic.to_string()),
                ("partition", partition.to_string()),
            ];
            (
                metrics::gauge!("flowgate_kafka_consumer_lag", &labels),
                metrics::gauge!("flowgate_kafka_consumer_lag_position", &labels),
            )
        });
        g.clone()
    }

    /// A rebalance assigned or revoked partitions; `held` are those held now.
    /// Revoked partitions' lag is another member's to report: it reads 0 here.
    pub fn rebalanced(&self, held: usize, revoked: &[(String, i32)]) {
        self.rebalances.increment(1);
        self.assigned.set(held as f64);
        for (topic, partition) in revoked {
            let (committed, position) = self.gauges(topic, *partition);
            committed.set(0.0);
            position.set(0.0);
        }
    }

    /// The source stored offsets for the group to commit.
    pub fn stored(&self) {
        lock(&self.storing_since).get_or_insert_with(Instant::now);
    }

    /// The group committed offsets.
    pub fn committed(&self) {
        if let Some(since) = lock(&self.storing_since).take() {
            self.commit_seconds.record(since.elapsed().as_secs_f64());
        }
    }

    /// Reads the lag of the partitions in `held` (the others' figures are
    /// stale in the statistics; `holding` of them in all) and the brokers'
    /// state.
    pub fn statistics(&self, s: &Statistics, held: &dyn Fn(&str, i32) -> bool, holding: usize) {
        let mut total = 0u64;
        let mut known = false;
        for (topic, t) in &s.topics {
            for (&partition, p) in &t.partitions {
                if partition < 0 || !held(topic, partition) || p.hi_offset < 0 {
                    continue;
                }
                let (committed, position) = self.gauges(topic, partition);
                // Nothing committed yet: everything the partition keeps is behind.
                let from = if p.committed_offset >= 0 { p.committed_offset } else { p.lo_offset.max(0) };
                let lag = (p.hi_offset - from).max(0) as u64;
                committed.set(lag as f64);
                if p.app_offset >= 0 {
                    position.set((p.hi_offset - p.app_offset).max(0) as f64);
                }
                total += lag;
                known = true;
            }
        }
        // Holding no partition, it is behind on nothing.
        if known || holding == 0 {
            health::lag_records(&self.pipeline, total);
        }
        broker_health(&self.pipeline, "source broker", &self.brokers, s);
    }
}

/// The sink's figures: the producer's queue, retries, deliveries and
/// transactions. A dead-letter sink reports its broker's health under its
/// own part, and no figures (they would mix with the sink's).
pub(crate) struct SinkObserver {
    pipeline: Arc<str>,
    part: &'static str,
    queue_records: Gauge,
    queue_bytes: Gauge,
    retries: Counter,
    delivery_seconds: Histogram,
    transactions_committed: Counter,
    transactions_aborted: Counter,
    transaction_seconds: Histogram,
    sent: AtomicU64,
    brokers: Mutex<BrokerWatch>,
}

impl SinkObserver {
    pub fn new(pipeline: &str, dead_letter: bool) -> Self {
        if dead_letter {
            return SinkObserver {
                pipeline: pipeline.into(),
                part: "dead_letter broker",
                queue_records: Gauge::noop(),
                queue_bytes: Gauge::noop(),
                retries: Counter::noop(),
                delivery_seconds: Histogram::noop(),
                transactions_committed: Counter::noop(),
                transactions_aborted: Counter::noop(),
                transaction_seconds: Histogram::noop(),
                sent: AtomicU64::new(0),
                brokers: Mutex::default(),
            };
        }
        let p = pipeline.to_string();
        let txn = |outcome: &'static str| metrics::counter!("flowgate_kafka_transactions_total", "pipeline" => p.clone(), "outcome" => outcome);
        let o = SinkObserver {
            pipeline: pipeline.into(),
            part: "sink broker",
            queue_records: metrics::gauge!("flowgate_kafka_producer_queue_records", "pipeline" => p.clone()),
            queue_bytes: metrics::gauge!("flowgate_kafka_producer_queue_bytes", "pipeline" => p.clone()),
            retries: metrics::counter!("flowgate_kafka_producer_retries_total", "pipeline" => p.clone()),
            delivery_seconds: metrics::histogram!("flowgate_kafka_delivery_seconds", "pipeline" => p.clone()),
            transactions_committed: txn("committed"),
            transactions_aborted: txn("aborted"),
            transaction_seconds: metrics::histogram!("flowgate_kafka_transaction_seconds", "pipeline" => p),
            sent: AtomicU64::new(0),
            brokers: Mutex::default(),
        };
        o.retries.increment(0);
        o
    }

    /// When a record about to be sent should have its delivery timed: one in
    /// [`DELIVERY_SAMPLE`].
    pub fn send_time(&self) -> Option<Instant> {
        self.sent.fetch_add(1, Ordering::Relaxed).is_multiple_of(DELIVERY_SAMPLE).then(Instant::now)
    }

    /// A timed record was delivered.
    pub fn delivered(&self, sent: Instant) {
        self.delivery_seconds.record(sent.elapsed().as_secs_f64());
    }

    /// A transaction ended: committed, or aborted; `took` from its start.
    pub fn transaction(&self, committed: bool, took: Option<Duration>) {
        if committed {
            self.transactions_committed.increment(1);
        } else {
            self.transactions_aborted.increment(1);
        }
        if let Some(took) = took {
            self.transaction_seconds.record(took.as_secs_f64());
        }
    }

    pub fn statistics(&self, s: &Statistics) {
        self.queue_records.set(s.msg_cnt as f64);
        self.queue_bytes.set(s.msg_size as f64);
        self.retries.absolute(s.brokers.values().map(|b| b.txretries).sum());
        broker_health(&self.pipeline, self.part, &self.brokers, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(rx: u64, waiting: i64, source: &str) -> Statistics {
        let broker = format!(
            r#"{{"name": "b:9092/1", "nodeid": 1, "nodename": "b:9092", "source": "{source}", "state": "UP",
            "stateage": 0, "outbuf_cnt": 0, "outbuf_msg_cnt": 0, "waitresp_cnt": {waiting},
            "waitresp_msg_cnt": 0, "tx": 0, "txbytes": 0, "txerrs": 0, "txretries": 0, "txidle": 0, "rxidle": 0, "req_timeouts": 0,
            "rx": {rx}, "rxbytes": 0, "rxerrs": 0, "rxcorriderrs": 0, "rxpartial": 0, "zbuf_grow": 0,
            "buf_grow": 0, "req": {{}}, "toppars": {{}}}}"#
        );
        let json = format!(
            r#"{{"name": "c", "client_id": "c", "type": "producer", "ts": 0, "time": 0, "age": 0, "replyq": 0,
            "msg_cnt": 0, "msg_size": 0, "msg_max": 0, "msg_size_max": 0, "tx": 0, "tx_bytes": 0, "rx": 0,
            "rx_bytes": 0, "txmsgs": 0, "txmsg_bytes": 0, "rxmsgs": 0, "rxmsg_bytes": 0, "simple_cnt": 0,
            "metadata_cache_cnt": 0, "topics": {{}}, "brokers": {{"b:9092/1": {broker}}}}}"#
        );
        serde_json::from_str(&json).expect("statistics")
    }

    #[test]
    fn a_broker_that_leaves_requests_unanswered_for_the_silence_is_reported_until_it_answers() {
        let mut w = BrokerWatch::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(w.check_at(&stats(10, 1, "learned"), at(0)), Brokers::Answering);
        assert_eq!(w.check_at(&stats(10, 1, "learned"), at(9)), Brokers::Answering, "not for long enough");
        let Brokers::Silent(cause) = w.check_at(&stats(10, 2, "learned"), at(10)) else { panic!("silent") };
        assert_eq!(cause, "broker b:9092 answers none of the requests waiting on it");
        assert_eq!(w.check_at(&stats(10, 0, "learned"), at(11)), Brokers::Answering, "nothing asked, nothing owed");
        assert_eq!(w.check_at(&stats(11, 1, "learned"), at(30)), Brokers::Answering, "it answered");
        assert_eq!(w.check_at(&stats(11, 1, "learned"), at(35)), Brokers::Answering, "answered 5 s ago");
        // The group coordinator waits on other members in a rebalance: not a silence.
        let mut w = BrokerWatch::default();
        w.check_at(&stats(10, 1, "logical"), at(0));
        assert_eq!(w.check_at(&stats(10, 1, "logical"), at(60)), Brokers::Answering);
    }
}
