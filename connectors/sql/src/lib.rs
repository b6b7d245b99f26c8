//! Database sinks through `sqlx`: Postgres, MySQL/MariaDB and SQLite, with
//! insert, upsert and change-event (CDC) modes.

mod change;
pub mod config;
mod connector;
mod dialect;
mod error;
mod names;
mod rows;
pub mod sink;

pub use config::{Columns, Delivery, Mode, SqlSinkConfig, Synchronous, UnknownFields};
pub use connector::register;
pub use error::SqlError;
pub use sink::{SqlSink, check_sink, create_sqlite_file};
