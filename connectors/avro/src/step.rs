//! The `avro` step, and the encoder and decoder that put Avro on Kafka.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use flowgate_sdk::{Batch, Bytes, ConnectorError, Record, RefusalClass, Transform, ValueSchema, async_trait};

use crate::config::{AvroSinkConfig, AvroStepConfig, SchemaSource};
use crate::registry::{RegistryClient, RegistryError};
use crate::{Codec, wire};

/// A schema ready to use: compiled, and shared with the records it describes.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub codec: Arc<Codec>,
    pub schema: Arc<ValueSchema>,
    /// The registry id, when the schema came from a subject.
    pub id: Option<u32>,
}

impl Loaded {
    fn new(codec: Arc<Codec>, text: String, id: Option<u32>) -> Loaded {
        let name = codec.name().map(Arc::from);
        Loaded { codec, schema: ValueSchema::new(text, name), id }
    }
}

/// Reads a local schema file; the error says which file and why.
pub fn load_file(path: &std::path::Path) -> Result<Loaded, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let codec = Codec::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Loaded::new(Arc::new(codec), text, None))
}

/// The schema of a local file, read now so that a bad file fails at start;
/// `None` for a registry subject, read when it is first needed (the registry
/// may be out of reach at start).
fn load_file_now(source: Option<&SchemaSource>) -> Result<Option<Loaded>, ConnectorError> {
    source.and_then(|s| s.file.as_deref()).map(|path| load_file(path).map_err(ConnectorError::fatal)).transpose()
}

/// A registry subject's schema.
async fn load_subject(registry: &RegistryClient, source: &SchemaSource) -> Result<Loaded, RegistryError> {
    let subject = source.subject.as_deref().expect("a checked schema source has a file or a subject");
    let r = registry.version(subject, source.version.number()).await?;
    tracing::info!(subject, id = r.id, "schema read from the registry");
    Ok(Loaded::new(r.codec, r.text, Some(r.id)))
}

/// Checks every record's value against a schema; a record that does not fit
/// goes to the error policy with the path of the mismatch. Records that fit
/// carry the schema on, for an Avro sink to encode with.
pub struct AvroStep {
    source: SchemaSource,
    registry: Option<Arc<RegistryClient>>,
    /// Loaded on the first batch (a registry subject may be out of reach at start).
    loaded: Option<Loaded>,
    stage: Arc<str>,
    scratch: Vec<u8>,
}

impl AvroStep {
    /// A step whose schema file is read now, so that a bad file fails at start.
    pub fn new(
        config: AvroStepConfig,
        registry: Option<Arc<RegistryClient>>,
        stage: &str,
    ) -> Result<AvroStep, ConnectorError> {
        let loaded = load_file_now(Some(&config.schema))?;
        Ok(AvroStep { source: config.schema, registry, loaded, stage: stage.into(), scratch: Vec::new() })
    }
}

#[async_trait]
impl Transform for AvroStep {
    async fn apply(&mut self, batch: &mut Batch) -> Result<(), ConnectorError> {
        if self.loaded.is_none() {
            let registry =
                self.registry.as_deref().ok_or_else(|| ConnectorError::fatal("a schema `subject` needs a registry"))?;
            self.loaded = Some(load_subject(registry, &self.source).await?);
        }
        let Loaded { codec, schema, .. } = self.loaded.as_ref().expect("loaded above");
        let records = std::mem::take(&mut batch.records);
        batch.records.reserve(records.len());
        for mut record in records {
            self.scratch.clear();
            match codec.encode_json(&record.value, &mut self.scratch) {
                Ok(()) => {
                    record.schema = Some(Arc::clone(schema));
                    batch.records.push(record);
                }
                Err(reason) => batch.reject(record, RefusalClass::Schema, reason, &self.stage),
            }
        }
        Ok(())
    }
}

/// Why a value could not be encoded or decoded.
#[derive(Debug)]
pub enum Failure {
    /// The record itself: it goes to the error policy with this reason.
    Record(String),
    /// The registry: out of reach (retry) or refusing (stop).
    Registry(RegistryError),
}

impl From<RegistryError> for Failure {
    fn from(e: RegistryError) -> Self {
        Failure::Registry(e)
    }
}

