//! Database sinks through `sqlx`: Postgres, MySQL/MariaDB and SQLite, with
//! insert, upsert and change-event (CDC) modes.

mod change;
pub mod config;
mod dialect;
mod error;
mod rows;
pub mod sink;

pub use config::{Columns, Delivery, Mode, SqlSinkConfig, Synchronous};
pub use error::SqlError;
pub use sink::SqlSink;
