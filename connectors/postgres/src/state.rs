//! What a pipeline has done with its slot, kept in the source database beside
//! the slot (`<state_schema>.cdc_slots`, one row per slot), so that a restart
//! from any directory or machine continues correctly: a slot that disappears
//! after it was used means lost changes, and a snapshot that did not finish
//! must not be mistaken for one that did.

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Row};

use crate::catalog::quote_ident;
use crate::error::PgCdcError;

/// The record of one slot. (Its serde form is that of the state-directory
/// file of release 0.1, read once when the database has no row yet.)
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotState {
    /// The initial snapshot was written in full (or none was asked for).
    pub snapshot_done: bool,
    /// Flowgate created the publication (an `initial_only` pipeline drops it
    /// when done).
    #[serde(default)]
    pub publication_created: bool,
}

fn table(schema: &str) -> String {
    format!("{}.cdc_slots", quote_ident(schema))
}

fn snapshots_table(schema: &str) -> String {
    format!("{}.cdc_snapshots", quote_ident(schema))
}

/// A table still to be snapshotted incrementally, from after `after` (its
/// key values, as text) or from the start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Todo {
    pub schema: String,
    pub table: String,
    pub after: Option<Vec<String>>,
}

/// The record of `slot`; `None` when there is none (or no table yet).
pub async fn load(conn: &mut PgConnection, schema: &str, slot: &str) -> Result<Option<SlotState>, PgCdcError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table(schema))
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| PgCdcError::db("cannot look for the source's state", e))?;
    if !exists {
        return Ok(None);
    }
    // The table name is quoted by quote_ident.
    let sql = format!("SELECT snapshot_done, publication_created FROM {} WHERE slot = $1", table(schema));
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(slot)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| PgCdcError::db("cannot read the source's state", e))?;
    Ok(row.map(|r| SlotState { snapshot_done: r.get(0), publication_created: r.get(1) }))
}

/// Creates the schema and table when missing. Concurrent creators (pipelines
/// started together) may collide on the catalog: the loser finds them made.
pub async fn ensure(conn: &mut PgConnection, schema: &str) -> Result<(), PgCdcError> {
    // Looked up first: `IF NOT EXISTS` on an existing one sends a notice,
    // which would be logged on every save.
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL")
        .bind(table(schema))
        .bind(snapshots_table(schema))
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| PgCdcError::db("cannot look for the source's state", e))?;
    if exists {
        return Ok(());
    }
    let statements = [
        format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema)),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (slot text PRIMARY KEY, snapshot_done boolean NOT NULL, \
             publication_created boolean NOT NULL DEFAULT false, updated_at timestamptz NOT NULL DEFAULT now())",
            table(schema)
        ),
        // Incremental snapshots: per table, the last key of the last chunk
        // acknowledged.
        format!(
            "CREATE TABLE IF NOT EXISTS {} (slot text NOT NULL, table_schema text NOT NULL, table_name text NOT NULL, \
             after text[], done boolean NOT NULL DEFAULT false, updated_at timestamptz NOT NULL DEFAULT now(), \
             PRIMARY KEY (slot, table_schema, table_name))",
            snapshots_table(schema)
        ),
    ];
    for sql in statements {
        // Identifiers are quoted by quote_ident; DDL takes no bind parameters.
        match sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *conn).await {
            Ok(_) => {}
            // 23505 on a catalog index, 42P06/42P07 duplicate schema/table.
            Err(sqlx::Error::Database(d)) if matches!(d.code().as_deref(), Some("23505" | "42P06" | "42P07")) => {}
            Err(e) => {
                return Err(PgCdcError::db(
                    format!(
                        "cannot create the source's state table {} (the user needs CREATE on the database, or \
                         create the schema for it beforehand)",
                        table(schema)
                    ),
                    e,
                ));
            }
        }
    }
    Ok(())
}

