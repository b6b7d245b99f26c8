//! Database sinks through `sqlx`: Postgres, MySQL/MariaDB and SQLite, with
//! insert, upsert and change-event (CDC) modes.

mod change;
pub mod config;
mod dialect;
mod error;
mod names;
mod rows;
pub mod sink;

pub use config::{Columns, Delivery, Mode, SqlSinkConfig, Synchronous, UnknownFields};
pub use error::SqlError;
pub use sink::{CheckProblem, SqlSink, check_sink, create_sqlite_file};
