//! What must hold before the source starts, checked the same way by `validate
//! --check` and by `run` (which refuses to start on any of it): the server
//! can stream, the user may, the tables exist and are readable, a publication
//! of them would not break the application's writes, partitioned tables are
//! published under their own names, and the slot and the pipeline's record of
//! it agree.

use std::collections::HashSet;

use flowgate_sdk::{Problem, StateStore};
use sqlx::{PgConnection, Row};

use crate::catalog::{self, quote_ident};
use crate::config::PostgresCdcConfig;
use crate::error::PgCdcError;
use crate::source::{StartPlan, plan_start, state_key};
use crate::state::{self, SlotState};

/// What the checks found out that starting needs too.
pub struct Facts {
    pub database: String,
    /// The slot exists (and is a usable pgoutput slot of this database).
    pub slot_exists: bool,
    /// What the pipeline recorded of its slot, if anything.
    pub record: Option<SlotState>,
}

/// A problem at `field` of the source's settings (or the settings as a whole).
fn problem(field: Option<&str>, message: String, help: Option<String>) -> Problem {
    Problem { at: field.into_iter().map(String::from).collect(), message, help }
}

/// A captured table as the catalog describes it.
struct TableInfo {
    schema: String,
    name: String,
    /// `r` a table, `p` a partitioned table.
    kind: String,
    readable: bool,
    /// Leaves (the table itself when not partitioned) without a usable
    /// replica identity: no primary key under `DEFAULT`, or `NOTHING`.
    keyless: Vec<String>,
}

async fn table_info(conn: &mut PgConnection, schema: &str, name: &str) -> Result<Option<TableInfo>, sqlx::Error> {
    let Some(row) = sqlx::query(
        "SELECT c.oid::int8, c.relkind::text, has_table_privilege(c.oid, 'SELECT')
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
    )
    .bind(schema)
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let oid: i64 = row.get(0);
    // Every leaf of a partitioned table takes the UPDATEs and DELETEs, so
    // each needs its own replica identity.
    let keyless: Vec<String> = sqlx::query_scalar(
        // pg_partition_tree lists nothing for a table that is not partitioned.
        "WITH leaves AS (SELECT relid FROM pg_partition_tree($1::oid) WHERE isleaf)
         SELECT c.oid::regclass::text
           FROM pg_class c
          WHERE (c.oid IN (SELECT relid FROM leaves) OR (c.oid = $1::oid AND NOT EXISTS (SELECT 1 FROM leaves)))
            AND (c.relreplident = 'n'
                 OR (c.relreplident = 'd'
                     AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))
          ORDER BY 1",
    )
    .bind(oid)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(TableInfo { schema: schema.into(), name: name.into(), kind: row.get(1), readable: row.get(2), keyless }))
}

/// Whether a table has a key to read it in chunks by: a primary key, a
/// replica identity index, or columns named in `keys` under `REPLICA
/// IDENTITY FULL` (other identities send deletes and key changes without
/// them, so a chunk's row could not give way to those).
pub(crate) async fn keyed(
    conn: &mut PgConnection,
    config: &PostgresCdcConfig,
    schema: &str,
    name: &str,
) -> Result<bool, sqlx::Error> {
    let overridden: Option<Vec<String>> =
        config.key_overrides().into_iter().find(|((s, t), _)| s == schema && t == name).map(|(_, c)| c);
    // Columns named in `keys` cut the table into chunks only if they are a
    // key: NOT NULL, and covering a unique index (else rows sharing a value
    // at a chunk's edge, or NULLs, would be skipped).
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relname = $2 AND (i.indisprimary OR i.indisreplident))
         OR ($3::text[] IS NOT NULL AND EXISTS (
              SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = $1 AND c.relname = $2 AND c.relreplident = 'f'
                 AND NOT EXISTS (SELECT 1 FROM pg_attribute a
                                  WHERE a.attrelid = c.oid AND a.attname = ANY($3) AND NOT a.attnotnull)
                 AND EXISTS (SELECT 1 FROM pg_index i
                              WHERE i.indrelid = c.oid AND i.indisunique AND i.indpred IS NULL
                                AND i.indexprs IS NULL
                                AND (SELECT array_agg(a.attname::text) FROM pg_attribute a
                                      WHERE a.attrelid = c.oid AND a.attnum = ANY(i.indkey::int2[])) <@ $3)))",
    )
    .bind(schema)
    .bind(name)
    .bind(overridden)
    .fetch_one(&mut *conn)
    .await
}

