//! Postgres change data capture: a consistent snapshot of the captured tables,
//! then their row changes from a logical replication slot (pgoutput), as
//! Debezium-style change events. The replication protocol is `pg_walstream`'s;
//! catalog queries and setup go through sqlx.

mod avro;
mod catalog;
mod check;
pub mod config;
mod connector;
mod decode;
mod error;
mod event;
mod position;
mod preflight;
mod source;
mod state;
mod table;

pub use config::PostgresCdcConfig;
pub use connector::register;
pub use error::PgCdcError;
pub use source::PostgresCdcSource;
