//! The database sinks: one implementation over sqlx's `Any` driver, with the
//! differences between Postgres, MySQL/MariaDB and SQLite in [`Dialect`].
//!
//! A batch is one transaction. `write` applies the batch's rows inside it and
//! leaves it open; `commit` (after the engine has dead-lettered the refused
//! records) adds the source position when effectively-once, and commits. A
//! statement refused for a row-level reason (a constraint, a bad value) is
//! rolled back to a savepoint and the batch retried row by row, so only the
//! offending rows are refused.

mod apply;
mod cell;
mod changes;
mod check;
mod conn;
mod copy;
mod ddl;
mod direct;
mod plan;
mod positions;
mod statements;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use flowgate_sdk::{Batch, ConnectorError, Position, Prepare, RefusalClass, Sink, async_trait};

use crate::change::Op;
use crate::config::{Delivery, SqlSinkConfig, Synchronous, UnknownFields};
use crate::dialect::{Dialect, dialect_of, sqlite_path};
use crate::error::{SqlError, is_row_error};
use crate::names::TableFilter;
use crate::rows::field_names;
use conn::Conn;
use copy::Stage;
use direct::SharedShape;
use plan::{Plan, Planner, key_for, plan, planned};

pub use check::check_sink;

/// A target table: its columns and their types, in table order.
#[derive(Clone, Debug)]
struct TableInfo {
    quoted: String,
    columns: Vec<(String, String)>,
    /// Takes part in a foreign key: its rows keep their order with other
    /// tables' rows.
    linked: bool,
    /// Postgres: `COPY` into the table does what `INSERT` does (see
    /// `Dialect::copies_like_insert_query`).
    copy_in: bool,
    /// Postgres: the session may `LOCK` the table, as binary `COPY` into it
    /// and an upsert's try at going straight in do (see
    /// `SqlSink::savepoint_described`).
    lockable: bool,
}

impl TableInfo {
    fn ty(&self, column: &str) -> Option<&str> {
        self.columns.iter().find(|(c, _)| c == column).map(|(_, t)| t.as_str())
    }
}

pub struct SqlSink {
    config: SqlSinkConfig,
    dialect: Dialect,
    pipeline: Arc<str>,
    conn: Option<Conn>,
    tx: Tx,
    tables: HashMap<String, TableInfo>,
    /// Postgres upserts and change events: each table's staging table (by the
    /// table's quoted name), which lives as long as the connection.
    stages: HashMap<String, Stage>,
    /// The last staging table's number.
    stage_seq: u64,
    /// Key columns per table (configured, or from the first record's key).
    keys: HashMap<String, Vec<String>>,
    /// The tables a templated `table` may name; `None` when it is fixed.
    filter: Option<TableFilter>,
    stage: Arc<str>,
    metrics: SqlMetrics,
    /// The table's shape for the prepare step to encode batches to, when
    /// they can go straight to `COPY` (see [`direct`]).
    shape: SharedShape,
    /// Effectively-once: the position of a commit whose answer never came
    /// (the connection broke on `COMMIT`), and its transaction's id when
    /// known. It may have committed, so the engine's second try at the batch
    /// first finds out whether it did.
    unsure: Option<(Position, Option<String>)>,
    /// That read found the batch committed: nothing to write or commit.
    found_committed: bool,
    /// Postgres: the batch's commit failed on a deferred constraint. Written
    /// again, it checks constraints at each statement, where the row
    /// isolation finds the rows that break them.
    immediate: bool,
}

/// Where the sink's transaction stands, and since when (for
/// `flowgate_sql_transaction_seconds`). `BEGIN` goes out with the batch's
/// first statement, which always sets a savepoint: a round trip less per batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tx {
    None,
    /// Begun, but `BEGIN` not yet sent.
    Pending(Instant),
    Open(Instant),
}

