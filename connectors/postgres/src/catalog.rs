//! Setup and catalog queries over an ordinary connection (sqlx): server
//! settings, the publication, the slot's state, key columns.

use std::collections::{HashMap, HashSet};

use sqlx::{Connection, PgConnection, Row};

use crate::error::PgCdcError;

pub async fn connect(url: &str) -> Result<PgConnection, PgCdcError> {
    PgConnection::connect(url).await.map_err(|e| PgCdcError::db("cannot connect to Postgres", e))
}

/// A connection whose values print as the replication stream's do (UTC ISO
/// timestamps): chunk rows are compared with streamed rows by key text.
pub async fn connect_as_stream(url: &str) -> Result<PgConnection, PgCdcError> {
    let mut conn = connect(url).await?;
    sqlx::query(
        "SELECT set_config('TimeZone', 'UTC', false), set_config('DateStyle', 'ISO', false),
                set_config('IntervalStyle', 'postgres', false), set_config('bytea_output', 'hex', false),
                set_config('standard_conforming_strings', 'on', false)",
    )
    .execute(&mut conn)
    .await
    .map_err(|e| PgCdcError::db("cannot set up the snapshot session", e))?;
    Ok(conn)
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The database's name, after checking that it can do logical replication.
pub async fn check_server(conn: &mut PgConnection) -> Result<String, PgCdcError> {
    let row = sqlx::query("SELECT current_setting('wal_level'), current_database()")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| PgCdcError::db("cannot read the server's settings", e))?;
    let wal_level: String = row.get(0);
    if wal_level != "logical" {
        return Err(PgCdcError::Setup(format!(
            "the server runs with wal_level = {wal_level}; change data capture needs `wal_level = logical` \
             in postgresql.conf (or `ALTER SYSTEM SET wal_level = logical`) and a restart"
        )));
    }
    Ok(row.get(1))
}

/// A publication as the checks need it.
pub struct Publication {
    /// The tables it publishes changes under: the partitioned tables
    /// themselves with `publish_via_partition_root`, else their partitions.
    pub tables: Vec<(String, String)>,
    pub via_root: bool,
    /// Whether it publishes UPDATE or DELETE, which need a replica identity.
    pub updates_or_deletes: bool,
    /// Whether it holds a partitioned table or a partition.
    pub has_partitions: bool,
}

/// The publication `name`, or `None` when it does not exist.
pub async fn publication(conn: &mut PgConnection, name: &str) -> Result<Option<Publication>, PgCdcError> {
    let Some(row) = sqlx::query(
        "SELECT p.pubviaroot, p.pubupdate OR p.pubdelete,
                EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_class c ON c.oid = r.prrelid
                         WHERE r.prpubid = p.oid AND (c.relkind = 'p' OR c.relispartition))
           FROM pg_publication p WHERE p.pubname = $1",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| PgCdcError::db("cannot read the publications", e))?
    else {
        return Ok(None);
    };
    let tables = published_tables(conn, name).await?.unwrap_or_default();
    Ok(Some(Publication { tables, via_root: row.get(0), updates_or_deletes: row.get(1), has_partitions: row.get(2) }))
}

/// `CREATE PUBLICATION` for `tables`, publishing the changes of partitioned
/// tables under their own names (`publish_via_partition_root`): so do
/// partitions attached later. False when another session created it first.
pub async fn create_publication(
    conn: &mut PgConnection,
    name: &str,
    tables: &[(String, String)],
) -> Result<bool, PgCdcError> {
    for (schema, table) in tables {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = $2)")
                .bind(schema)
                .bind(table)
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| PgCdcError::db("cannot look the tables up", e))?;
        if !exists {
            return Err(PgCdcError::Setup(format!("table `{schema}.{table}` (in `tables`) does not exist")));
        }
    }
    let list: Vec<String> = tables.iter().map(|(s, t)| format!("{}.{}", quote_ident(s), quote_ident(t))).collect();
    let sql = format!(
        "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)",
        quote_ident(name),
        list.join(", ")
    );
    // Identifiers are quoted by quote_ident; DDL takes no bind parameters.
    match sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *conn).await {
        Ok(_) => {
            tracing::info!(publication = name, tables = %list.join(", "), "created the publication");
            Ok(true)
        }
        // 42710 duplicate_object, or 23505 on pg_publication's name index when
        // both sessions passed the catalog check before either committed.
        Err(sqlx::Error::Database(d)) if matches!(d.code().as_deref(), Some("42710" | "23505")) => Ok(false),
        Err(e) => Err(PgCdcError::db(
            format!("cannot create publication `{name}` (the user must own the tables, or create it beforehand)"),
            e,
        )),
    }
}

