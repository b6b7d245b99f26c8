//! The decoding stage the runtime places right after a source whose settings
//! name a format.

use std::sync::Arc;

use flowgate_avro::{Decoder, Failure, RegistryClient};
use flowgate_sdk::{Batch, Bytes, ConnectorError, OpenContext, RefusalClass, Transform, async_trait};
use serde::de::IgnoredAny;

use crate::Format;

/// Decodes every value of a batch; a value that does not decode is refused
/// with the reason, for the error policy.
pub struct Decode {
    codec: Codec,
    stage: Arc<str>,
}

enum Codec {
    Json,
    Avro(Decoder),
}

impl Decode {
    /// The stage for `format`, named `stage`; `None` for `bytes`. Avro takes
    /// the registry client from the context's resources.
    pub fn open(format: Format, ctx: &OpenContext, stage: &str) -> Result<Option<Decode>, ConnectorError> {
        let codec = match format {
            Format::Bytes => return Ok(None),
            Format::Json => Codec::Json,
            Format::Avro => Codec::Avro(Decoder::new(
                ctx.resources
                    .get::<Arc<RegistryClient>>()
                    .ok_or_else(|| ConnectorError::fatal("`format: avro` needs a registry"))?,
            )),
        };
        Ok(Some(Decode { codec, stage: stage.into() }))
    }
}

#[async_trait]
impl Transform for Decode {
    /// Every value is decoded before the batch changes: when the registry is
    /// out of reach the error is retryable and the engine applies the stage
    /// again to the same batch (schemas already read are cached), while the
    /// source, held back, keeps its session alive.
    async fn apply(&mut self, batch: &mut Batch) -> Result<(), ConnectorError> {
        let mut decoded: Vec<Result<Option<Bytes>, String>> = Vec::with_capacity(batch.records.len());
        match &self.codec {
            Codec::Json => {
                for r in &batch.records {
                    // The bytes are kept: checking spares a copy, and the
                    // value's text stays exactly as it was produced. An empty
                    // value (a Kafka tombstone) passes, as with Avro.
                    decoded.push(match serde_json::from_slice::<IgnoredAny>(&r.value) {
                        Ok(_) => Ok(None),
                        Err(_) if r.value.is_empty() => Ok(None),
                        Err(e) => Err(format!("the value is not JSON: {e}")),
                    });
                }
            }
            Codec::Avro(decoder) => {
                for r in &batch.records {
                    decoded.push(match decoder.decode(&r.value).await {
                        Ok(v) => Ok(Some(v)),
                        Err(Failure::Record(reason)) => Err(reason),
                        Err(Failure::Registry(e)) => return Err(e.into()),
                    });
                }
            }
        }
        let records = std::mem::take(&mut batch.records);
        batch.records.reserve(records.len());
        for (mut record, value) in records.into_iter().zip(decoded) {
            match value {
                Ok(Some(v)) => {
                    record.value = v;
                    batch.records.push(record);
                }
                Ok(None) => batch.records.push(record),
                Err(reason) => batch.reject(record, RefusalClass::Malformed, reason, &self.stage),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use flowgate_sdk::{Record, Role, StateStore};

    use super::*;

    #[tokio::test]
    async fn json_refuses_what_is_not_json_and_keeps_the_rest_as_it_was() {
        let ctx = OpenContext::new("p", "kafka", Role::Source, StateStore::new(std::env::temp_dir()));
        let mut d = Decode::open(Format::Json, &ctx, "decode:json").unwrap().expect("a stage for json");
        let mut batch = Batch::with_capacity(0, 3);
        for v in [&b"{\"a\": 1}"[..], b"not json", b"[1,2]", b""] {
            batch.records.push(Record::from_value(Bytes::copy_from_slice(v)));
        }
        d.apply(&mut batch).await.unwrap();
        let kept: Vec<&[u8]> = batch.records.iter().map(|r| r.value.as_ref()).collect();
        assert_eq!(kept, [&b"{\"a\": 1}"[..], b"[1,2]", b""], "a tombstone passes");
        assert_eq!(batch.rejected.len(), 1);
        assert!(batch.rejected[0].reason.starts_with("the value is not JSON"), "{}", batch.rejected[0].reason);
        assert_eq!(&*batch.rejected[0].stage, "decode:json");
        assert!(Decode::open(Format::Bytes, &ctx, "x").unwrap().is_none());
    }

    #[test]
    fn avro_without_a_registry_is_a_setup_error() {
        let ctx = OpenContext::new("p", "kafka", Role::Source, StateStore::new(std::env::temp_dir()));
        let e = Decode::open(Format::Avro, &ctx, "decode:avro").err().expect("no registry");
        assert!(e.to_string().contains("needs a registry"), "{e}");
    }
}