pub async fn save(conn: &mut PgConnection, schema: &str, slot: &str, state: &SlotState) -> Result<(), PgCdcError> {
    ensure(conn, schema).await?;
    let sql = format!(
        "INSERT INTO {} (slot, snapshot_done, publication_created) VALUES ($1, $2, $3) \
         ON CONFLICT (slot) DO UPDATE SET snapshot_done = EXCLUDED.snapshot_done, \
         publication_created = EXCLUDED.publication_created, updated_at = now()",
        table(schema)
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(slot)
        .bind(state.snapshot_done)
        .bind(state.publication_created)
        .execute(&mut *conn)
        .await
        .map_err(|e| PgCdcError::db("cannot save the source's state", e))?;
    Ok(())
}

pub async fn delete(conn: &mut PgConnection, schema: &str, slot: &str) -> Result<(), PgCdcError> {
    if load(conn, schema, slot).await?.is_none() {
        return Ok(());
    }
    let sql = format!("DELETE FROM {} WHERE slot = $1", table(schema));
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(slot)
        .execute(&mut *conn)
        .await
        .map_err(|e| PgCdcError::db("cannot delete the source's state", e))?;
    Ok(())
}

/// The statement that forgets `slot`'s record, for messages that ask for it.
pub fn forget(schema: &str, slot: &str) -> String {
    format!("DELETE FROM {} WHERE slot = '{slot}'", table(schema))
}

/// The tables of `slot` whose incremental snapshot is not done, in the order
/// they were queued.
pub async fn pending_snapshots(conn: &mut PgConnection, schema: &str, slot: &str) -> Result<Vec<Todo>, PgCdcError> {
    ensure(conn, schema).await?;
    let sql = format!(
        "SELECT table_schema, table_name, after FROM {} WHERE slot = $1 AND NOT done ORDER BY updated_at, table_schema, \
         table_name",
        snapshots_table(schema)
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(slot)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| PgCdcError::db("cannot read the snapshots in progress", e))?;
    Ok(rows.iter().map(|r| Todo { schema: r.get(0), table: r.get(1), after: r.get(2) }).collect())
}

/// The schemas and the names of `tables`, as the two arrays `unnest` pairs up.
fn columns(tables: &[(String, String)]) -> (Vec<&str>, Vec<&str>) {
    tables.iter().map(|(s, t)| (s.as_str(), t.as_str())).unzip()
}

/// Queues incremental snapshots of `tables` (again from the start, for one
/// queued before).
pub async fn queue_snapshots(
    conn: &mut PgConnection,
    schema: &str,
    slot: &str,
    tables: &[(String, String)],
) -> Result<(), PgCdcError> {
    ensure(conn, schema).await?;
    let (schemas, names) = columns(tables);
    let sql = format!(
        "INSERT INTO {} (slot, table_schema, table_name) SELECT $1, s, t FROM unnest($2::text[], $3::text[]) AS u(s, t) \
         ON CONFLICT (slot, table_schema, table_name) DO UPDATE SET after = NULL, done = false, updated_at = now()",
        snapshots_table(schema)
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(slot)
        .bind(schemas)
        .bind(names)
        .execute(&mut *conn)
        .await
        .map_err(|e| PgCdcError::db("cannot queue the snapshots", e))?;
    Ok(())
}

/// Records a chunk as acknowledged: the table's snapshot continues after it.
/// `updated_at` stays: it is the queue's order (`pending_snapshots`), which
/// progress must not change.
pub async fn save_chunk(
    conn: &mut PgConnection,
    schema: &str,
    slot: &str,
    todo: &Todo,
    complete: bool,
) -> Result<(), PgCdcError> {
    let sql = format!(
        "UPDATE {} SET after = $4, done = $5, updated_at = updated_at WHERE slot = $1 AND table_schema = $2 \
         AND table_name = $3",
        snapshots_table(schema)
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(slot)
        .bind(&todo.schema)
        .bind(&todo.table)
        .bind(&todo.after)
        .bind(complete)
        .execute(&mut *conn)
        .await
        .map_err(|e| PgCdcError::db("cannot save the snapshot's progress", e))?;
    Ok(())
}

/// Forgets the incremental snapshots of `slot`: of `tables`, or all of them.
pub async fn forget_snapshots(
    conn: &mut PgConnection,
    schema: &str,
    slot: &str,
    tables: Option<&[(String, String)]>,
) -> Result<(), PgCdcError> {
    ensure(conn, schema).await?;
    let (schemas, names) = tables.map(columns).unzip();
    let sql = format!(
        "DELETE FROM {} WHERE slot = $1 AND ($2::text[] IS NULL \
         OR (table_schema, table_name) IN (SELECT * FROM unnest($2::text[], $3::text[])))",
        snapshots_table(schema)
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(slot)
        .bind(schemas)
        .bind(names)
        .execute(&mut *conn)
        .await
        .map_err(|e| PgCdcError::db("cannot forget the snapshots", e))?;
    Ok(())
}
