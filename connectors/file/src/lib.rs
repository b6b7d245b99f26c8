//! Files and standard streams: JSON-lines sources (`file`, `stdin`) and sinks
//! (`file`, `stdout`, `null`).

pub mod config;
mod connector;
mod error;
mod lines;
pub mod sink;
pub mod source;

pub use config::{
    FileSinkConfig, FileSourceConfig, LineFormat, NullSinkConfig, OutputFormat, StdinConfig, StdoutSinkConfig,
};
pub use connector::register;
pub use error::FileError;
pub use sink::{FileSink, NullSink, StdoutSink};
pub use source::{FileSource, StdinSource};
