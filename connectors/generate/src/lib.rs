//! `generate`: synthetic JSON records from a template, for demos, load tests and
//! benchmarks.

pub mod config;
mod connector;
pub mod source;
mod template;

pub use config::GenerateConfig;
pub use connector::register;
pub use source::GenerateSource;
pub use template::Template;
