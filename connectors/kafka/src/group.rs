//! Consumer group state: which partitions the source holds, in which assignment
//! generation, and the rebalance callbacks that keep it current (assigning,
//! revoking, starting at a time). Shared by the Kafka source, its consumer's
//! context and (with exactly-once) the sink.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use crate::client::{ClientLog, client_context};
use crate::config::Start;
use crate::observe::SourceObserver;
use crate::position::PartitionOffset;
use flowgate_sdk::blocking;

/// How long a revocation waits for the exactly-once sink to commit the batches in
/// flight, so that their partitions' next owner starts after them.
const REVOKE_WAIT: Duration = Duration::from_secs(30);

/// How long the revocation of a closing consumer waits for librdkafka to
/// finish closing it (see [`ConsumerCtx::revoke`]); it takes a few
/// milliseconds.
const CLOSE_WAIT: Duration = Duration::from_millis(500);

/// Consumer group state shared between the source, its rebalance callbacks and
/// (with exactly-once) the sink.
#[derive(Debug, Default)]
pub struct GroupState {
    pub(crate) assigned: Mutex<Assigned>,
    /// Batch sequence numbers: the next one after the last batch handed out, and
    /// the next one after the last batch the exactly-once sink committed.
    pub(crate) handed_out: AtomicU64,
    committed: Mutex<u64>,
    committed_changed: Condvar,
    /// Bumped by every rebalance, so a batch being read can tell that one happened.
    pub(crate) rebalances: AtomicU64,
    /// Set when the source closes: a revocation from then on is the consumer
    /// leaving the group.
    pub(crate) closing: AtomicBool,
}

