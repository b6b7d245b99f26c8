//! Kafka source and sink on librdkafka (`rdkafka`).
//!
//! The source is a consumer group member whose offsets advance only over
//! acknowledged batches; the sink produces with idempotence and completes each
//! record's acknowledgement from its delivery report, or, with `delivery:
//! exactly_once`, commits records and the source's offsets in one transaction.

mod check;
mod client;
pub mod config;
mod connector;
mod error;
mod group;
mod observe;
mod pairing;
mod position;
mod sink;
mod source;

pub use config::{KafkaSinkConfig, KafkaSourceConfig};
pub use connector::register;
pub use error::KafkaConnectorError;
pub use group::KafkaConsumer;
pub use pairing::ExactlyOncePairing;
pub use sink::KafkaSink;
pub use source::KafkaSource;
