//! Database sinks through `sqlx`. SQLite for now; Postgres and MySQL join here.

pub mod config;
mod error;
mod rows;
pub mod sink;

pub use config::{SqliteSinkConfig, Synchronous};
pub use error::SqlError;
pub use sink::SqliteSink;
