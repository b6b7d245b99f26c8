//! What the exactly-once Kafka sink and the Kafka source share, so that
//! neither needs the other's module.

use std::sync::Arc;

use crate::group::KafkaConsumer;

/// The exactly-once pairing of a Kafka sink with the pipeline's Kafka source:
/// the sink leaves it in the pipeline's resources when it opens, the source
/// finds it, hands its offset commits to the sink's transactions and puts its
/// consumer in it (the sink needs the group's metadata to commit offsets).
#[derive(Clone, Default)]
pub struct ExactlyOncePairing(pub Arc<std::sync::OnceLock<Arc<KafkaConsumer>>>);
