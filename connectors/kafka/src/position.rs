//! The Kafka source's position: per partition, the offset of the next record
//! to read. As a [`Position`], one part per partition:
//! `kafka:<topic>:<partition>` = `<next>@<generation>`. The generation (of the
//! partition's assignment when it was read) lets an exactly-once sink skip a
//! partition revoked since; positions stored before it existed hold `<next>`
//! alone and read back with generation 0.

use std::sync::Arc;

use flowgate_sdk::Position;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionOffset {
    pub topic: Arc<str>,
    pub partition: i32,
    pub next: i64,
    /// The source's assignment generation of the partition when it was read;
    /// the position is stale once the partition was revoked since.
    pub generation: u64,
}

const PREFIX: &str = "kafka:";

pub fn encode(offsets: &[PartitionOffset]) -> Position {
    offsets
        .iter()
        .map(|p| (format!("{PREFIX}{}:{}", p.topic, p.partition), format!("{}@{}", p.next, p.generation)))
        .collect()
}

/// The partitions of a position; parts that are not the Kafka source's are skipped.
pub fn decode(position: &Position) -> Vec<PartitionOffset> {
    position
        .parts()
        .filter_map(|(key, value)| {
            let (topic, partition) = key.strip_prefix(PREFIX)?.rsplit_once(':')?;
            let (next, generation) = value.split_once('@').unwrap_or((value, "0"));
            Some(PartitionOffset {
                topic: topic.into(),
                partition: partition.parse().ok()?,
                next: next.parse().ok()?,
                generation: generation.parse().ok()?,
            })
        })
        .collect()
}

/// The offsets of several batches folded into one per partition: within an
/// assignment the furthest wins; a newer assignment replaces an older one.
pub fn merge<'a>(offsets: impl IntoIterator<Item = &'a PartitionOffset>) -> Vec<PartitionOffset> {
    let mut latest: Vec<PartitionOffset> = Vec::new();
    for p in offsets {
        match latest.iter_mut().find(|l| l.partition == p.partition && l.topic == p.topic) {
            Some(l) if l.generation == p.generation => l.next = l.next.max(p.next),
            Some(l) => *l = p.clone(),
            None => latest.push(p.clone()),
        }
    }
    latest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(topic: &str, partition: i32, next: i64, generation: u64) -> PartitionOffset {
        PartitionOffset { topic: topic.into(), partition, next, generation }
    }

    #[test]
    fn round_trips_and_reads_positions_stored_without_generations() {
        let offsets = vec![at("orders", 0, 41, 7), at("orders.eu", 12, 5, 1)];
        assert_eq!(decode(&encode(&offsets)), offsets);
        // As stored by 0.1's SQL sinks (one BIGINT per partition).
        let stored = Position::default().with("kafka:orders:3", "1042").with("postgres", "77");
        assert_eq!(decode(&stored), vec![at("orders", 3, 1042, 0)]);
    }

    #[test]
    fn merge_keeps_the_furthest_offset_of_the_latest_assignment() {
        let batches = [at("t", 0, 5, 1), at("t", 1, 3, 1), at("t", 0, 9, 1), at("t", 1, 2, 2)];
        assert_eq!(merge(&batches), vec![at("t", 0, 9, 1), at("t", 1, 2, 2)]);
    }
}
