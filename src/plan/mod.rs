//! From a loaded configuration to a runnable pipeline, through the connector
//! interface only: [`check`] asks each connector for the problems of its
//! settings (and, for `validate --check`, connects), [`open`] opens them.
//! Nothing here knows a connector kind.

mod check;
mod open;

pub use check::{check, check_connected};
pub use open::{OpenError, open};
