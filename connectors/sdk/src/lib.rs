//! The contract every Flowgate connector and transform implements.
//!
//! Data moves through a pipeline in [`Batch`]es of [`Record`]s. Each batch carries
//! an [`Ack`] handle; a source learns through the engine which batches are durably
//! handled (written by the sink or the dead-letter sink) and only then advances its
//! position. See `docs/guarantees.md` for what that means end to end.

mod ack;
mod batch;
mod config;
mod connector;
mod error;
pub mod files;
mod format;
pub mod health;
mod record;
mod secret;
mod state;
mod template;
mod traits;

pub use ack::{Ack, AckTracker, Done, Watermark};
pub use batch::{Batch, LateReject, LateRejects, PendingPositions, Position, Prepared, RefusalClass, Rejected};
pub use config::{ByteSize, HumanDuration};
pub use connector::{
    AsAny, Configured, Entry, OpenContext, PipelineView, Problem, Registry, Resources, Role, SinkConnector,
    SourceConnector, Stage, TransformConnector,
};
pub use error::{ConnectorError, ErrorKind, error_chain};
pub use format::{EncodeError, ValueEncoder, ValueFormat};
pub use record::{Header, MetaValue, Metadata, Record, ValueSchema, bytes_json};
pub use secret::{Secret, redact_url, scrub, url_secret_spans, url_secrets};
pub use state::StateStore;
pub use template::RecordTemplate;
pub use traits::{DeliveryMode, Prepare, Read, Sink, Source, Transform};
pub use {async_trait::async_trait, bytes::Bytes, erased_serde, schemars};

/// Runs `f`, which blocks its thread (a synchronous client call, a plugin
/// running up to its deadline), without stalling the other tasks of a
/// multi-thread runtime's worker: they move to another worker meanwhile.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
