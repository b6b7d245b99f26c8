//! Connectivity checks for `flowgate validate --check`: the brokers answer with
//! these settings and credentials, and the named topics exist.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::client::Client;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::metadata::Metadata;
use rdkafka::producer::{BaseProducer, Producer};

use flowgate_sdk::Problem;
use rdkafka::error::KafkaError;

use crate::client::{ClientLog, client_context};
use crate::config::{KafkaSinkConfig, KafkaSourceConfig};
use crate::error::redacted;
use crate::sink::producer_config;
use crate::source::consumer_config;

const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

struct CheckCtx {
    log: ClientLog,
}

impl AsRef<ClientLog> for CheckCtx {
    fn as_ref(&self) -> &ClientLog {
        &self.log
    }
}

fn check_ctx() -> CheckCtx {
    CheckCtx { log: ClientLog::new(Arc::from("check")) }
}

client_context!(CheckCtx);

impl rdkafka::consumer::ConsumerContext for CheckCtx {}

impl rdkafka::producer::ProducerContext for CheckCtx {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

fn bad_setting(e: KafkaError) -> Problem {
    Problem {
        at: vec!["properties".into()],
        message: format!("invalid Kafka client setting: {}", redacted(&e)),
        help: Some("see https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md".into()),
    }
}

/// Fetches the cluster's metadata through `client`. The client never joins the
/// group, commits or produces.
fn metadata<C: ClientContext + AsRef<ClientLog>>(client: &Client<C>, brokers: &str) -> Result<Metadata, Problem> {
    client.fetch_metadata(None, CHECK_TIMEOUT).map_err(|e| {
        let detail =
            AsRef::<ClientLog>::as_ref(&**client.context()).last_error().map(|d| format!(" ({d})")).unwrap_or_default();
        let auth = detail.to_ascii_lowercase().contains("auth") || detail.contains("SASL");
        Problem {
            at: vec!["brokers".into()],
            message: format!("cannot reach the Kafka brokers `{brokers}`: {e}{detail}"),
            help: Some(if auth {
                "check `sasl.username`/`sasl.password` and `sasl.mechanism` under `properties`".into()
            } else {
                "check the address and that the brokers are up; TLS or SASL settings go under `properties`".into()
            }),
        }
    })
}

fn missing_topic(at: Vec<String>, topic: &str, brokers: &str) -> Problem {
    Problem {
        at,
        message: format!("topic `{topic}` does not exist on `{brokers}`"),
        help: Some("create it first (Flowgate does not create topics), or fix the name".into()),
    }
}

fn has_topic(md: &Metadata, topic: &str) -> bool {
    md.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
}

/// Checks a source: brokers reachable with its settings, listed topics present
/// (regular-expression entries are not checked).
pub fn check_source(config: &KafkaSourceConfig) -> Vec<Problem> {
    let brokers = config.brokers.bootstrap();
    let consumer: Result<BaseConsumer<CheckCtx>, _> =
        consumer_config(config, false).create_with_context(check_ctx()).map_err(bad_setting);
    let md = match consumer.and_then(|c| metadata(c.client(), &brokers)) {
        Ok(md) => md,
        Err(p) => return vec![p],
    };
    config
        .topics
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.starts_with('^') && !has_topic(&md, t))
        .map(|(i, t)| missing_topic(vec!["topics".into(), i.to_string()], t, &brokers))
        .collect()
}

/// Checks a sink: brokers reachable with its settings, a fixed topic present.
pub fn check_sink(config: &KafkaSinkConfig, pipeline: &str) -> Vec<Problem> {
    let brokers = config.brokers.bootstrap();
    let mut settings = producer_config(config, pipeline);
    // Connecting is enough; a transactional id would fence a running pipeline.
    settings.remove("transactional.id");
    let producer: Result<BaseProducer<CheckCtx>, _> = settings.create_with_context(check_ctx()).map_err(bad_setting);
    let md = match producer.and_then(|p| metadata(p.client(), &brokers)) {
        Ok(md) => md,
        Err(p) => return vec![p],
    };
    match config.topic.fixed() {
        Some(t) if !has_topic(&md, t) => vec![missing_topic(vec!["topic".into()], t, &brokers)],
        _ => Vec::new(),
    }
}

/// Settings Flowgate sets itself, because the guarantees depend on them or a
/// setting of its own says it: (librdkafka name, where to say it instead).
const SOURCE_MANAGED: &[(&str, &str)] = &[
    ("bootstrap.servers", "`brokers`"),
    ("group.id", "`group`"),
    ("enable.auto.commit", "nothing: offsets are committed as records are acknowledged"),
    ("enable.auto.offset.store", "nothing: offsets are stored as records are acknowledged"),
    ("auto.offset.reset", "`start`"),
    ("session.timeout.ms", "`session_timeout`"),
    ("isolation.level", "nothing: only committed records are read"),
];
const SINK_MANAGED: &[(&str, &str)] = &[
    ("bootstrap.servers", "`brokers`"),
    ("transactional.id", "`transactional_id`"),
    ("enable.idempotence", "`idempotence`"),
    ("acks", "`acks`"),
    ("request.required.acks", "`acks`"),
    ("compression.type", "`compression`"),
    ("compression.codec", "`compression`"),
    ("linger.ms", "`linger`"),
    ("queue.buffering.max.ms", "`linger`"),
];

fn managed(properties: &crate::config::Properties, table: &[(&str, &str)]) -> Vec<Problem> {
    properties
        .0
        .keys()
        .filter_map(|k| table.iter().find(|(name, _)| name == k))
        .map(|(name, instead)| Problem {
            at: vec!["properties".into(), name.to_string()],
            message: format!("`{name}` is set by Flowgate"),
            help: Some(format!("use {instead}")),
        })
        .collect()
}

/// Offline checks of a source's settings.
pub fn check_source_settings(config: &KafkaSourceConfig) -> Vec<Problem> {
    managed(&config.properties, SOURCE_MANAGED)
}

/// Offline checks of a sink's settings.
pub fn check_sink_settings(config: &KafkaSinkConfig) -> Vec<Problem> {
    managed(&config.properties, SINK_MANAGED)
}
