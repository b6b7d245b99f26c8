//! `flowgate validate --check` for the `postgres_cdc` source: connects and
//! checks what the pipeline will need, so that problems show before a run.

use std::time::Duration;

use flowgate_sdk::Problem;
use sqlx::PgConnection;

use crate::catalog;
use crate::config::{PostgresCdcConfig, redact_url};

/// Connects to the database and checks the server settings, the user's
/// privileges, the tables or publication, and the slot.
pub async fn check_source(config: &PostgresCdcConfig, pipeline: &str) -> Vec<Problem> {
    {
        let connect = tokio::time::timeout(Duration::from_secs(10), catalog::connect(&config.url));
        let mut conn = match connect.await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                let cause = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
                return vec![problem(
                    Some("url"),
                    format!("cannot connect to {}{cause}", redact_url(&config.url)),
                    Some("check the host, port, database, user and password".into()),
                )];
            }
            Err(_) => {
                return vec![problem(Some("url"), format!("no answer from {} in 10 s", redact_url(&config.url)), None)];
            }
        };
        match checks(&mut conn, config, pipeline).await {
            Ok(found) => found,
            Err(e) => vec![problem(None, e.to_string(), None)],
        }
    }
}

/// A problem at `field` of the source's settings (or the settings as a whole).
fn problem(field: Option<&'static str>, message: String, help: Option<String>) -> Problem {
    Problem { at: field.into_iter().map(String::from).collect(), message, help }
}

async fn checks(
    conn: &mut PgConnection,
    config: &PostgresCdcConfig,
    pipeline: &str,
) -> Result<Vec<Problem>, sqlx::Error> {
    let mut found = Vec::new();
    if let Err(e) = catalog::check_server(conn).await {
        found.push(problem(Some("url"), e.to_string(), None));
    }
    let (user, can_replicate): (String, bool) = sqlx::query_as(
        "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !can_replicate {
        found.push(problem(
            Some("url"),
            format!("user `{user}` may not stream changes: it lacks the REPLICATION attribute"),
            Some(format!("ALTER ROLE \"{user}\" WITH REPLICATION")),
        ));
    }
    for (schema, table) in config.qualified_tables() {
        let readable: Option<bool> = sqlx::query_scalar(
            "SELECT has_table_privilege(c.oid, 'SELECT') FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
        )
        .bind(&schema)
        .bind(&table)
        .fetch_optional(&mut *conn)
        .await?;
        match readable {
            None => found.push(problem(Some("tables"), format!("table `{schema}.{table}` does not exist"), None)),
            Some(false) => found.push(problem(
                Some("tables"),
                format!("user `{user}` cannot read `{schema}.{table}`, which the snapshot needs"),
                Some(format!("GRANT SELECT ON \"{schema}\".\"{table}\" TO \"{user}\"")),
            )),
            Some(true) => {}
        }
    }
    let slot = config.slot_name(pipeline);
    let publication = config.publication_name(&slot);
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
        .bind(&publication)
        .fetch_one(&mut *conn)
        .await?;
    if !exists && config.tables.is_empty() {
        found.push(problem(Some("publication"), format!("publication `{publication}` does not exist"), None));
    }
    let lost: Option<Option<String>> =
        sqlx::query_scalar("SELECT wal_status::text FROM pg_replication_slots WHERE slot_name = $1")
            .bind(&slot)
            .fetch_optional(&mut *conn)
            .await?;
    if lost.flatten().as_deref() == Some("lost") {
        found.push(problem(
            Some("slot"),
            format!("replication slot `{slot}` is invalidated (wal_status = lost)"),
            Some(format!("SELECT pg_drop_replication_slot('{slot}'), then start over with a snapshot")),
        ));
    }
    Ok(found)
}