/// What the sink does, as metrics (label `pipeline`; rows also by `mode`).
struct SqlMetrics {
    rows: metrics::Counter,
    copied: metrics::Counter,
    transaction_seconds: metrics::Histogram,
    row_isolations: metrics::Counter,
}

impl SqlMetrics {
    fn new(pipeline: &str, mode: crate::config::Mode) -> Self {
        let mode = match mode {
            crate::config::Mode::Insert => "insert",
            crate::config::Mode::Upsert => "upsert",
            crate::config::Mode::Cdc => "cdc",
        };
        let p = pipeline.to_string();
        let m = SqlMetrics {
            rows: metrics::counter!("flowgate_sql_rows_total", "pipeline" => p.clone(), "mode" => mode),
            copied: metrics::counter!("flowgate_sql_copied_rows_total", "pipeline" => p.clone()),
            transaction_seconds: metrics::histogram!("flowgate_sql_transaction_seconds", "pipeline" => p.clone()),
            row_isolations: metrics::counter!("flowgate_sql_row_isolations_total", "pipeline" => p),
        };
        m.row_isolations.increment(0);
        m.copied.increment(0);
        m
    }
}

fn any_url(url: &str) -> String {
    match dialect_of(url) {
        Dialect::Sqlite if !url.starts_with("sqlite:") => format!("sqlite:{url}?mode=rwc"),
        Dialect::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
        _ if url.starts_with("mariadb://") => url.replacen("mariadb://", "mysql://", 1),
        _ => url.to_string(),
    }
}

/// Creates the SQLite database file of `url` as a private (0600) file when it
/// is missing, so that it and the journal files SQLite gives its mode hold
/// records for their owner only. Not SQLite, in memory, or there: nothing.
pub fn create_sqlite_file(url: &str) -> std::io::Result<()> {
    match sqlite_path(url) {
        Some(path) => flowgate_sdk::files::create_private(path),
        None => Ok(()),
    }
}

/// One table's share of a batch: its operations in order, with the index of
/// the record each came from.
#[derive(Default)]
struct TableOps {
    ops: Vec<(usize, Op)>,
}

impl SqlSink {
    pub async fn open(config: SqlSinkConfig, pipeline: &str) -> Result<Self, SqlError> {
        let dialect = dialect_of(&config.url);
        let filter =
            config.table.fixed().is_none().then(|| {
                TableFilter::new(config.tables_allowed.clone().unwrap_or_else(|| vec![config.table.pattern()]))
            });
        let mut sink = SqlSink {
            filter,
            dialect,
            pipeline: pipeline.into(),
            conn: None,
            tx: Tx::None,
            tables: HashMap::new(),
            stages: HashMap::new(),
            stage_seq: 0,
            keys: HashMap::new(),
            stage: "sink".into(),
            metrics: SqlMetrics::new(pipeline, config.mode),
            shape: SharedShape::default(),
            unsure: None,
            found_committed: false,
            immediate: false,
            config,
        };
        // Fail at start-up, not at the first record, when the database cannot be reached.
        sink.conn().await?;
        if sink.config.delivery == Delivery::EffectivelyOnce {
            sink.create(dialect.positions_table(), "flowgate_source_positions").await?;
        }
        Ok(sink)
    }