#[derive(Debug, Default)]
pub(crate) struct Assigned {
    next_generation: u64,
    /// Partition -> the generation it was assigned in.
    pub(crate) partitions: HashMap<(Arc<str>, i32), u64>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GroupState {
    /// Whether the partition is still assigned in the same generation.
    pub fn is_current(&self, p: &PartitionOffset) -> bool {
        lock(&self.assigned).partitions.get(&(Arc::clone(&p.topic), p.partition)) == Some(&p.generation)
    }

    /// Called by the exactly-once sink once batch `seq` is committed.
    pub fn batch_committed(&self, seq: u64) {
        let mut c = lock(&self.committed);
        *c = (*c).max(seq + 1);
        self.committed_changed.notify_all();
    }

    fn wait_for_commits(&self, pipeline: &str) {
        let target = self.handed_out.load(Ordering::Acquire);
        let guard = lock(&self.committed);
        let (guard, timeout) = self
            .committed_changed
            .wait_timeout_while(guard, REVOKE_WAIT, |c| *c < target)
            .unwrap_or_else(|p| p.into_inner());
        if timeout.timed_out() {
            tracing::warn!(
                pipeline,
                waiting_for = target - *guard,
                "partitions revoked before the batches in flight were committed; their next owner may repeat them"
            );
        }
    }
}

pub struct ConsumerCtx {
    pub(crate) log: ClientLog,
    pub(crate) observe: Arc<SourceObserver>,
    pub(crate) group: Arc<GroupState>,
    pub(crate) start: Start,
    pub(crate) exactly_once: bool,
    /// Offsets a sink stored with its data (effectively-once): a partition's
    /// first assignment starts there, not at the group's committed offset.
    /// Taken once: a later assignment in this process resumes from the group's
    /// offset, which the acknowledged batches have moved since.
    pub(crate) resume: Mutex<HashMap<(String, i32), i64>>,
}

client_context!(ConsumerCtx, statistics);

impl ConsumerCtx {
    fn statistics(&self, s: rdkafka::statistics::Statistics) {
        let held = |topic: &str, partition: i32| {
            lock(&self.group.assigned).partitions.contains_key(&(Arc::<str>::from(topic), partition))
        };
        let holding = lock(&self.group.assigned).partitions.len();
        self.observe.statistics(&s, &held, holding);
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        if let Start::Timestamp(ms) = self.start {
            self.start_at_time(consumer, tpl, ms);
        }
        let resumed: Vec<(String, i32, i64)> = {
            let mut resume = lock(&self.resume);
            tpl.elements()
                .iter()
                .filter_map(|e| {
                    let next = resume.remove(&(e.topic().to_string(), e.partition()))?;
                    Some((e.topic().to_string(), e.partition(), next))
                })
                .collect()
        };
        for (topic, partition, next) in resumed {
            if let Err(e) = tpl.set_partition_offset(&topic, partition, Offset::Offset(next)) {
                tracing::error!(client = &*self.log.name, error = %e, "cannot resume {topic}[{partition}] at {next}");
            }
        }
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let result = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
        if let Err(e) = result {
            tracing::error!(client = &*self.log.name, error = %e, "assigning partitions failed");
            return;
        }
        let mut a = lock(&self.group.assigned);
        a.next_generation += 1;
        let generation = a.next_generation;
        for e in tpl.elements() {
            a.partitions.insert((e.topic().into(), e.partition()), generation);
        }
        let held = a.partitions.len();
        drop(a);
        self.observe.rebalanced(held, &[]);
        self.group.rebalances.fetch_add(1, Ordering::AcqRel);
        let names: Vec<String> = tpl.elements().iter().map(|e| format!("{}[{}]", e.topic(), e.partition())).collect();
        tracing::info!(client = &*self.log.name, partitions = %names.join(", "), "partitions assigned");
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        if self.exactly_once {
            blocking(|| self.group.wait_for_commits(&self.log.name));
        }
        let revoked: Vec<(String, i32)> =
            tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        let held = {
            let mut a = lock(&self.group.assigned);
            for (topic, partition) in &revoked {
                a.partitions.remove(&(Arc::<str>::from(topic.as_str()), *partition));
            }
            a.partitions.len()
        };
        self.observe.rebalanced(held, &revoked);
        self.group.rebalances.fetch_add(1, Ordering::AcqRel);
        // With auto-commit on, librdkafka commits the stored offsets of the removed
        // partitions as part of the unassign.
        let result = if matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative) {
            consumer.incremental_unassign(tpl)
        } else {
            consumer.unassign()
        };
        if let Err(e) = result {
            tracing::error!(client = &*self.log.name, error = %e, "unassigning partitions failed");
        }
        let names: Vec<String> = revoked.iter().map(|(t, p)| format!("{t}[{p}]")).collect();
        tracing::info!(client = &*self.log.name, partitions = %names.join(", "), held, "partitions revoked");
        if self.group.closing.load(Ordering::Acquire) {
            // Dropping the consumer closes it and polls in waits of 100 ms
            // until it is closed, and nothing ends the last wait early:
            // librdkafka finishes closing on its own thread once the
            // partitions are given up. Waiting here, in the poll that served
            // this revocation, lets the drop see it closed as soon as it is,
            // which takes a tenth of a second off every stop.
            let deadline = Instant::now() + CLOSE_WAIT;
            blocking(|| {
                while !consumer.closed() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        }
    }

    /// Partitions the group has no offset for start at the first record at or after
    /// `ms`; the others resume where the group left off.
    fn start_at_time(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList, ms: i64) {
        let timeout = Duration::from_secs(10);
        let committed = match blocking(|| consumer.committed_offsets(tpl.clone(), timeout)) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(client = &*self.log.name, error = %e, "cannot read committed offsets; using `earliest`");
                return;
            }
        };
        let mut lookup = TopicPartitionList::new();
        for e in committed.elements() {
            if !matches!(e.offset(), Offset::Offset(_)) {
                let _ = lookup.add_partition_offset(e.topic(), e.partition(), Offset::Offset(ms));
            }
        }
        if lookup.count() == 0 {
            return;
        }
        match blocking(|| consumer.offsets_for_times(lookup, timeout)) {
            Ok(found) => {
                for e in found.elements() {
                    // No record at or after the time: start at the end.
                    let at = match e.offset() {
                        Offset::Offset(o) => Offset::Offset(o),
                        _ => Offset::End,
                    };
                    let _ = tpl.set_partition_offset(e.topic(), e.partition(), at);
                }
            }
            Err(e) => tracing::warn!(client = &*self.log.name, error = %e, "cannot look up offsets by time"),
        }
    }
}

impl ConsumerContext for ConsumerCtx {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl),
            other => {
                tracing::error!(client = &*self.log.name, error = ?other, "rebalance failed; leaving the assignment");
                self.revoke(consumer, tpl);
            }
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) => self.observe.committed(),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(client = &*self.log.name, error = %e, "committing offsets failed; will retry"),
        }
    }
}

pub type KafkaConsumer = StreamConsumer<ConsumerCtx>;
