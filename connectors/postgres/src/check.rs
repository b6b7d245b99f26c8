//! `flowgate validate --check` for the `postgres_cdc` source: connects and
//! checks what the pipeline will need, so that problems show before a run.

use std::time::Duration;

use flowgate_sdk::{Problem, StateStore};

use crate::catalog;
use crate::config::{PostgresCdcConfig, redact_url};

/// Connects to the database and runs the checks `run` runs before it starts
/// ([`crate::preflight`]).
pub async fn check_source(config: &PostgresCdcConfig, pipeline: &str, state: &StateStore) -> Vec<Problem> {
    {
        let connect = tokio::time::timeout(Duration::from_secs(10), catalog::connect(&config.url));
        let mut conn = match connect.await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                let cause = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
                return vec![
                    Problem::new(["url"], format!("cannot connect to {}{cause}", redact_url(&config.url)))
                        .with_help("check the host, port, database, user and password"),
                ];
            }
            Err(_) => {
                return vec![Problem::new(["url"], format!("no answer from {} in 10 s", redact_url(&config.url)))];
            }
        };
        match crate::preflight::check(&mut conn, config, pipeline, state).await {
            Ok((found, _)) => found,
            Err(e) => vec![Problem::new([] as [&str; 0], flowgate_sdk::error_chain(&e))],
        }
    }
}
