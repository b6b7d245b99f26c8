//! Value formats: how the values of a byte-carrying source are decoded and
//! those of a byte-carrying sink encoded (JSON, Avro with a schema registry;
//! Protobuf and JSON Schema fit the same two traits).
//!
//! A source or sink only says which format its settings name
//! ([`SourceConnector::format`](crate::SourceConnector::format)); the format
//! crate does the rest. Decoding is a stage of its own that the runtime places
//! right after the source, so a value that does not decode is refused like any
//! record, and a registry out of reach is retried by the engine's generic
//! transform path while the source keeps its session alive
//! ([`Source::keep_alive`](crate::Source::keep_alive)). Encoding happens in the
//! sink, per record, because it depends on where the record goes (a subject is
//! named after the Kafka topic a template picks) and because the sink's own
//! templates (`${value.id}` in a key) read the value before it is encoded.

use async_trait::async_trait;
use bytes::Bytes;

use crate::{ConnectorError, OpenContext, Problem, Record, Stage, Transform};

/// A format named by a source's or sink's settings.
#[async_trait]
pub trait ValueFormat: Send + Sync {
    /// The format's name in stage names and messages (`avro`).
    fn name(&self) -> &'static str;

    /// Problems of the format's settings, relative to the connector's settings
    /// (`["avro", "schema"]`), found without connecting to anything.
    fn problems(&self, _stage: &Stage<'_>) -> Vec<Problem> {
        Vec::new()
    }

    /// `validate --check`: what the format's services say (a subject exists,
    /// a schema is compatible).
    async fn check(&self, _ctx: &OpenContext, _stage: &Stage<'_>) -> Vec<Problem> {
        Vec::new()
    }

    /// Whether it needs the schema registry client in the resources.
    fn uses_registry(&self) -> bool {
        false
    }

    /// The stage that decodes a source's values, named `stage`; `None` when
    /// values pass as they are.
    fn decoder(&self, _ctx: &OpenContext, _stage: &str) -> Result<Option<Box<dyn Transform>>, ConnectorError> {
        Ok(None)
    }

    /// What a sink encodes values with; `None` when they are written as they are.
    fn encoder(&self, _ctx: &OpenContext) -> Result<Option<Box<dyn ValueEncoder>>, ConnectorError> {
        Ok(None)
    }
}

/// Encodes one record's value for the place it is written to.
#[async_trait]
pub trait ValueEncoder: Send + Sync {
    /// The bytes to write for `record`; `destination` names where it goes (a
    /// Kafka topic), for formats that name schemas after it.
    async fn encode(&mut self, record: &Record, destination: &str) -> Result<Bytes, EncodeError>;
}

/// Why a value could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The record's fault (it does not fit the schema): the sink refuses it
    /// with this reason, for the error policy.
    #[error("{0}")]
    Record(String),
    /// A service the format needs (the schema registry): the sink fails the
    /// write with it, retried when it is retryable.
    #[error(transparent)]
    Service(#[from] ConnectorError),
}
