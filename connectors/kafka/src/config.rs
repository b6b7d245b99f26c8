//! The YAML contract of the Kafka source and sink.

use std::collections::BTreeMap;
use std::fmt;

use flowgate_formats::{AvroSinkConfig, Format};
use flowgate_sdk::{HumanDuration, RecordTemplate};
use schemars::JsonSchema;
use serde::Deserialize;

/// Broker addresses: `host:port`, or a list of them.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(untagged)]
pub enum Brokers {
    One(String),
    Many(Vec<String>),
}

impl Brokers {
    /// The `bootstrap.servers` form.
    pub fn bootstrap(&self) -> String {
        match self {
            Brokers::One(s) => s.clone(),
            Brokers::Many(v) => v.join(","),
        }
    }
}

/// librdkafka settings passed through as they are (`security.protocol`,
/// `sasl.username`, `ssl.ca.location`, ...). Values may hold secrets, so their
/// debug form shows only the names.
#[derive(Clone, Default, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct Properties(pub BTreeMap<String, String>);

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Where a consumer group with no committed offset starts reading a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    Earliest,
    Latest,
    /// The first record at or after this time (milliseconds since the epoch).
    Timestamp(i64),
}

impl<'de> Deserialize<'de> for Start {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "earliest" => Ok(Start::Earliest),
            "latest" => Ok(Start::Latest),
            other => humantime::parse_rfc3339_weak(other)
                .map(|t| {
                    let ms = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
                    Start::Timestamp(ms)
                })
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "`{other}` is not `earliest`, `latest` or a time such as `2026-01-31T12:00:00Z`"
                    ))
                }),
        }
    }
}

impl JsonSchema for Start {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "KafkaStart".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "kafka-start",
            "pattern": r"^(earliest|latest|[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?)?Z?)$",
            "description": "`earliest`, `latest`, or a time such as `2026-01-31T12:00:00Z`.",
        })
    }
}

fn default_start() -> Start {
    Start::Earliest
}

fn default_session_timeout() -> HumanDuration {
    HumanDuration::from_millis(10_000)
}

/// Reads topics as a member of a consumer group.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers: `host:port` or a list.
    pub brokers: Brokers,
    /// Topics to read. An entry starting with `^` is a regular expression matched
    /// against all topic names (new matching topics are picked up).
    #[schemars(length(min = 1))]
    pub topics: Vec<String>,
    /// The consumer group. Processes running the same pipeline with the same group
    /// share the partitions; offsets are committed for it.
    pub group: String,
    /// Where to begin on partitions the group has no committed offset for:
    /// `earliest` (default), `latest`, or a time such as `2026-01-31T12:00:00Z`.
    #[serde(default = "default_start")]
    pub start: Start,
    /// How long the group waits for a silent member before giving its partitions
    /// to the others (default 10s).
    #[serde(default = "default_session_timeout")]
    pub session_timeout: HumanDuration,
    /// `bytes` (default), `json` (values that are not JSON are refused) or
    /// `avro`: Confluent-framed Avro values, decoded to JSON with the writer's
    /// schema from the registry.
    #[serde(default)]
    pub format: Format,
    /// Further librdkafka consumer settings, such as `security.protocol`,
    /// `sasl.mechanism`, `sasl.username`, `sasl.password: ${KAFKA_PASSWORD}`.
    #[serde(default)]
    pub properties: Properties,
}

/// Compression of produced batches.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Acknowledgements a produce request waits for.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Acks {
    /// Every in-sync replica (default; required for idempotence).
    #[default]
    All,
    /// The partition leader only.
    One,
}

/// What the pipeline guarantees from a Kafka source to this sink.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Records may be written twice after a crash, never lost (default).
    #[default]
    AtLeastOnce,
    /// Records and the source's consumer offsets are committed in one Kafka
    /// transaction: `read_committed` readers see each input once. Needs a `kafka`
    /// source.
    ExactlyOnce,
}

fn default_linger() -> HumanDuration {
    HumanDuration::from_millis(5)
}

fn yes() -> bool {
    true
}

/// Writes records to Kafka.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers: `host:port` or a list.
    pub brokers: Brokers,
    /// The topic: fixed, or a template filled from each record such as
    /// `orders.${meta.table}` or `events.${value.region}`.
    pub topic: RecordTemplate,
    /// The key: the record's own key when unset, or a template such as
    /// `${value.customer_id}`.
    #[serde(default)]
    pub key: Option<RecordTemplate>,
    /// `bytes` (default: values as they are), `json` (values that are not
    /// JSON are refused) or `avro`: JSON values encoded to Confluent-framed
    /// Avro (see `avro`).
    #[serde(default)]
    pub format: Format,
    /// With `format: avro`: the schema (default: the one records carry, from an
    /// `avro` step or a `postgres_cdc` source), subject naming and registration.
    #[serde(default)]
    pub avro: Option<AvroSinkConfig>,
    /// Keep the record's headers (default true).
    #[serde(default = "yes")]
    pub headers: bool,
    /// `all` (default) or `one`.
    #[serde(default)]
    pub acks: Acks,
    /// Idempotent producer: retries never duplicate or reorder (default true).
    #[serde(default = "yes")]
    pub idempotence: bool,
    /// `none` (default), `gzip`, `snappy`, `lz4` or `zstd`.
    #[serde(default)]
    pub compression: Compression,
    /// How long to wait to fill a produce batch (default 5ms).
    #[serde(default = "default_linger")]
    pub linger: HumanDuration,
    /// `at_least_once` (default) or `exactly_once`.
    #[serde(default)]
    pub delivery: Delivery,
    /// With `exactly_once`: the producer's `transactional.id` (default
    /// `flowgate-<pipeline>`). It must be stable across restarts of one process and
    /// differ between processes sharing the work, e.g. `orders-${INSTANCE}`.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// Further librdkafka producer settings, such as `security.protocol` or
    /// `message.max.bytes`.
    #[serde(default)]
    pub properties: Properties,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_takes_names_and_times() {
        let s: Start = serde_json::from_str("\"latest\"").unwrap();
        assert_eq!(s, Start::Latest);
        let s: Start = serde_json::from_str("\"2026-01-31T12:00:00Z\"").unwrap();
        assert_eq!(s, Start::Timestamp(1_769_860_800_000));
        let e = serde_json::from_str::<Start>("\"yesterday\"").unwrap_err().to_string();
        assert!(e.contains("not `earliest`"), "{e}");
    }

    #[test]
    fn property_values_stay_out_of_debug_output() {
        let p = Properties([("sasl.password".to_string(), "hunter2".to_string())].into());
        let shown = format!("{p:?}");
        assert!(shown.contains("sasl.password") && !shown.contains("hunter2"), "{shown}");
    }
}
