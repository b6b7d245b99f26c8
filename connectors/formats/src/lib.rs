//! Value formats of byte-carrying sources and sinks (Kafka, the HTTP sink):
//! `bytes` (as they are), `json` and `avro` (Confluent-framed, schemas in the
//! pipeline's registry). A connector embeds [`Format`] (and, for a sink,
//! [`AvroSinkConfig`] under `avro`) in its settings and hands them to
//! [`Formatting`], which implements the SDK's [`ValueFormat`]: the runtime
//! checks it and places its decoding stage; a sink opens its encoder.
//!
//! A new format (Protobuf, JSON Schema) is a variant here, a decoder and an
//! encoder; no connector changes.

mod avro;
mod decode;
mod encode;

use flowgate_sdk::{
    ConnectorError, OpenContext, Problem, Role, Stage, Transform, ValueEncoder, ValueFormat, async_trait,
};
use schemars::JsonSchema;
use serde::Deserialize;

pub use decode::Decode;
pub use encode::{AvroEncoder, JsonEncoder};
pub use flowgate_avro::AvroSinkConfig;

/// How record values are read from and written to bytes.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// As they are (default): the bytes of the record's value.
    #[default]
    Bytes,
    /// JSON documents. A source refuses a value that is not one (it goes to
    /// the error policy at once, not in a later step); so does a sink. An
    /// empty value (a Kafka tombstone) passes.
    Json,
    /// Avro in the Confluent wire format (magic byte, schema id, Avro binary),
    /// with schemas in the pipeline's `registry`. A source decodes values to
    /// JSON with the writer's schema; a sink encodes JSON values.
    Avro,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Bytes => "bytes",
            Format::Json => "json",
            Format::Avro => "avro",
        }
    }
}

/// A connector's format settings, as the runtime and the connector use them.
#[derive(Clone, Copy, Debug)]
pub struct Formatting<'a> {
    pub format: Format,
    /// A sink's `avro` settings (schema, subject naming, registration).
    pub avro: Option<&'a AvroSinkConfig>,
    /// Where a sink writes every record, when that is one fixed name (a
    /// Kafka topic without a template): `validate --check` checks the
    /// subject named after it.
    pub destination: Option<&'a str>,
}

impl<'a> Formatting<'a> {
    /// The settings of a source: it has no `avro` block (the writer's schema
    /// comes with each value).
    pub fn source(format: Format) -> Self {
        Formatting { format, avro: None, destination: None }
    }

    pub fn sink(format: Format, avro: Option<&'a AvroSinkConfig>, destination: Option<&'a str>) -> Self {
        Formatting { format, avro, destination }
    }

    /// For a connector's `format()`: `None` for `bytes` without settings,
    /// which needs neither a stage nor a check.
    pub fn boxed(self) -> Option<Box<dyn ValueFormat + 'a>> {
        (self.format != Format::Bytes || self.avro.is_some()).then(|| Box::new(self) as Box<dyn ValueFormat + 'a>)
    }

    /// The sink's encoder (see [`ValueFormat::encoder`]), for sinks that hold
    /// it by its own type.
    pub fn open_encoder(&self, ctx: &OpenContext) -> Result<Option<Box<dyn ValueEncoder>>, ConnectorError> {
        match self.format {
            Format::Bytes => Ok(None),
            Format::Json => Ok(Some(Box::new(JsonEncoder))),
            Format::Avro => Ok(Some(Box::new(AvroEncoder::open(self.avro.cloned().unwrap_or_default(), ctx)?))),
        }
    }
}

#[async_trait]
impl ValueFormat for Formatting<'_> {
    fn name(&self) -> &'static str {
        self.format.name()
    }

    fn problems(&self, stage: &Stage<'_>) -> Vec<Problem> {
        if stage.role == Role::DeadLetter && self.format == Format::Avro {
            return vec![
                Problem::new(["format"], "a dead-letter sink cannot be `format: avro`")
                    .with_help("dead letters are JSON envelopes around any record; remove `format`"),
            ];
        }
        match (self.format, self.avro) {
            (Format::Avro, avro) => avro::problems(avro, stage),
            (_, Some(_)) => vec![
                Problem::new(["avro"], "`avro` settings are set, but `format` is not `avro`")
                    .with_help("set `format: avro`, or remove `avro`"),
            ],
            (_, None) => Vec::new(),
        }
    }

    async fn check(&self, ctx: &OpenContext, stage: &Stage<'_>) -> Vec<Problem> {
        match self.format {
            Format::Avro if stage.role == Role::Sink => avro::check(self.avro, self.destination, ctx, stage).await,
            _ => Vec::new(),
        }
    }

    fn uses_registry(&self) -> bool {
        self.format == Format::Avro
    }

    fn decoder(&self, ctx: &OpenContext, stage: &str) -> Result<Option<Box<dyn Transform>>, ConnectorError> {
        Ok(Decode::open(self.format, ctx, stage)?.map(|d| Box::new(d) as Box<dyn Transform>))
    }

    fn encoder(&self, ctx: &OpenContext) -> Result<Option<Box<dyn ValueEncoder>>, ConnectorError> {
        self.open_encoder(ctx)
    }
}
