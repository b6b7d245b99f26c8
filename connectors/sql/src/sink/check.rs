//! What `check` verifies before a record arrives: the database answers, and a
//! fixed table exists (or may be created) with the privileges its mode needs.

use flowgate_sdk::{Problem, Sink};

use super::SqlSink;
use crate::config::{Delivery, Mode, SqlSinkConfig};
use crate::dialect::{Dialect, sqlite_path};
use crate::error::SqlError;

/// A problem at `field` of the sink's settings (or the settings as a whole).
fn problem(field: Option<&str>, message: String, help: Option<String>) -> Problem {
    Problem { at: field.into_iter().map(String::from).collect(), message, help }
}

/// Connects as the sink would and checks what can be checked before a record
/// arrives: the server answers and takes the credentials (within 10 s), and a
/// fixed table exists (or may be created) with the privileges its mode needs.
pub async fn check_sink(config: &SqlSinkConfig, pipeline: &str) -> Vec<Problem> {
    let url = flowgate_sdk::redact_url(&config.url);
    // Nothing is created by a check, not even a SQLite file or the positions table.
    if let Some(path) = sqlite_path(&config.url)
        && !path.exists()
    {
        return match config.create_table {
            true => Vec::new(),
            false => vec![problem(
                Some("url"),
                format!("the SQLite database {} does not exist", path.display()),
                Some("check the path, or set `create_table: true` to have it created".into()),
            )],
        };
    }
    let probe = SqlSinkConfig { delivery: Delivery::AtLeastOnce, ..config.clone() };
    let opened = tokio::time::timeout(std::time::Duration::from_secs(10), SqlSink::open(probe, pipeline)).await;
    let mut sink = match opened {
        Err(_) => return vec![problem(Some("url"), format!("no answer from {url} in 10 s"), None)],
        Ok(Err(e)) => {
            let cause = match &e {
                SqlError::Connect { source, .. } => format!(": {source}"),
                _ => String::new(),
            };
            return vec![problem(Some("url"), format!("cannot connect to {url}{cause}"), None)];
        }
        Ok(Ok(sink)) => sink,
    };
    let mut problems = Vec::new();
    if let Some(table) = config.table.fixed() {
        match sink.describe(table).await {
            Ok(None) if !config.create_table => problems.push(problem(
                Some("table"),
                format!("table {table} does not exist in {url}"),
                Some("create it, or set `create_table: true`".into()),
            )),
            Ok(Some(_)) if sink.dialect == Dialect::Postgres => {
                let needs = match config.mode {
                    Mode::Insert => "INSERT",
                    Mode::Upsert => "INSERT, UPDATE",
                    Mode::Cdc => "INSERT, UPDATE, DELETE",
                };
                let sql = "SELECT CAST(has_table_privilege(to_regclass($1), $2) AS text)";
                let conn = sink.conn.as_mut().expect("opened");
                let quoted = Dialect::Postgres.quote_table(table);
                for privilege in needs.split(", ") {
                    let granted = conn.texts(sql, &[&quoted, privilege]).await;
                    if !granted.is_ok_and(|rows| rows.first().is_some_and(|r| r.first().is_some_and(|g| g == "true"))) {
                        problems.push(problem(
                            Some("table"),
                            format!("the user may not {privilege} into table {table} (`mode` needs {needs})"),
                            None,
                        ));
                    }
                }
            }
            Ok(_) => {}
            Err(e) => problems.push(problem(Some("table"), format!("cannot read table {table}: {e}"), None)),
        }
    }
    let _ = sink.close().await;
    problems
}