    async fn conn(&mut self) -> Result<&mut Conn, SqlError> {
        if self.conn.is_none() {
            let url = any_url(&self.config.url);
            create_sqlite_file(&self.config.url)
                .map_err(|e| SqlError::Connect { url: flowgate_sdk::redact_url(&self.config.url), source: e.into() })?;
            let mut conn = Conn::connect(&url, self.dialect)
                .await
                .map_err(|source| SqlError::Connect { url: flowgate_sdk::redact_url(&self.config.url), source })?;
            let setup = match (self.dialect, self.config.synchronous) {
                (Dialect::Sqlite, Synchronous::Full) => {
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000"
                }
                (Dialect::Sqlite, Synchronous::Normal) => {
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000"
                }
                // Timestamps without a zone are read and written as UTC.
                // Strict: a value that does not fit is refused, not cut to fit.
                (Dialect::MySql, _) => "SET time_zone = '+00:00', sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES')",
                (Dialect::Postgres, _) => "SET TIME ZONE 'UTC'",
            };
            conn.raw(setup)
                .await
                .map_err(|source| SqlError::Connect { url: flowgate_sdk::redact_url(&self.config.url), source })?;
            self.conn = Some(conn);
            self.tx = Tx::None;
            self.stages.clear();
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Forgets a connection that failed: the next attempt starts afresh, and an
    /// open transaction is gone with it.
    fn lost(&mut self) {
        self.conn = None;
        self.tx = Tx::None;
        // Temporary tables go with their connection.
        self.stages.clear();
    }

    async fn raw(&mut self, sql: &str, table: &str) -> Result<(), SqlError> {
        self.conn().await?.raw(sql).await.map_err(SqlError::write(table))
    }

    /// What begins a batch's transaction.
    fn begin(&self) -> &'static str {
        if self.immediate { "BEGIN; SET CONSTRAINTS ALL IMMEDIATE" } else { "BEGIN" }
    }

    /// Commits the batch's transaction, with `position` when effectively-once.
    /// A batch whose records were all filtered out still stores its position,
    /// or the source would move past what the table says. `immediate`: the
    /// batch was written checking constraints at each statement.
    async fn finish(&mut self, position: Option<&Position>, immediate: bool) -> Result<(), ConnectorError> {
        let position = position.filter(|_| self.config.delivery == Delivery::EffectivelyOnce);
        let began = match (self.tx, position) {
            (Tx::None, None) => return Ok(()),
            // Nothing was written: there is no transaction to commit.
            (Tx::Pending(_), None) => {
                self.tx = Tx::None;
                return Ok(());
            }
            (Tx::None, Some(_)) => Instant::now(),
            (Tx::Pending(t) | Tx::Open(t), _) => t,
        };
        // Whether what failed, if anything, was the `COMMIT` itself.
        let mut committing = false;
        // Postgres: the transaction's id, returned with the position stored.
        let mut xid = None;
        let result: Result<(), SqlError> = async {
            if !matches!(self.tx, Tx::Open(_)) {
                self.raw(self.begin(), "").await?;
                self.tx = Tx::Open(began);
            }
            if let Some(position) = position {
                xid = self.save_position(position).await?;
            }
            committing = true;
            self.raw("COMMIT", "").await?;
            self.tx = Tx::None;
            self.metrics.transaction_seconds.record(began.elapsed().as_secs_f64());
            Ok(())
        }
        .await;
        let Err(e) = result else { return Ok(()) };
        // The transaction is gone; the engine writes the batch again.
        self.lost();
        if e.is_retryable() {
            self.immediate = immediate;
            // Only a connection broken on `COMMIT` leaves it unknown whether
            // the batch went in; refused, or broken before, it did not.
            self.unsure = position.filter(|_| committing).map(|p| (p.clone(), xid));
            return Err(e.into());
        }
        // A deferred constraint (a foreign key `DEFERRABLE INITIALLY
        // DEFERRED`, as Django makes them) is checked at `COMMIT`, after the
        // row isolation: fatal as it was, it stopped the pipeline on the
        // same batch at every start. Written again with constraints checked
        // at each statement, the rows that break them are refused alone.
        if self.dialect == Dialect::Postgres
            && committing
            && !immediate
            && matches!(&e, SqlError::Write { source, .. } if is_row_error(source))
        {
            self.immediate = true;
            return Err(ConnectorError::transient("a deferred constraint refused the batch's commit", e));
        }
        Err(e.into())
    }
}

/// Runs for the same table joined into one, at the place of its first run.
fn by_table(runs: Vec<(String, TableOps)>) -> Vec<(String, TableOps)> {
    let mut joined: Vec<(String, TableOps)> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for (table, ops) in runs {
        match at.get(&table) {
            Some(&i) => joined[i].1.ops.extend(ops.ops),
            None => {
                at.insert(table.clone(), joined.len());
                joined.push((table, ops));
            }
        }
    }
    joined
}

/// What became of a batch `write_once` applied.
enum Written {
    Done,
    /// Rolled back: written by table, the database refused a row, which may be
    /// a foreign key added since the tables were described.
    InRecordOrder,
}

impl SqlSink {
    /// Applies the batch in one transaction, left open for `commit`; by table
    /// when `by_tables` and no table of the batch takes part in a foreign key.
    async fn write_once(&mut self, batch: &mut Batch, by_tables: bool) -> Result<Written, ConnectorError> {
        let (mut tables, mut refused) = match planned(batch, &self.config, self.dialect, self.filter.as_ref()) {
            Plan::Ops(tables, refused) => (tables, refused),
            Plan::Copy(encoded) => {
                if self.write_encoded(encoded).await? {
                    return Ok(Written::Done);
                }
                plan(&batch.records, &self.config, self.dialect, self.filter.as_ref())
            }
        };
        // Records for many tables, interleaved, make runs of one record each.
        // With no foreign key between the tables (known from their catalog
        // once described), each table's rows go together, in their order.
        let grouped =
            by_tables && tables.len() > 1 && tables.iter().all(|(t, _)| self.tables.get(t).is_some_and(|i| !i.linked));
        if grouped {
            tables = by_table(tables);
        }
        // Tables are described or created first, outside the transaction.
        let mut work = Vec::with_capacity(tables.len());
        for (table, mut ops) in tables {
            let key = match self.keys.get(&table) {
                Some(k) => k.clone(),
                None => {
                    let k = key_for(&self.config, &batch.records, &ops);
                    self.keys.insert(table.clone(), k.clone());
                    k
                }
            };
            let sample = ops.ops.iter().find_map(|(i, op)| match op {
                Op::Insert(r) | Op::Upsert(r) | Op::Create(r) | Op::Move { row: r, .. } => Some((*i, r.clone())),
                _ => None,
            });
            match sample {
                Some((i, sample)) => {
                    let order = field_names(&batch.records[i].value);
                    self.table(&table, &sample, &order, &key).await.inspect_err(|_| self.lost())?;
                }
                None if !self.tables.contains_key(&table) => match self.describe(&table).await {
                    Ok(Some(info)) => {
                        self.tables.insert(table.clone(), info);
                    }
                    Ok(None) => {
                        // Deletes for a table that does not exist: nothing to delete.
                        continue;
                    }
                    Err(e) => {
                        self.lost();
                        return Err(e.into());
                    }
                },
                None => {}
            }
            if self.config.unknown_fields != UnknownFields::Ignore {
                let mut bad = self.unknown_in(&table, &ops);
                // A field the cached description lacks may be a column added
                // since: the table is described again once before refusing.
                if !bad.is_empty() {
                    match self.describe(&table).await {
                        Ok(Some(info)) => {
                            self.tables.insert(table.clone(), info);
                            bad = self.unknown_in(&table, &ops);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            self.lost();
                            return Err(e.into());
                        }
                    }
                }
                if let Some((_, reason)) = bad.first()
                    && self.config.unknown_fields == UnknownFields::Fail
                {
                    return Err(ConnectorError::fatal(format!(
                        "{reason} (`unknown_fields: fail`; `dead_letter` refuses just the record)"
                    )));
                }
                if !bad.is_empty() {
                    // In record order, as the table's operations are.
                    ops.ops.retain(|(i, _)| bad.binary_search_by_key(i, |(b, _)| *b).is_err());
                    refused.extend(bad.into_iter().map(|(i, why)| (i, why, RefusalClass::Schema)));
                }
            }
            if self.dialect == Dialect::Postgres && self.config.mode != crate::config::Mode::Insert {
                self.stage(&table).await.inspect_err(|_| self.lost())?;
            }
            work.push((table, ops, key));
        }
        let began_here = self.tx == Tx::None;
        let names: Vec<String> = if grouped { work.iter().map(|(t, _, _)| t.clone()).collect() } else { Vec::new() };
        let mut by_database = 0;
        let result: Result<(), SqlError> = async {
            if self.tx == Tx::None {
                // Sent with the first statement.
                self.tx = Tx::Pending(Instant::now());
            }
            for (table, ops, key) in work {
                let refusals = self.apply(&table, ops.ops, &key).await?;
                by_database += refusals.len();
                refused.extend(refusals.into_iter().map(|(i, why)| (i, why, RefusalClass::Refused)));
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.lost();
            return Err(e.into());
        }
        if grouped && began_here && by_database > 0 {
            // Undone whole, and the tables described again (their foreign keys
            // with them), so that the batch goes again in the records' order.
            // The database refused rows, so statements (and `BEGIN`) went out.
            debug_assert!(matches!(self.tx, Tx::Open(_)), "{:?}", self.tx);
            let undone = self.raw("ROLLBACK", "").await;
            self.tx = Tx::None;
            if let Err(e) = undone {
                self.lost();
                return Err(e.into());
            }
            for table in names {
                self.tables.remove(&table);
            }
            return Ok(Written::InRecordOrder);
        }
        if !refused.is_empty() {
            refused.sort_unstable_by_key(|(i, _, _)| *i);
            refused.dedup_by_key(|(i, _, _)| *i);
            let mut reasons = refused.into_iter().peekable();
            let records = std::mem::take(&mut batch.records);
            for (i, record) in records.into_iter().enumerate() {
                match reasons.next_if(|(r, _, _)| *r == i) {
                    Some((_, reason, class)) => batch.reject(record, class, reason, &self.stage),
                    None => batch.records.push(record),
                }
            }
        }
        Ok(Written::Done)
    }
}

#[async_trait]
impl Sink for SqlSink {
    async fn write(&mut self, batch: &mut Batch) -> Result<(), ConnectorError> {
        if self.committed_before(batch).await? {
            tracing::info!(
                pipeline = %self.pipeline,
                "the connection broke on a commit that went through; the batch is not written again"
            );
            self.found_committed = true;
            return Ok(());
        }
        if let Written::InRecordOrder = self.write_once(batch, true).await? {
            self.write_once(batch, false).await?;
        }
        self.share_shape();
        Ok(())
    }