/// The tables a publication covers, or `None` when it does not exist.
pub async fn published_tables(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<Vec<(String, String)>>, PgCdcError> {
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
        .bind(name)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| PgCdcError::db("cannot read the publications", e))?;
    if !exists {
        return Ok(None);
    }
    let rows = sqlx::query("SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1")
        .bind(name)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| PgCdcError::db("cannot read the publication's tables", e))?;
    Ok(Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
}

/// Opens a transaction holding `ACCESS SHARE` locks on the publication's
/// tables. Held until the snapshot is read, it makes DDL that rewrites a table
/// (`ALTER COLUMN ... TYPE`, `VACUUM FULL`, `TRUNCATE`) wait: a rewrite
/// committed after the slot's consistent point would show the snapshot an
/// empty table.
pub async fn lock_published(conn: &mut PgConnection, publication: &str) -> Result<(), PgCdcError> {
    let tables = published_tables(conn, publication).await?.unwrap_or_default();
    if tables.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = tables.iter().map(|(s, t)| format!("{}.{}", quote_ident(s), quote_ident(t))).collect();
    let lock = format!("LOCK TABLE {} IN ACCESS SHARE MODE", list.join(", "));
    sqlx::query("BEGIN").execute(&mut *conn).await.map_err(|e| PgCdcError::db("cannot lock the tables", e))?;
    // Identifiers are quoted by quote_ident.
    sqlx::query(sqlx::AssertSqlSafe(lock))
        .execute(&mut *conn)
        .await
        .map_err(|e| PgCdcError::db("cannot lock the tables for the snapshot", e))?;
    Ok(())
}

/// The file behind each published table; a table rewrite (`ALTER COLUMN ...
/// TYPE`, `TRUNCATE`, `VACUUM FULL`) changes it.
pub async fn filenodes(conn: &mut PgConnection, publication: &str) -> Result<Vec<(i64, i64)>, PgCdcError> {
    let rows = sqlx::query(
        "SELECT c.oid::int8, c.relfilenode::int8
           FROM pg_publication_tables p
           JOIN pg_namespace n ON n.nspname = p.schemaname
           JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename
          WHERE p.pubname = $1
          ORDER BY 1",
    )
    .bind(publication)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| PgCdcError::db("cannot read the tables' files", e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Per published table, the record key: the columns of the replica identity
/// index when there is one (`REPLICA IDENTITY USING INDEX`), else of the
/// primary key. Under the default identity streamed changes say the same; under
/// `FULL` they flag every column, so this is the key there.
pub async fn key_columns(
    conn: &mut PgConnection,
    publication: &str,
) -> Result<HashMap<(String, String), Vec<String>>, PgCdcError> {
    let rows = sqlx::query(
        "SELECT n.nspname::text, c.relname::text, a.attname::text
           FROM pg_publication_tables p
           JOIN pg_namespace n ON n.nspname = p.schemaname
           JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename
           JOIN pg_index i ON i.indrelid = c.oid
                AND ((c.relreplident = 'i' AND i.indisreplident) OR (c.relreplident <> 'i' AND i.indisprimary))
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey)
          WHERE p.pubname = $1
          ORDER BY n.nspname, c.relname, array_position(i.indkey::int2[], a.attnum)",
    )
    .bind(publication)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| PgCdcError::db("cannot read the tables' keys", e))?;
    let mut keys: HashMap<(String, String), Vec<String>> = HashMap::new();
    for r in rows {
        keys.entry((r.get(0), r.get(1))).or_default().push(r.get(2));
    }
    Ok(keys)
}

