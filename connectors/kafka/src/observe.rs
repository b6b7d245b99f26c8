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

/// Watches the brokers a client talks to: one that has requests waiting and
/// answered none of them since the last statistics did not answer for at
/// least an interval (frozen, or a network that drops packets). librdkafka
/// itself waits `socket.timeout.ms` (60 s) before it calls that an error.
#[derive(Default)]
struct BrokerWatch {
    /// Responses received so far, by broker.
    answered: HashMap<String, u64>,
    /// Since when each broker has not answered.
    silent_since: HashMap<String, Instant>,
}

impl BrokerWatch {
    /// The brokers not answering, described, after reading `s`.
    fn check(&mut self, s: &Statistics) -> Option<String> {
        let mut silent = Vec::new();
        for (name, b) in &s.brokers {
            // Bootstrap addresses and the internal broker are not members of the cluster.
            if b.nodeid < 0 {
                continue;
            }
            let before = self.answered.insert(name.clone(), b.rx);
            if b.waitresp_cnt > 0 && before == Some(b.rx) {
                let since = *self.silent_since.entry(name.clone()).or_insert_with(Instant::now);
                silent.push(format!(
                    "broker {} has answered none of {} requests for {}s",
                    b.nodename,
                    b.waitresp_cnt,
                    since.elapsed().as_secs()
                ));
            } else {
                self.silent_since.remove(name);
            }
        }
        (!silent.is_empty()).then(|| silent.join("; "))
    }
}

/// Reports (or clears) the broker trouble of a pipeline's part.
fn broker_health(pipeline: &str, part: &str, watch: &Mutex<BrokerWatch>, s: &Statistics) {
    match lock(watch).check(s) {
        Some(what) => health::trouble(pipeline, part, "waiting for the broker", what, false),
        None => health::recovered(pipeline, part),
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
    /// stale in the statistics) and the brokers' state.
    pub fn statistics(&self, s: &Statistics, held: &dyn Fn(&str, i32) -> bool) {
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
        if known {
            health::lag_records(&self.pipeline, total);
        }
        broker_health(&self.pipeline, "source", &self.brokers, s);
    }
}

/// The sink's figures: the producer's queue, retries, deliveries and transactions.
pub(crate) struct SinkObserver {
    pipeline: Arc<str>,
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
    pub fn new(pipeline: &str) -> Self {
        let p = pipeline.to_string();
        let txn = |outcome: &'static str| metrics::counter!("flowgate_kafka_transactions_total", "pipeline" => p.clone(), "outcome" => outcome);
        let o = SinkObserver {
            pipeline: pipeline.into(),
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
        broker_health(&self.pipeline, "sink", &self.brokers, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(rx: u64, waiting: i64) -> Statistics {
        let broker = format!(
            r#"{{"name": "b:9092/1", "nodeid": 1, "nodename": "b:9092", "source": "learned", "state": "UP",
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
    fn a_broker_that_answers_nothing_while_asked_is_reported_until_it_answers() {
        let mut w = BrokerWatch::default();
        assert_eq!(w.check(&stats(10, 1)), None, "the first reading has nothing to compare with");
        assert_eq!(w.check(&stats(12, 1)), None, "it answered");
        let silent = w.check(&stats(12, 2)).expect("no answer while asked");
        assert!(silent.starts_with("broker b:9092 has answered none of 2 requests"), "{silent}");
        assert_eq!(w.check(&stats(12, 0)), None, "nothing asked, nothing owed");
        assert_eq!(w.check(&stats(13, 1)), None);
    }
}