    fn preparer(&self) -> Option<Arc<dyn Prepare>> {
        Some(Arc::new(Planner {
            config: self.config.clone(),
            dialect: self.dialect,
            filter: self.filter.clone(),
            shape: Arc::clone(&self.shape),
        }))
    }

    async fn commit(&mut self, batch: &mut Batch) -> Result<(), ConnectorError> {
        let position = batch.position.clone();
        // For the batch written again after its commit failed on a deferred
        // constraint, and no other.
        let immediate = std::mem::take(&mut self.immediate);
        if !std::mem::take(&mut self.found_committed) {
            self.finish(position.as_ref(), immediate).await?;
        }
        self.metrics.rows.increment(batch.records.len() as u64);
        Ok(())
    }

    async fn stored_position(&mut self) -> Result<Option<Position>, ConnectorError> {
        self.load_position().await
    }

    async fn close(&mut self) -> Result<(), ConnectorError> {
        if matches!(self.tx, Tx::Open(_)) {
            // A batch written but never committed (the pipeline stopped on an
            // error): its records were not acknowledged.
            let _ = self.raw("ROLLBACK", "").await;
        }
        if let Some(conn) = self.conn.take() {
            conn.close().await.map_err(SqlError::write(""))?;
        }
        Ok(())
    }
}