#[derive(Debug)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub wal_status: Option<String>,
    /// Where the slot stands (`0/16B3748`).
    pub confirmed_flush: Option<String>,
}

pub async fn slot(conn: &mut PgConnection, name: &str) -> Result<Option<SlotInfo>, PgCdcError> {
    let row = sqlx::query(
        "SELECT plugin::text, database::text, wal_status::text, confirmed_flush_lsn::text
           FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| PgCdcError::db("cannot read the replication slots", e))?;
    Ok(row.map(|r| SlotInfo { plugin: r.get(0), database: r.get(1), wal_status: r.get(2), confirmed_flush: r.get(3) }))
}

/// `ALTER PUBLICATION name ADD|DROP TABLE tables`.
pub async fn alter_publication(
    conn: &mut PgConnection,
    name: &str,
    action: &str,
    tables: &[(String, String)],
) -> Result<(), PgCdcError> {
    let list: Vec<String> = tables.iter().map(|(s, t)| format!("{}.{}", quote_ident(s), quote_ident(t))).collect();
    // Identifiers are quoted by quote_ident; `action` is one of two words.
    let sql = format!("ALTER PUBLICATION {} {action} TABLE {}", quote_ident(name), list.join(", "));
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await
        .map_err(|e| PgCdcError::db(format!("cannot change publication `{name}`"), e))?;
    tracing::info!(publication = name, action, tables = %list.join(", "), "changed the publication");
    Ok(())
}

pub async fn drop_publication(conn: &mut PgConnection, name: &str) -> Result<(), PgCdcError> {
    // The name is quoted by quote_ident.
    let sql = format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name));
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await
        .map_err(|e| PgCdcError::db(format!("cannot drop publication `{name}`"), e))?;
    Ok(())
}

/// Keys by table.
pub type Keys = HashMap<(String, String), Vec<String>>;

/// The record key of each published table: the catalog's ([`key_columns`])
/// with `keys` from the settings over it; those are also returned apart,
/// since they hold whatever the replica identity says. Third, the key chunks
/// of incremental snapshots are read by: the catalog's where there is one
/// (streamed deletes and key changes carry it), else `keys`, which the
/// checks allow only under `REPLICA IDENTITY FULL` (whose old rows are whole).
/// A table left without a key is warned about: its records have none, so one
/// row's changes may spread over partitions downstream.
pub async fn record_keys(
    conn: &mut PgConnection,
    publication: &str,
    overrides: Vec<((String, String), Vec<String>)>,
) -> Result<(Keys, HashSet<(String, String)>, Keys), PgCdcError> {
    let mut keys = key_columns(conn, publication).await?;
    let mut chunk_keys = keys.clone();
    let mut pinned = HashSet::new();
    for (table, columns) in overrides {
        pinned.insert(table.clone());
        chunk_keys.entry(table.clone()).or_insert_with(|| columns.clone());
        keys.insert(table, columns);
    }
    for (schema, table) in published_tables(conn, publication).await?.unwrap_or_default() {
        if !keys.contains_key(&(schema.clone(), table.clone())) {
            tracing::warn!(table = %format!("{schema}.{table}"),
                "the table has no primary key or replica identity index, so its records have no key; name its key \
                 columns in `keys`");
        }
    }
    Ok((keys, pinned, chunk_keys))
}

/// Drops a slot, waiting for a walsender that still holds it to let go.
pub async fn drop_slot(conn: &mut PgConnection, name: &str) -> Result<(), PgCdcError> {
    let mut attempts = 0;
    loop {
        let result =
            sqlx::query("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1")
                .bind(name)
                .execute(&mut *conn)
                .await;
        match result {
            Ok(_) => return Ok(()),
            // 55006: the slot is active (its previous session has not ended yet).
            Err(sqlx::Error::Database(d)) if d.code().as_deref() == Some("55006") && attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => return Err(PgCdcError::db(format!("cannot drop replication slot `{name}`"), e)),
        }
    }
}