/// Encodes JSON values to Confluent-framed Avro for a sink: with the configured
/// schema, or the one each record carries.
pub struct Encoder {
    config: AvroSinkConfig,
    registry: Arc<RegistryClient>,
    fixed: Option<Loaded>,
    /// By `ValueSchema::id`: the compiled schema, and its registry id per topic
    /// (the subject follows from the topic and the schema's name).
    known: HashMap<u64, Known>,
    buf: Vec<u8>,
}

struct Known {
    codec: Arc<Codec>,
    ids: HashMap<String, u32>,
}

impl Encoder {
    pub fn new(config: AvroSinkConfig, registry: Arc<RegistryClient>) -> Result<Encoder, ConnectorError> {
        let fixed = load_file_now(config.schema.as_ref())?;
        Ok(Encoder { config, registry, fixed, known: HashMap::new(), buf: Vec::new() })
    }

    /// The framed value of `record` for `topic`. An empty value (a tombstone)
    /// stays empty.
    pub async fn encode(&mut self, record: &Record, topic: &str) -> Result<Bytes, Failure> {
        if record.value.is_empty() {
            return Ok(Bytes::new());
        }
        if self.fixed.is_none()
            && let Some(source) = &self.config.schema
        {
            self.fixed = Some(load_subject(&self.registry, source).await?);
        }
        let (schema, pinned) = match (&self.fixed, &record.schema) {
            (Some(l), _) => (&l.schema, l.id),
            (None, Some(s)) => (s, None),
            (None, None) => {
                return Err(Failure::Record(
                    "the record has no Avro schema: set `avro.schema` on the sink, or add an `avro` step".into(),
                ));
            }
        };
        let known = match self.known.entry(schema.id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let codec = match &self.fixed {
                    Some(l) => Arc::clone(&l.codec),
                    None => Arc::new(Codec::parse(&schema.avro).map_err(|e| Failure::Record(e.to_string()))?),
                };
                e.insert(Known { codec, ids: HashMap::new() })
            }
        };
        let id = match pinned.or_else(|| known.ids.get(topic).copied()) {
            Some(id) => id,
            None => {
                let subject = self.config.subject(topic, schema.name.as_deref()).map_err(Failure::Record)?;
                let id = self.registry.id_of(&subject, &schema.avro, self.config.auto_register).await?;
                tracing::info!(%subject, id, "encoding with registered schema");
                known.ids.insert(topic.to_string(), id);
                id
            }
        };
        wire::start(&mut self.buf, id);
        known.codec.encode_json(&record.value, &mut self.buf).map_err(Failure::Record)?;
        Ok(Bytes::copy_from_slice(&self.buf))
    }
}

/// Decodes Confluent-framed Avro values to JSON, with the writer's schema
/// fetched by id (and cached).
pub struct Decoder {
    registry: Arc<RegistryClient>,
}

impl Decoder {
    pub fn new(registry: Arc<RegistryClient>) -> Decoder {
        Decoder { registry }
    }

    /// The JSON form of a framed value. An empty value (a tombstone) stays empty.
    pub async fn decode(&self, bytes: &[u8]) -> Result<Bytes, Failure> {
        if bytes.is_empty() {
            return Ok(Bytes::new());
        }
        let Some((id, avro)) = wire::split(bytes) else {
            return Err(Failure::Record(
                "the value is not in the Confluent Avro format (magic byte 0 and a schema id)".into(),
            ));
        };
        // Only an id the registry says it does not have (40403) is the record's
        // fault; any other failure, a bare 404 from a wrong URL included, waits
        // or stops the pipeline, so that no record is dropped for it.
        let codec = match self.registry.schema(id).await {
            Ok(c) => c,
            Err(e) if e.code == Some(40403) => return Err(Failure::Record(format!("cannot read schema {id}: {e}"))),
            Err(e) => return Err(Failure::Registry(e)),
        };
        let mut out = Vec::with_capacity(avro.len() * 2);
        codec.decode_json(avro, &mut out).map_err(|e| Failure::Record(format!("schema {id}: {e}")))?;
        Ok(Bytes::from(out))
    }
}
