//! Avro for Flowgate: the `avro` validation step, JSON <-> Avro binary with
//! field-path reasons, the Confluent wire format, and a Schema Registry client.

pub mod codec;
pub mod config;
mod connector;
pub mod registry;
mod step;
mod time;

pub use codec::{Codec, DecodeError, Mismatch, SchemaError};
pub use config::{AvroSinkConfig, AvroStepConfig, RegistryConfig, SchemaSource};
pub use connector::register;
pub use registry::{RegistryClient, RegistryError};
pub use step::{AvroStep, Decoder, Encoder, Failure, Loaded, load_file};

/// Confluent's framing: a zero magic byte, the schema id (4 bytes, big-endian),
/// then the Avro binary value.
pub mod wire {
    pub const MAGIC: u8 = 0;

    /// Starts a framed value for schema `id` in `out` (cleared first).
    pub fn start(out: &mut Vec<u8>, id: u32) {
        out.clear();
        out.push(MAGIC);
        out.extend_from_slice(&id.to_be_bytes());
    }

    /// The schema id and the Avro bytes of a framed value.
    pub fn split(bytes: &[u8]) -> Option<(u32, &[u8])> {
        match bytes {
            [MAGIC, a, b, c, d, rest @ ..] => Some((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
            _ => None,
        }
    }
}
