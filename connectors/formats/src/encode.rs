//! The encoders a sink writes values with.

use std::sync::Arc;

use flowgate_avro::{AvroSinkConfig, Encoder, Failure, RegistryClient};
use flowgate_sdk::{Bytes, ConnectorError, EncodeError, OpenContext, Record, ValueEncoder, async_trait};
use serde::de::IgnoredAny;

/// Writes JSON values as they are, and refuses any other (an empty value, a
/// Kafka tombstone, passes).
pub struct JsonEncoder;

#[async_trait]
impl ValueEncoder for JsonEncoder {
    async fn encode(&mut self, record: &Record, _: &str) -> Result<Bytes, EncodeError> {
        if record.value.is_empty() {
            return Ok(Bytes::new());
        }
        match serde_json::from_slice::<IgnoredAny>(&record.value) {
            Ok(_) => Ok(record.value.clone()),
            Err(e) => Err(EncodeError::Record(format!("the value is not JSON: {e}"))),
        }
    }
}

/// Encodes JSON values to Confluent-framed Avro: with the configured schema,
/// or the one each record carries; subjects are named after the destination.
pub struct AvroEncoder(Encoder);

impl AvroEncoder {
    /// An encoder whose schema file is read now, so that a bad file fails at
    /// start; it takes the registry client from the context's resources.
    pub fn open(config: AvroSinkConfig, ctx: &OpenContext) -> Result<AvroEncoder, ConnectorError> {
        let registry = ctx
            .resources
            .get::<Arc<RegistryClient>>()
            .ok_or_else(|| ConnectorError::fatal("`format: avro` needs a registry"))?;
        Ok(AvroEncoder(Encoder::new(config, registry)?))
    }
}

#[async_trait]
impl ValueEncoder for AvroEncoder {
    async fn encode(&mut self, record: &Record, destination: &str) -> Result<Bytes, EncodeError> {
        match self.0.encode(record, destination).await {
            Ok(b) => Ok(b),
            Err(Failure::Record(reason)) => Err(EncodeError::Record(reason)),
            // Out of reach: the write fails and is retried; refused (an
            // incompatible schema): the pipeline stops.
            Err(Failure::Registry(e)) => Err(EncodeError::Service(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn json_refuses_what_is_not_json() {
        let mut e = JsonEncoder;
        assert_eq!(e.encode(&Record::from_value("{\"a\":1}"), "t").await.unwrap(), "{\"a\":1}");
        assert_eq!(e.encode(&Record::from_value(""), "t").await.unwrap(), "", "a tombstone passes");
        let refused = e.encode(&Record::from_value("a,b"), "t").await.unwrap_err();
        assert!(matches!(&refused, EncodeError::Record(r) if r.starts_with("the value is not JSON")), "{refused}");
    }
}
