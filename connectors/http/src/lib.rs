//! HTTP in and out: an `http` source that takes JSON records posted to it and
//! answers each request once its records are written, and an `http` sink that
//! sends records to an endpoint as JSON lines, JSON arrays or one by one.

mod body;
pub mod config;
mod connector;
mod error;
mod server;
pub mod sink;
pub mod source;

pub use config::{Encoding, HttpMethod, HttpSinkConfig, HttpSourceConfig, TlsConfig};
pub use connector::register;
pub use error::HttpError;
pub use sink::HttpSink;
pub use source::HttpSource;
