//! Where the registry keeps its schemas: SQLite (default) or Postgres, through
//! sqlx. Every change is one transaction, committed before the client hears
//! back; the whole content is read into memory at start and served from there.

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, AssertSqlSafe, Connection, Row};

use super::Level;

/// One subject version as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRow {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub deleted: bool,
}

/// Everything stored, as read at start.
#[derive(Debug, Default)]
pub struct Content {
    pub schemas: Vec<(u32, String)>,
    pub versions: Vec<VersionRow>,
    /// Compatibility per subject; the global one under the empty subject.
    pub config: Vec<(String, Level)>,
}

/// A change, applied in one transaction.
#[derive(Debug)]
pub enum Change {
    /// A new schema text under a new id.
    Schema {
        id: u32,
        text: String,
    },
    /// A new subject version.
    Version(VersionRow),
    /// Soft-deletes versions of a subject.
    SoftDelete {
        subject: String,
        versions: Vec<u32>,
    },
    /// Removes versions of a subject for good.
    Remove {
        subject: String,
        versions: Vec<u32>,
    },
    SetConfig {
        subject: String,
        level: Level,
    },
    DeleteConfig {
        subject: String,
    },
}

pub struct Store {
    pool: AnyPool,
    postgres: bool,
}

impl Store {
    /// Opens (and creates, for SQLite) the store at `url`: `sqlite:path` or
    /// `postgres://...`.
    pub async fn open(url: &str) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let postgres = url.starts_with("postgres:") || url.starts_with("postgresql:");
        if !postgres {
            flowgate_sql::create_sqlite_file(url)
                .map_err(|e| anyhow::anyhow!("cannot create the registry store {url}: {e}"))?;
        }
        let url = if !postgres && !url.contains('?') { format!("{url}?mode=rwc") } else { url.to_string() };
        // An unreachable server is reported at once, naming it and why: the
        // pool alone retries a refused connection until its timeout and then
        // says only "pool timed out".
        let shown = flowgate_sdk::redact_url(&url);
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), sqlx::AnyConnection::connect(&url)).await;
        match first {
            Err(_) => anyhow::bail!("cannot open the registry store {shown}: no answer within 10 s"),
            Ok(Err(e)) => anyhow::bail!("cannot open the registry store {shown}: {e}"),
            Ok(Ok(c)) => drop(c),
        }
        let pool = AnyPoolOptions::new()
            .max_connections(if postgres { 4 } else { 1 })
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(&url)
            .await
            .map_err(|e| {
                let why = match e {
                    sqlx::Error::PoolTimedOut => "no answer within 10 s".to_string(),
                    e => e.to_string(),
                };
                anyhow::anyhow!("cannot open the registry store {shown}: {why}")
            })?;
        if !postgres {
            // Durable on commit, and readable while written.
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
            sqlx::query("PRAGMA synchronous = FULL").execute(&pool).await?;
        }
        for ddl in [
            "CREATE TABLE IF NOT EXISTS flowgate_registry_schemas (id BIGINT PRIMARY KEY, schema_text TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS flowgate_registry_versions (subject TEXT NOT NULL, version BIGINT NOT NULL, \
             schema_id BIGINT NOT NULL, deleted BIGINT NOT NULL, PRIMARY KEY (subject, version))",
            "CREATE TABLE IF NOT EXISTS flowgate_registry_config (subject TEXT PRIMARY KEY, compatibility TEXT NOT NULL)",
        ] {
            sqlx::query(ddl).execute(&pool).await?;
        }
        Ok(Store { pool, postgres })
    }

    pub async fn load(&self) -> anyhow::Result<Content> {
        let mut content = Content::default();
        for row in sqlx::query("SELECT id, schema_text FROM flowgate_registry_schemas ORDER BY id")
            .fetch_all(&self.pool)
            .await?
        {
            content.schemas.push((row.try_get::<i64, _>(0)? as u32, row.try_get(1)?));
        }
        for row in sqlx::query(
            "SELECT subject, version, schema_id, deleted FROM flowgate_registry_versions ORDER BY subject, version",
        )
        .fetch_all(&self.pool)
        .await?
        {
            content.versions.push(VersionRow {
                subject: row.try_get(0)?,
                version: row.try_get::<i64, _>(1)? as u32,
                id: row.try_get::<i64, _>(2)? as u32,
                deleted: row.try_get::<i64, _>(3)? != 0,
            });
        }
        for row in
            sqlx::query("SELECT subject, compatibility FROM flowgate_registry_config").fetch_all(&self.pool).await?
        {
            let level: String = row.try_get(1)?;
            let level = level.parse().map_err(|_| anyhow::anyhow!("stored compatibility `{level}` is unknown"))?;
            content.config.push((row.try_get(0)?, level));
        }
        Ok(content)
    }

    /// Applies `changes` in one transaction.
    pub async fn apply(&self, changes: &[Change]) -> Result<(), sqlx::Error> {
        let p = |n: usize| if self.postgres { format!("${n}") } else { "?".to_string() };
        let mut tx = self.pool.begin().await?;
        for change in changes {
            match change {
                Change::Schema { id, text } => {
                    let q =
                        format!("INSERT INTO flowgate_registry_schemas (id, schema_text) VALUES ({}, {})", p(1), p(2));
                    sqlx::query(AssertSqlSafe(q.as_str()))
                        .bind(i64::from(*id))
                        .bind(text.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
                Change::Version(v) => {
                    let q = format!(
                        "INSERT INTO flowgate_registry_versions (subject, version, schema_id, deleted) \
                         VALUES ({}, {}, {}, {})",
                        p(1),
                        p(2),
                        p(3),
                        p(4)
                    );
                    sqlx::query(AssertSqlSafe(q.as_str()))
                        .bind(v.subject.as_str())
                        .bind(i64::from(v.version))
                        .bind(i64::from(v.id))
                        .bind(i64::from(v.deleted))
                        .execute(&mut *tx)
                        .await?;
                }
                Change::SoftDelete { subject, versions } | Change::Remove { subject, versions } => {
                    let q = if matches!(change, Change::SoftDelete { .. }) {
                        format!(
                            "UPDATE flowgate_registry_versions SET deleted = 1 WHERE subject = {} AND version = {}",
                            p(1),
                            p(2)
                        )
                    } else {
                        format!(
                            "DELETE FROM flowgate_registry_versions WHERE subject = {} AND version = {}",
                            p(1),
                            p(2)
                        )
                    };
                    for v in versions {
                        sqlx::query(AssertSqlSafe(q.as_str()))
                            .bind(subject.as_str())
                            .bind(i64::from(*v))
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                Change::SetConfig { subject, level } => {
                    let q = format!(
                        "INSERT INTO flowgate_registry_config (subject, compatibility) VALUES ({}, {}) \
                         ON CONFLICT (subject) DO UPDATE SET compatibility = excluded.compatibility",
                        p(1),
                        p(2)
                    );
                    sqlx::query(AssertSqlSafe(q.as_str()))
                        .bind(subject.as_str())
                        .bind(level.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
                Change::DeleteConfig { subject } => {
                    let q = format!("DELETE FROM flowgate_registry_config WHERE subject = {}", p(1));
                    sqlx::query(AssertSqlSafe(q.as_str())).bind(subject.as_str()).execute(&mut *tx).await?;
                }
            }
        }
        tx.commit().await
    }
}