/// Runs every check; `Err` only when the database could not be asked.
/// `legacy` is the state directory, where release 0.1 kept the slot's record.
pub async fn check(
    conn: &mut PgConnection,
    config: &PostgresCdcConfig,
    pipeline: &str,
    legacy: &StateStore,
) -> Result<(Vec<Problem>, Facts), PgCdcError> {
    let q = |e| PgCdcError::db("cannot check the source's database", e);
    let mut found = Vec::new();
    let database = match catalog::check_server(conn).await {
        Ok(db) => db,
        Err(PgCdcError::Setup(m)) => {
            found.push(problem(Some("url"), m, None));
            sqlx::query_scalar("SELECT current_database()::text").fetch_one(&mut *conn).await.map_err(q)?
        }
        Err(e) => return Err(e),
    };
    let (user, can_replicate): (String, bool) = sqlx::query_as(
        "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(q)?;
    if !can_replicate {
        found.push(problem(
            Some("url"),
            format!("user `{user}` may not stream changes: it lacks the REPLICATION attribute"),
            Some(format!("ALTER ROLE {} WITH REPLICATION", quote_ident(&user))),
        ));
    }

    let slot = config.slot_name(pipeline);
    let publication = config.publication_name(&slot);
    let published = catalog::publication(conn, &publication).await?;
    let tables = match (&published, config.tables.is_empty()) {
        (_, false) => config.qualified_tables(),
        (Some(p), true) => p.tables.clone(),
        (None, true) => {
            found.push(problem(
                Some("publication"),
                format!("publication `{publication}` does not exist"),
                Some("create it, or list the `tables` to capture".into()),
            ));
            Vec::new()
        }
    };
    // What the application's writes to each table would meet: the
    // publication's own settings, or those Flowgate creates it with.
    let (publishes_changes, via_root) = match &published {
        Some(p) => (p.updates_or_deletes, p.via_root),
        None => (true, true),
    };
    let mut partitioned = HashSet::new();
    for (schema, name) in &tables {
        let shown = format!("{schema}.{name}");
        let Some(info) = table_info(conn, schema, name).await.map_err(q)? else {
            found.push(problem(Some("tables"), format!("table `{shown}` does not exist"), None));
            continue;
        };
        if !info.readable {
            found.push(problem(
                Some("tables"),
                format!("user `{user}` cannot read `{shown}`, which the snapshot needs"),
                Some(format!(
                    "GRANT SELECT ON {}.{} TO {}",
                    quote_ident(schema),
                    quote_ident(name),
                    quote_ident(&user)
                )),
            ));
        }
        if info.kind == "p" {
            partitioned.insert((info.schema.clone(), info.name.clone()));
        }
        if config.snapshot == crate::config::SnapshotMode::Incremental
            && !keyed(conn, config, schema, name).await.map_err(q)?
        {
            found.push(problem(
                Some("tables"),
                format!(
                    "`snapshot: incremental` reads `{shown}` in key order, but it has no primary key, replica \
                     identity index, or `keys` columns that are NOT NULL and cover a unique index"
                ),
                Some("give it a primary key or a unique index over its `keys`, or use `snapshot: initial`".into()),
            ));
        }
        if let Some((_, columns)) =
            config.key_overrides().into_iter().find(|(t, _)| *t == (schema.clone(), name.clone()))
        {
            let known: Vec<String> = sqlx::query_scalar(
                "SELECT a.attname::text FROM pg_attribute a
                   JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            )
            .bind(schema)
            .bind(name)
            .fetch_all(&mut *conn)
            .await
            .map_err(q)?;
            for column in columns.iter().filter(|c| !known.contains(c)) {
                found.push(problem(Some("keys"), format!("`{shown}` has no column `{column}`"), None));
            }
        }
        if publishes_changes && !info.keyless.is_empty() {
            found.push(problem(
                Some("tables"),
                format!(
                    "`{shown}` has no replica identity ({}: no primary key and REPLICA IDENTITY DEFAULT, or \
                     NOTHING): publishing it would make the application's UPDATE and DELETE on it fail (\"cannot \
                     update table ... because it does not have a replica identity and publishes updates\")",
                    info.keyless.join(", ")
                ),
                Some(format!(
                    "give it a primary key; or `ALTER TABLE {t} REPLICA IDENTITY USING INDEX <a unique index on \
                     NOT NULL columns>`; or `ALTER TABLE {t} REPLICA IDENTITY FULL` (then name its record key \
                     in `keys`)",
                    t = info.keyless[0]
                )),
            ));
        }
    }

    if let Some(p) = &published {
        if !via_root && (!partitioned.is_empty() || p.has_partitions) {
            found.push(problem(
                Some("publication"),
                format!(
                    "publication `{publication}` publishes partitions under their own names, not their \
                     partitioned table's (publish_via_partition_root is off)"
                ),
                Some(format!(
                    "ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
                    quote_ident(&publication)
                )),
            ));
        } else if !config.tables.is_empty() {
            let missing: Vec<String> = tables
                .iter()
                .filter(|t| !p.tables.contains(t))
                .map(|(s, t)| format!("{}.{}", quote_ident(s), quote_ident(t)))
                .collect();
            if config.publication.is_none() {
                // Flowgate's own publication: a table added to `tables` is
                // published at start and snapshotted in key order.
                for (schema, name) in tables.iter().filter(|t| !p.tables.contains(t)) {
                    if !keyed(conn, config, schema, name).await.map_err(q)? {
                        found.push(problem(
                            Some("tables"),
                            format!(
                                "`{schema}.{name}` is added to a running pipeline, and its snapshot reads it in key \
                                 order, but it has no primary key"
                            ),
                            Some("give it a primary key, or name its key columns in `keys`".into()),
                        ));
                    }
                }
            } else if !missing.is_empty() {
                found.push(problem(
                    Some("tables"),
                    format!("publication `{publication}` exists but does not publish {}", missing.join(", ")),
                    Some(format!(
                        "`ALTER PUBLICATION {} ADD TABLE {}` (rows already in them are not copied), or name \
                         another `publication`",
                        quote_ident(&publication),
                        missing.join(", ")
                    )),
                ));
            }
        }
    }

    let info = catalog::slot(conn, &slot).await?;
    if let Some(info) = &info {
        if info.wal_status.as_deref() == Some("lost") {
            found.push(problem(
                Some("slot"),
                format!(
                    "replication slot `{slot}` is invalidated (wal_status = lost): the server removed WAL it \
                     still needed, so changes were lost"
                ),
                Some(format!("SELECT pg_drop_replication_slot('{slot}'), then start over with a snapshot")),
            ));
        } else if info.plugin.as_deref() != Some("pgoutput") || info.database.as_deref() != Some(database.as_str()) {
            found.push(problem(
                Some("slot"),
                format!("replication slot `{slot}` exists but is not a pgoutput slot of database `{database}`"),
                Some("choose another `slot`".into()),
            ));
        }
    }
    let record = match state::load(conn, &config.state_schema, &slot).await? {
        Some(r) => Some(r),
        // Release 0.1 kept it in the state directory; read it there once (the
        // source saves it to the database as it starts).
        None => legacy.load::<SlotState>(&state_key(&slot)).map_err(PgCdcError::State)?,
    };
    let wants_snapshot = config.snapshot != crate::config::SnapshotMode::Never;
    let forget = state::forget(&config.state_schema, &slot);
    if let StartPlan::Refuse(message) = plan_start(info.is_some(), record.as_ref(), wants_snapshot, &slot, &forget) {
        found.push(problem(Some("slot"), message, None));
    }
    Ok((found, Facts { database, slot_exists: info.is_some(), record }))
}
