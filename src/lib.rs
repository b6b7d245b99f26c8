//! Flowgate: declarative pipelines from a source through transforms into a sink.
//!
//! Pipeline file → [`config`] (checked, every problem at once) → [`plan`] (open
//! connectors) → [`engine`] (tasks, bounded channels, ordered acknowledgement).

pub mod config;
pub mod engine;
pub mod plan;
pub mod plugin;
pub mod registry;
pub mod run;
pub mod server;
