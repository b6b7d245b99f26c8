//! The database sinks: one implementation over sqlx's `Any` driver, with the
//! differences between Postgres, MySQL/MariaDB and SQLite in [`Dialect`].
//!
//! A batch is one transaction. `write` applies the batch's rows inside it and
//! leaves it open; `commit` (after the engine has dead-lettered the refused
//! records) adds the source position when effectively-once, and commits. A
//! statement refused for a row-level reason (a constraint, a bad value) is
//! rolled back to a savepoint and the batch retried row by row, so only the
//! offending rows are refused.

use std::collections::HashMap;
use std::sync::Arc;

use flowgate_sdk::{Batch, ConnectorError, Position, Problem, Record, Sink, async_trait};
use serde_json::{Map, Value};
use sqlx::AnyConnection;
use sqlx::any::AnyArguments;
use sqlx::{AssertSqlSafe, Connection, Row};

use crate::change::{Op, key_text, ops};
use crate::config::{Delivery, Mode, SqlSinkConfig, Synchronous, UnknownFields};
use crate::dialect::{Dialect, mysql_datetime, pg_array};
use crate::error::{SqlError, is_row_error};
use crate::names::{TableFilter, check_fields, unknown_fields};
use crate::rows::field_names;

/// Rows per statement; beyond a few hundred nothing is gained.
const MAX_ROWS_PER_STATEMENT: usize = 500;

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, AnyArguments>;

/// A target table: its columns and their types, in table order.
#[derive(Clone, Debug)]
struct TableInfo {
    quoted: String,
    columns: Vec<(String, String)>,
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
    conn: Option<AnyConnection>,
    in_transaction: bool,
    tables: HashMap<String, TableInfo>,
    /// Key columns per table (configured, or from the first record's key).
    keys: HashMap<String, Vec<String>>,
    /// The tables a templated `table` may name; `None` when it is fixed.
    filter: Option<TableFilter>,
    stage: Arc<str>,
}

/// The value bound for one column.
#[derive(Clone, Debug, PartialEq)]
enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Real(f64),
    Text(String),
}

fn bind(q: Query<'_>, cell: Cell) -> Query<'_> {
    match cell {
        Cell::Null => q.bind(None::<String>),
        Cell::Bool(b) => q.bind(b),
        Cell::Int(i) => q.bind(i),
        Cell::Real(f) => q.bind(f),
        Cell::Text(s) => q.bind(s),
    }
}

impl Dialect {
    /// A JSON value as the cell for a column of type `ty`. Postgres gets text
    /// only (each parameter is cast to its column's type): a prepared statement
    /// keeps the parameter types of its first execution, and an integer bound
    /// where a float was is misread rather than refused.
    fn cell(self, value: Option<&Value>, ty: &str) -> Cell {
        match self.typed_cell(value, ty) {
            Cell::Bool(b) if self == Dialect::Postgres => Cell::Text(b.to_string()),
            Cell::Int(i) if self == Dialect::Postgres => Cell::Text(i.to_string()),
            Cell::Real(f) if self == Dialect::Postgres => Cell::Text(f.to_string()),
            cell => cell,
        }
    }

    fn typed_cell(self, value: Option<&Value>, ty: &str) -> Cell {
        let json_column = ty.eq_ignore_ascii_case("json") || ty.eq_ignore_ascii_case("jsonb");
        match value {
            None | Some(Value::Null) => Cell::Null,
            // A JSON column takes any value as JSON text.
            Some(v) if json_column => Cell::Text(v.to_string()),
            Some(Value::Bool(b)) => Cell::Bool(*b),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => Cell::Int(i),
                // Beyond i64 (or a decimal) stays exact as text.
                None if n.is_u64() => Cell::Text(n.to_string()),
                None => Cell::Real(n.as_f64().unwrap_or(f64::NAN)),
            },
            Some(Value::String(s)) => match self {
                Dialect::MySql => Cell::Text(mysql_datetime(ty, s).unwrap_or_else(|| s.clone())),
                _ => Cell::Text(s.clone()),
            },
            Some(v @ Value::Array(_)) if self == Dialect::Postgres && ty.ends_with("[]") => Cell::Text(pg_array(v)),
            Some(v) => Cell::Text(v.to_string()),
        }
    }
}

pub(crate) fn dialect_of(url: &str) -> Dialect {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Dialect::Postgres
    } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        Dialect::MySql
    } else {
        Dialect::Sqlite
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

/// The database file of a SQLite URL; `None` for other databases and memory.
fn sqlite_path(url: &str) -> Option<&std::path::Path> {
    if dialect_of(url) != Dialect::Sqlite {
        return None;
    }
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
    let path = path.split('?').next().unwrap_or(path);
    (!path.is_empty() && path != ":memory:").then(|| std::path::Path::new(path))
}

/// One table's share of a batch: its operations in order, with the index of
/// the record each came from.
#[derive(Default)]
struct TableOps {
    ops: Vec<(usize, Op)>,
}

impl SqlSink {
    pub async fn open(config: SqlSinkConfig, pipeline: &str) -> Result<Self, SqlError> {
        sqlx::any::install_default_drivers();
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
            in_transaction: false,
            tables: HashMap::new(),
            keys: HashMap::new(),
            stage: "sink".into(),
            config,
        };
        // Fail at start-up, not at the first record, when the database cannot be reached.
        sink.conn().await?;
        if sink.config.delivery == Delivery::EffectivelyOnce {
            sink.create(dialect.positions_table(), "flowgate_source_positions").await?;
        }
        Ok(sink)
    }

    async fn conn(&mut self) -> Result<&mut AnyConnection, SqlError> {
        if self.conn.is_none() {
            let url = any_url(&self.config.url);
            create_sqlite_file(&self.config.url)
                .map_err(|e| SqlError::Connect { url: flowgate_sdk::redact_url(&self.config.url), source: e.into() })?;
            let mut conn = AnyConnection::connect(&url)
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
            sqlx::raw_sql(AssertSqlSafe(setup))
                .execute(&mut conn)
                .await
                .map_err(|source| SqlError::Connect { url: flowgate_sdk::redact_url(&self.config.url), source })?;
            self.conn = Some(conn);
            self.in_transaction = false;
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Forgets a connection that failed: the next attempt starts afresh, and an
    /// open transaction is gone with it.
    fn lost(&mut self) {
        self.conn = None;
        self.in_transaction = false;
    }

    async fn raw(&mut self, sql: &str, table: &str) -> Result<(), SqlError> {
        let conn = self.conn().await?;
        let result = sqlx::raw_sql(AssertSqlSafe(sql.to_string())).execute(conn).await;
        result.map(drop).map_err(SqlError::write(table))
    }

    /// Runs a `CREATE TABLE IF NOT EXISTS`. In Postgres that can still fail when
    /// another session creates the same table at the same moment (23505 on the
    /// catalog's type names, or 42P07); the table is then there, as wanted.
    async fn create(&mut self, sql: &str, table: &str) -> Result<(), SqlError> {
        match self.raw(sql, table).await {
            Err(SqlError::Write { source: sqlx::Error::Database(d), .. })
                if self.dialect == Dialect::Postgres && matches!(d.code().as_deref(), Some("23505" | "42P07")) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// The table's columns, or `None` when it does not exist.
    async fn describe(&mut self, table: &str) -> Result<Option<TableInfo>, SqlError> {
        let dialect = self.dialect;
        let conn = self.conn().await?;
        // Postgres resolves `schema.table` itself; MySQL and SQLite look the name
        // up as given, in the connection's database.
        let name = if dialect == Dialect::Postgres { dialect.quote_table(table) } else { table.to_string() };
        let rows = sqlx::query(AssertSqlSafe(dialect.columns_query()))
            .bind(name)
            .fetch_all(conn)
            .await
            .map_err(SqlError::write(table))?;
        let columns: Vec<(String, String)> = rows
            .iter()
            .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(SqlError::write(table))?;
        Ok((!columns.is_empty()).then(|| TableInfo { quoted: dialect.quote_table(table), columns }))
    }

    /// The table's description, creating the table from `sample` when it is
    /// missing and `create_table` is on. Runs outside the batch's transaction:
    /// MySQL commits an open transaction at any DDL.
    async fn table(
        &mut self,
        table: &str,
        sample: &Map<String, Value>,
        order: &[String],
        key: &[String],
    ) -> Result<TableInfo, ConnectorError> {
        if let Some(info) = self.tables.get(table)
            && sample.keys().all(|f| info.ty(f).is_some())
        {
            return Ok(info.clone());
        }
        if let Some(info) = self.describe(table).await? {
            // Refreshed when a field shows up that it lacked (the table may have
            // been altered since); fields the table does not have are left out.
            self.tables.insert(table.to_string(), info.clone());
            return Ok(info);
        }
        if !self.config.create_table {
            return Err(ConnectorError::fatal(format!(
                "table {table} does not exist; create it or set `create_table: true`"
            )));
        }
        let d = self.dialect;
        // In the order the fields were written (top-level fields in insert and
        // upsert modes); the rest, such as a change event's row, by name.
        let mut names: Vec<&String> = order.iter().filter(|n| sample.contains_key(*n)).collect();
        names.extend(sample.keys().filter(|k| !order.contains(k)));
        let mut defs: Vec<String> = names
            .into_iter()
            .map(|name| {
                let v = &sample[name];
                let ty = match d.key_text_type() {
                    Some(t) if key.contains(name) && !v.is_number() && !v.is_boolean() => t,
                    _ => d.column_type(v),
                };
                format!("{} {ty}", d.quote(name))
            })
            .collect();
        if !key.is_empty() {
            let keys: Vec<String> = key.iter().map(|k| d.quote(k)).collect();
            defs.push(format!("PRIMARY KEY ({})", keys.join(", ")));
        }
        let sql = format!("CREATE TABLE IF NOT EXISTS {} ({})", d.quote_table(table), defs.join(", "));
        self.create(&sql, table).await?;
        tracing::info!(table, "created the table from the first record");
        let info = self.describe(table).await?.ok_or_else(|| SqlError::NoColumns { table: table.to_string() })?;
        self.tables.insert(table.to_string(), info.clone());
        Ok(info)
    }

    /// The records among `ops` with fields that `table` has no column for,
    /// each once, with the reason.
    fn unknown_in(&self, table: &str, ops: &TableOps) -> Vec<(usize, String)> {
        let Some(info) = self.tables.get(table) else { return Vec::new() };
        let mut bad: Vec<(usize, String)> = Vec::new();
        for (i, op) in &ops.ops {
            if bad.last().is_some_and(|(b, _)| b == i) {
                continue;
            }
            let unknown = op.row().map(|r| unknown_fields(r, &info.columns)).unwrap_or_default();
            if !unknown.is_empty() {
                bad.push((*i, format!("fields without a column in table {table}: {}", unknown.join(", "))));
            }
        }
        bad
    }

    /// Applies one table's operations in order; refused records are returned
    /// with the reason. A row moved in place is applied on its own, between
    /// what comes before and after it.
    async fn apply(
        &mut self,
        table: &str,
        ops: Vec<(usize, Op)>,
        key: &[String],
    ) -> Result<Vec<(usize, String)>, SqlError> {
        let mut refused = Vec::new();
        let mut segment = Vec::with_capacity(ops.len());
        for (i, op) in ops {
            match op {
                Op::Move { from, row } => {
                    refused.extend(self.apply_segment(table, std::mem::take(&mut segment), key).await?);
                    if let Some(reason) = self.apply_move(table, &from, &row, key).await? {
                        refused.push((i, reason));
                    }
                }
                op => segment.push((i, op)),
            }
        }
        refused.extend(self.apply_segment(table, segment, key).await?);
        Ok(refused)
    }

    /// `UPDATE ... SET <row> WHERE <key> = <from>`, or an insert of `row` when
    /// there was no such row; `Some(reason)` when the database refused it.
    async fn apply_move(
        &mut self,
        table: &str,
        from: &Map<String, Value>,
        row: &Map<String, Value>,
        key: &[String],
    ) -> Result<Option<String>, SqlError> {
        let info = self.tables.get(table).cloned().ok_or_else(|| SqlError::NoColumns { table: table.to_string() })?;
        let d = self.dialect;
        let columns: Vec<String> =
            info.columns.iter().filter(|(c, _)| row.contains_key(c)).map(|(c, _)| c.clone()).collect();
        let mut n = 0;
        let mut param = |c: &str| {
            n += 1;
            d.param(n, info.ty(c).unwrap_or("text"))
        };
        let sets: Vec<String> = columns.iter().map(|c| format!("{} = {}", d.quote(c), param(c))).collect();
        let wheres: Vec<String> = key.iter().map(|k| format!("{} = {}", d.quote(k), param(k))).collect();
        let sql = format!("UPDATE {} SET {} WHERE {}", info.quoted, sets.join(", "), wheres.join(" AND "));
        let cells: Vec<Cell> = columns
            .iter()
            .map(|c| d.cell(row.get(c), info.ty(c).unwrap_or("text")))
            .chain(key.iter().map(|k| d.cell(from.get(k), info.ty(k).unwrap_or("text"))))
            .collect();
        self.savepoint("flowgate_row", table).await?;
        let conn = self.conn.as_mut().expect("connected");
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for cell in cells {
            q = bind(q, cell);
        }
        let moved = match q.execute(&mut *conn).await {
            Ok(done) => done.rows_affected() > 0,
            Err(e) if is_row_error(&e) => {
                self.raw("ROLLBACK TO SAVEPOINT flowgate_row", table).await?;
                return Ok(Some(e.to_string()));
            }
            Err(e) => return Err(SqlError::Write { table: table.to_string(), source: e }),
        };
        if moved {
            return Ok(None);
        }
        // The old row was not there: write the new one as it came.
        let insert = vec![(0, Op::Upsert(row.clone()))];
        Ok(self.apply_segment(table, insert, key).await?.pop().map(|(_, reason)| reason))
    }

    /// Applies operations other than moves, batched; refused records are
    /// returned with the reason.
    async fn apply_segment(
        &mut self,
        table: &str,
        ops: Vec<(usize, Op)>,
        key: &[String],
    ) -> Result<Vec<(usize, String)>, SqlError> {
        // Only the last operation per key counts (an upsert carries the whole row,
        // a delete removes it), which also keeps one statement from touching a
        // row twice. A truncate drops what came before it.
        let start = ops.iter().rposition(|(_, op)| *op == Op::Truncate);
        let truncate = start.map(|t| ops[t].0);
        let mut last: Vec<(usize, Op)> = Vec::with_capacity(ops.len());
        let mut index: HashMap<String, usize> = HashMap::new();
        for (i, op) in ops.into_iter().skip(start.map_or(0, |t| t + 1)) {
            match op {
                Op::Insert(_) => last.push((i, op)),
                // None after the last truncate; moves are applied on their own.
                Op::Truncate | Op::Move { .. } => {}
                Op::Upsert(ref row) | Op::Delete(ref row) => {
                    let k = key_text(row, key);
                    match index.get(&k) {
                        Some(&at) => {
                            // An upsert lacking unchanged TOAST values takes them
                            // from the one before it in the batch.
                            let mut op = op;
                            if let (Op::Upsert(new), (_, Op::Upsert(old))) = (&mut op, &last[at]) {
                                for (c, v) in old {
                                    new.entry(c.clone()).or_insert_with(|| v.clone());
                                }
                            }
                            last[at] = (i, op);
                        }
                        None => {
                            index.insert(k, last.len());
                            last.push((i, op));
                        }
                    }
                }
            }
        }
        let info = self.tables.get(table).cloned().ok_or_else(|| SqlError::NoColumns { table: table.to_string() })?;
        let mut refused = Vec::new();
        self.savepoint("flowgate_batch", table).await?;
        match self.apply_grouped(&info, truncate, &last, key).await {
            Ok(()) => {}
            Err(e) if is_row_error(&e) => {
                tracing::debug!(table, error = %e, "a row was refused; applying the batch row by row");
                self.raw("ROLLBACK TO SAVEPOINT flowgate_batch", table).await?;
                if let Some(i) = truncate
                    && let Err(e) = self.apply_grouped(&info, Some(i), &[], key).await
                {
                    return Err(SqlError::Write { table: table.to_string(), source: e });
                }
                for (i, op) in &last {
                    self.savepoint("flowgate_row", table).await?;
                    match self.apply_grouped(&info, None, std::slice::from_ref(&(*i, op.clone())), key).await {
                        Ok(()) => {}
                        Err(e) if is_row_error(&e) => {
                            self.raw("ROLLBACK TO SAVEPOINT flowgate_row", table).await?;
                            refused.push((*i, e.to_string()));
                        }
                        Err(e) => return Err(SqlError::Write { table: table.to_string(), source: e }),
                    }
                }
            }
            Err(e) => return Err(SqlError::Write { table: table.to_string(), source: e }),
        }
        Ok(refused)
    }

    async fn savepoint(&mut self, name: &str, table: &str) -> Result<(), SqlError> {
        self.raw(&format!("SAVEPOINT {name}"), table).await
    }

    /// Truncate, then deletes, then upserts and inserts, each as multi-row statements.
    async fn apply_grouped(
        &mut self,
        info: &TableInfo,
        truncate: Option<usize>,
        ops: &[(usize, Op)],
        key: &[String],
    ) -> Result<(), sqlx::Error> {
        let d = self.dialect;
        if truncate.is_some() {
            let conn = self.conn.as_mut().expect("connected");
            sqlx::raw_sql(AssertSqlSafe(format!("DELETE FROM {}", info.quoted))).execute(conn).await?;
        }
        let deletes: Vec<&Map<String, Value>> =
            ops.iter().filter_map(|(_, op)| if let Op::Delete(r) = op { Some(r) } else { None }).collect();
        if !deletes.is_empty() {
            let mut cells = Vec::with_capacity(deletes.len() * key.len());
            for row in &deletes {
                cells.extend(key.iter().map(|k| d.cell(row.get(k), info.ty(k).unwrap_or("text"))));
            }
            let cols: Vec<String> = key.iter().map(|k| d.quote(k)).collect();
            let target = if key.len() == 1 { cols[0].clone() } else { format!("({})", cols.join(", ")) };
            let sql = |n: usize| {
                format!("DELETE FROM {} WHERE {target} IN ({})", info.quoted, value_list(d, info, key, n, true))
            };
            let conn = self.conn.as_mut().expect("connected");
            run(conn, d, sql, cells, key.len()).await?;
        }
        // Rows with the same columns go together: (upsert?, which of the table's
        // columns the rows have, rows). Rows nearly always share one shape, so a
        // row is first compared with the last group without allocating.
        type Group<'a> = (bool, Vec<bool>, Vec<&'a Map<String, Value>>);
        let mut groups: Vec<Group<'_>> = Vec::new();
        let fits = |row: &Map<String, Value>, mask: &[bool]| {
            info.columns.iter().zip(mask).all(|((c, _), &has)| row.contains_key(c) == has)
        };
        for (_, op) in ops {
            let (upsert, row) = match op {
                Op::Upsert(r) => (true, r),
                Op::Insert(r) => (false, r),
                _ => continue,
            };
            if let Some((u, mask, rows)) = groups.last_mut()
                && *u == upsert
                && fits(row, mask)
            {
                rows.push(row);
                continue;
            }
            match groups.iter_mut().find(|(u, mask, _)| *u == upsert && fits(row, mask)) {
                Some((_, _, rows)) => rows.push(row),
                None => {
                    let mask = info.columns.iter().map(|(c, _)| row.contains_key(c)).collect();
                    groups.push((upsert, mask, vec![row]));
                }
            }
        }
        for (upsert, mask, rows) in groups {
            let (columns, types): (Vec<String>, Vec<&str>) = info
                .columns
                .iter()
                .zip(&mask)
                .filter(|(_, has)| **has)
                .map(|((c, t), _)| (c.clone(), t.as_str()))
                .unzip();
            if columns.is_empty() {
                continue;
            }
            let mut cells = Vec::with_capacity(rows.len() * columns.len());
            for row in &rows {
                cells.extend(columns.iter().zip(&types).map(|(c, ty)| d.cell(row.get(c), ty)));
            }
            let names: Vec<String> = columns.iter().map(|c| d.quote(c)).collect();
            let suffix = if upsert { d.upsert(key, &columns) } else { String::new() };
            let sql = |n: usize| {
                let values = value_list(d, info, &columns, n, false);
                format!("INSERT INTO {} ({}) VALUES {values}{suffix}", info.quoted, names.join(", "))
            };
            let conn = self.conn.as_mut().expect("connected");
            run(conn, d, sql, cells, columns.len()).await?;
        }
        Ok(())
    }

    /// Commits the batch's transaction, with `position` when effectively-once.
    /// A batch whose records were all filtered out still stores its position,
    /// or the source would move past what the table says.
    async fn finish(&mut self, position: Option<&Position>) -> Result<(), ConnectorError> {
        let position = position.filter(|_| self.config.delivery == Delivery::EffectivelyOnce);
        if !self.in_transaction && position.is_none() {
            return Ok(());
        }
        let result: Result<(), SqlError> = async {
            if !self.in_transaction {
                self.raw("BEGIN", "").await?;
                self.in_transaction = true;
            }
            if let Some(position) = position {
                self.save_position(position).await?;
            }
            self.raw("COMMIT", "").await?;
            self.in_transaction = false;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            // The transaction is gone; the engine writes the batch again.
            self.lost();
            return Err(e.into());
        }
        Ok(())
    }

    /// Stores each part of the source's position, in the batch's transaction.
    async fn save_position(&mut self, position: &Position) -> Result<(), SqlError> {
        let sql = self.dialect.save_position();
        let pipeline = self.pipeline.to_string();
        let conn = self.conn().await?;
        for (source, at) in position.parts() {
            sqlx::query(AssertSqlSafe(sql))
                .bind(pipeline.clone())
                .bind(source.to_string())
                .bind(at.to_string())
                .execute(&mut *conn)
                .await
                .map_err(SqlError::write("flowgate_source_positions"))?;
        }
        Ok(())
    }
}

/// Executes one statement shape over `cells` (`per_row` a row) in as few
/// statements as the parameter limit allows; `Err` carries the database's message.
async fn run(
    conn: &mut AnyConnection,
    dialect: Dialect,
    sql_for: impl Fn(usize) -> String,
    cells: Vec<Cell>,
    per_row: usize,
) -> Result<(), sqlx::Error> {
    if per_row == 0 {
        return Ok(());
    }
    let rows = cells.len() / per_row;
    let chunk = (dialect.max_params() / per_row).clamp(1, MAX_ROWS_PER_STATEMENT);
    let mut cells = cells.into_iter();
    let mut done = 0;
    while done < rows {
        let n = chunk.min(rows - done);
        let mut q = sqlx::query(AssertSqlSafe(sql_for(n)));
        for cell in cells.by_ref().take(n * per_row) {
            q = bind(q, cell);
        }
        q.execute(&mut *conn).await?;
        done += n;
    }
    Ok(())
}

/// `(p1, p2), (p3, p4)`: `rows` rows of parameters for `columns`, each cast
/// (where the dialect needs it) to its column's type. `bare` leaves out the
/// parentheses around a single column, for `k IN (p1, p2)`.
fn value_list(dialect: Dialect, info: &TableInfo, columns: &[String], rows: usize, bare: bool) -> String {
    let mut n = 0;
    let mut out = Vec::with_capacity(rows);
    for _ in 0..rows {
        let vals: Vec<String> = columns
            .iter()
            .map(|c| {
                n += 1;
                dialect.param(n, info.ty(c).unwrap_or("text"))
            })
            .collect();
        out.push(if bare && columns.len() == 1 { vals.join(", ") } else { format!("({})", vals.join(", ")) });
    }
    out.join(", ")
}

/// Records refused, by index, with the reason.
type Refused = Vec<(usize, String)>;

/// The records of a batch as runs of consecutive records for one table, in
/// order: changes to different tables keep their order (a parent row before
/// the child rows that reference it).
fn plan(
    records: &[Record],
    config: &SqlSinkConfig,
    dialect: Dialect,
    filter: Option<&TableFilter>,
) -> (Vec<(String, TableOps)>, Refused) {
    let mut tables: Vec<(String, TableOps)> = Vec::new();
    let mut refused = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let mut parsed = None;
        let table = match config.table.fixed() {
            Some(t) => t.to_string(),
            None => match config.table.render(r, &mut parsed) {
                Ok(t) => match filter.map_or(Ok(()), |f| f.check(dialect, &t)) {
                    Ok(()) => t,
                    Err(why) => {
                        refused.push((i, format!("table `{}` refused: {why}", t.escape_debug())));
                        continue;
                    }
                },
                Err(e) => {
                    refused.push((i, format!("no table for the record: {e}")));
                    continue;
                }
            },
        };
        let checked =
            ops(&r.value, r.key.as_deref(), config.mode, config.columns.as_ref(), &config.key).and_then(|list| {
                list.iter().try_for_each(|op| op.row().map_or(Ok(()), |row| check_fields(dialect, row))).map(|()| list)
            });
        match checked {
            Ok(list) => {
                if tables.last().is_none_or(|(t, _)| *t != table) {
                    tables.push((table, TableOps::default()));
                }
                let run = tables.last_mut().expect("pushed above");
                run.1.ops.extend(list.into_iter().map(|op| (i, op)));
            }
            Err(reason) => refused.push((i, reason)),
        }
    }
    (tables, refused)
}

/// The key columns for a table: configured, or the fields of a record's key.
fn key_for(config: &SqlSinkConfig, records: &[Record], ops: &TableOps) -> Vec<String> {
    if !config.key.is_empty() || config.mode == Mode::Insert {
        return config.key.clone();
    }
    ops.ops
        .first()
        .and_then(|(i, _)| records[*i].key.as_deref())
        .and_then(|k| serde_json::from_slice::<Value>(k).ok())
        .and_then(|v| v.as_object().map(|m| m.keys().cloned().collect()))
        .unwrap_or_default()
}

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
                let sql = "SELECT has_table_privilege(to_regclass($1), $2)";
                let conn = sink.conn.as_mut().expect("opened");
                for privilege in needs.split(", ") {
                    let granted = sqlx::query(sql)
                        .bind(Dialect::Postgres.quote_table(table))
                        .bind(privilege)
                        .fetch_one(&mut *conn)
                        .await
                        .and_then(|r| r.try_get::<bool, _>(0));
                    if !matches!(granted, Ok(true)) {
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

#[async_trait]
impl Sink for SqlSink {
    async fn write(&mut self, batch: &mut Batch) -> Result<(), ConnectorError> {
        let (tables, mut refused) = plan(&batch.records, &self.config, self.dialect, self.filter.as_ref());
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
                Op::Insert(r) | Op::Upsert(r) | Op::Move { row: r, .. } => Some((*i, r.clone())),
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
                    refused.extend(bad);
                }
            }
            work.push((table, ops, key));
        }
        let result: Result<(), SqlError> = async {
            if !self.in_transaction {
                self.raw("BEGIN", "").await?;
                self.in_transaction = true;
            }
            for (table, ops, key) in work {
                refused.extend(self.apply(&table, ops.ops, &key).await?);
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.lost();
            return Err(e.into());
        }
        // A batch without an acknowledgement (dead letters) must be durable
        // when `write` returns; `commit` is not called for it.
        if batch.ack.is_none() {
            self.finish(None).await?;
        }
        if !refused.is_empty() {
            refused.sort_unstable_by_key(|(i, _)| *i);
            refused.dedup_by_key(|(i, _)| *i);
            let mut reasons = refused.into_iter().peekable();
            let records = std::mem::take(&mut batch.records);
            for (i, record) in records.into_iter().enumerate() {
                match reasons.next_if(|(r, _)| *r == i) {
                    Some((_, reason)) => batch.reject(record, reason, &self.stage),
                    None => batch.records.push(record),
                }
            }
        }
        Ok(())
    }

    async fn commit(&mut self, batch: &mut Batch) -> Result<(), ConnectorError> {
        let position = batch.position.clone();
        self.finish(position.as_ref()).await
    }

    async fn stored_position(&mut self) -> Result<Option<Position>, ConnectorError> {
        if self.config.delivery != Delivery::EffectivelyOnce {
            return Ok(None);
        }
        let pipeline = self.pipeline.to_string();
        let (table, dialect) = ("flowgate_source_positions", self.dialect);
        let conn = self.conn().await?;
        let rows = sqlx::query(AssertSqlSafe(dialect.load_positions()))
            .bind(pipeline.clone())
            .fetch_all(conn)
            .await
            .map_err(SqlError::write(table))?;
        let mut position = Position::default();
        for r in rows {
            let source: String = r.try_get(0).map_err(SqlError::write(table))?;
            let at: String = r.try_get(1).map_err(SqlError::write(table))?;
            position.set(source, at);
        }
        if position.is_empty() && self.describe("flowgate_positions").await?.is_some() {
            // Stored by 0.1: the same parts, as numbers.
            let conn = self.conn().await?;
            let rows = sqlx::query(AssertSqlSafe(dialect.load_legacy_positions()))
                .bind(pipeline)
                .fetch_all(conn)
                .await
                .map_err(SqlError::write("flowgate_positions"))?;
            for r in rows {
                let source: String = r.try_get(0).map_err(SqlError::write("flowgate_positions"))?;
                let at: i64 = r.try_get(1).map_err(SqlError::write("flowgate_positions"))?;
                position.set(source, at.to_string());
            }
        }
        Ok((!position.is_empty()).then_some(position))
    }

    async fn close(&mut self) -> Result<(), ConnectorError> {
        if self.in_transaction {
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

#[cfg(test)]
mod tests {
    use flowgate_sdk::{Record, RecordTemplate};

    use super::*;
    use crate::config::Columns;

    fn config(dir: &tempfile::TempDir, mode: Mode) -> SqlSinkConfig {
        SqlSinkConfig {
            url: dir.path().join("t.db").display().to_string(),
            table: "t".parse::<RecordTemplate>().unwrap(),
            mode,
            key: Vec::new(),
            columns: None,
            create_table: true,
            delivery: Delivery::AtLeastOnce,
            synchronous: Synchronous::Normal,
            unknown_fields: UnknownFields::DeadLetter,
            tables_allowed: None,
        }
    }

    fn batch(records: &[(&str, &str)]) -> Batch {
        let mut b = Batch::with_capacity(0, records.len());
        for (k, v) in records {
            let mut r = Record::from_value(v.to_string());
            r.key = (!k.is_empty()).then(|| k.to_string().into());
            b.records.push(r);
        }
        b
    }

    async fn put(sink: &mut SqlSink, records: &[(&str, &str)]) -> Batch {
        let mut b = batch(records);
        sink.write(&mut b).await.unwrap();
        sink.commit(&mut b).await.unwrap();
        b
    }

    async fn rows(dir: &tempfile::TempDir, sql: &str) -> Vec<String> {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite:{}", dir.path().join("t.db").display());
        let mut c = AnyConnection::connect(&url).await.unwrap();
        let rows = sqlx::query(AssertSqlSafe(sql.to_string())).fetch_all(&mut c).await.unwrap();
        rows.iter().map(|r| r.try_get::<String, _>(0).unwrap()).collect()
    }

    #[tokio::test]
    async fn inserts_create_the_table_and_isolate_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = SqlSink::open(config(&dir, Mode::Insert), "p").await.unwrap();
        put(&mut sink, &[("", r#"{"id":1,"name":"a"}"#), ("", r#"{"id":2}"#)]).await;
        assert_eq!(rows(&dir, "SELECT group_concat(name, ',') FROM pragma_table_info('t')").await, ["id,name"]);
        sqlx::raw_sql("CREATE UNIQUE INDEX t_id ON t(id)").execute(sink.conn().await.unwrap()).await.unwrap();
        let b = put(
            &mut sink,
            &[("", r#"{"id":3,"name":"c"}"#), ("", r#"{"id":1,"name":"dup"}"#), ("", "[1]"), ("", r#"{"id":4}"#)],
        )
        .await;
        assert_eq!(b.records.len(), 2);
        assert!(b.rejected[0].reason.contains("UNIQUE constraint failed"), "{:?}", b.rejected);
        assert!(b.rejected[1].reason.contains("not a JSON object"), "{:?}", b.rejected);
        assert_eq!(
            rows(&dir, "SELECT group_concat(id || ':' || coalesce(name, '-'), ' ') FROM t").await,
            ["1:a 2:- 3:c 4:-"]
        );
        let many: Vec<String> = (10..1300).map(|i| format!(r#"{{"id":{i},"name":"n{i}"}}"#)).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|v| ("", v.as_str())).collect();
        put(&mut sink, &many).await;
        assert_eq!(rows(&dir, "SELECT CAST(count(*) AS TEXT) FROM t").await, ["1294"]);
    }

    #[tokio::test]
    async fn upserts_replace_rows_by_key_and_map_columns() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(&dir, Mode::Upsert);
        c.key = vec!["id".into()];
        c.columns =
            Some(Columns::Map([("id".into(), "order.id".into()), ("total".into(), "order.total".into())].into()));
        let mut sink = SqlSink::open(c, "p").await.unwrap();
        put(&mut sink, &[("", r#"{"order":{"id":1,"total":5}}"#), ("", r#"{"order":{"id":2,"total":6}}"#)]).await;
        // The same key twice in one batch: the last one counts.
        put(&mut sink, &[("", r#"{"order":{"id":1,"total":7}}"#), ("", r#"{"order":{"id":1,"total":8}}"#)]).await;
        assert_eq!(rows(&dir, "SELECT group_concat(id || '=' || total, ' ') FROM t").await, ["1=8 2=6"]);
    }

    #[tokio::test]
    async fn change_events_are_applied_in_order_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = SqlSink::open(config(&dir, Mode::Cdc), "p").await.unwrap();
        let ev = |op: &str, before: &str, after: &str| format!(r#"{{"op":"{op}","before":{before},"after":{after}}}"#);
        let events = [
            (r#"{"id":1}"#, ev("r", "null", r#"{"id":1,"n":1,"doc":"big"}"#)),
            (r#"{"id":2}"#, ev("c", "null", r#"{"id":2,"n":1,"doc":"x"}"#)),
            (r#"{"id":3}"#, ev("c", "null", r#"{"id":3,"n":1,"doc":"y"}"#)),
            (r#"{"id":2}"#, ev("u", r#"{"id":2,"n":null,"doc":null}"#, r#"{"id":2,"n":2,"doc":"x2"}"#)),
            (r#"{"id":3}"#, ev("d", r#"{"id":3,"n":null,"doc":null}"#, "null")),
        ];
        let batch1: Vec<(&str, &str)> = events.iter().map(|(k, v)| (*k, v.as_str())).collect();
        put(&mut sink, &batch1).await;
        // Next batch: an unchanged TOAST value, a key change, a tombstone, a bad event.
        let events = [
            (
                r#"{"id":1}"#,
                ev("u", r#"{"id":1,"n":null,"doc":null}"#, r#"{"id":1,"n":2,"doc":"__debezium_unavailable_value"}"#),
            ),
            (r#"{"id":4}"#, ev("u", r#"{"id":2,"n":null,"doc":null}"#, r#"{"id":4,"n":3,"doc":"x2"}"#)),
            (r#"{"id":4}"#, String::new()),
            (r#"{"id":5}"#, r#"{"op":"c"}"#.to_string()),
        ];
        let batch2: Vec<(&str, &str)> = events.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let b = put(&mut sink, &batch2).await;
        assert_eq!(b.rejected.len(), 1, "{:?}", b.rejected);
        assert!(b.rejected[0].reason.contains("`after`"));
        assert_eq!(
            rows(&dir, "SELECT group_concat(id || ':' || n || ':' || doc, ' ') FROM t").await,
            ["1:2:big 4:3:x2"]
        );
        // A key change whose TOASTed value was not sent moves the row in place.
        let moved =
            ev("u", r#"{"id":4,"n":null,"doc":null}"#, r#"{"id":6,"n":4,"doc":"__debezium_unavailable_value"}"#);
        put(&mut sink, &[(r#"{"id":6}"#, moved.as_str())]).await;
        assert_eq!(
            rows(&dir, "SELECT group_concat(id || ':' || n || ':' || doc, ' ') FROM t").await,
            ["1:2:big 6:4:x2"]
        );
        put(&mut sink, &[(r#"{"id":1}"#, r#"{"op":"t","before":null,"after":null}"#)]).await;
        assert_eq!(rows(&dir, "SELECT CAST(count(*) AS TEXT) FROM t").await, ["0"]);
    }

    #[tokio::test]
    async fn effectively_once_keeps_the_position_with_the_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(&dir, Mode::Insert);
        c.delivery = Delivery::EffectivelyOnce;
        let mut sink = SqlSink::open(c.clone(), "p").await.unwrap();
        assert_eq!(sink.stored_position().await.unwrap(), None);
        let mut b = batch(&[("", r#"{"id":1}"#)]);
        // Opaque to the sink: a source's parts, stored and given back as they are.
        let position = Position::default().with("kafka:in:2", "41@7").with("postgres", "0/1:2");
        b.position = Some(position.clone());
        // A pipeline batch (it has an acknowledgement) is committed by `commit`.
        let tracker = flowgate_sdk::AckTracker::new();
        b.ack = Some(tracker.begin());
        sink.write(&mut b).await.unwrap();
        // Written but not committed: neither the row nor the position is there.
        assert_eq!(rows(&dir, "SELECT CAST(count(*) AS TEXT) FROM t").await, ["0"]);
        sink.commit(&mut b).await.unwrap();
        let mut again = SqlSink::open(c, "p").await.unwrap();
        assert_eq!(again.stored_position().await.unwrap(), Some(position));
        assert_eq!(rows(&dir, "SELECT CAST(count(*) AS TEXT) FROM t").await, ["1"]);
    }

    #[tokio::test]
    async fn positions_stored_by_0_1_are_read_until_new_ones_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(&dir, Mode::Insert);
        c.delivery = Delivery::EffectivelyOnce;
        // The table and rows as 0.1 left them (tests/fixtures/0.1/flowgate_positions.sql).
        let fixture = include_str!("../../../tests/fixtures/0.1/flowgate_positions.sql");
        let url = format!("sqlite:{}?mode=rwc", dir.path().join("t.db").display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(AssertSqlSafe(fixture)).execute(&mut conn).await.unwrap();
        drop(conn);
        let mut sink = SqlSink::open(c.clone(), "orders-to-db").await.unwrap();
        let stored = sink.stored_position().await.unwrap().expect("the 0.1 rows");
        let parts: Vec<(&str, &str)> = stored.parts().collect();
        assert_eq!(parts, [("kafka:orders:0", "1042"), ("kafka:orders:3", "877")]);
        let mut b = batch(&[("", r#"{"id":1}"#)]);
        b.position = Some(Position::default().with("kafka:orders:0", "1043@1"));
        sink.write(&mut b).await.unwrap();
        sink.commit(&mut b).await.unwrap();
        // Once the pipeline stores a position of its own, that is the one.
        let mut again = SqlSink::open(c, "orders-to-db").await.unwrap();
        let parts: Vec<(String, String)> = again
            .stored_position()
            .await
            .unwrap()
            .expect("stored")
            .parts()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(parts, [("kafka:orders:0".to_string(), "1043@1".to_string())]);
    }

    #[tokio::test]
    async fn records_whose_names_cannot_be_columns_are_refused_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = SqlSink::open(config(&dir, Mode::Insert), "p").await.unwrap();
        // The first records would have made the table; each is refused alone.
        let b = put(
            &mut sink,
            &[
                ("", r#"{"id":1,"nul\u0000col":3}"#),
                ("", r#"{"id":1,"Name":"a","name":"b"}"#),
                ("", r#"{"":1}"#),
                ("", r#"{"id":2,"name":"x"}"#),
            ],
        )
        .await;
        let reasons: Vec<&str> = b.rejected.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].contains("control character"), "{reasons:?}");
        assert!(reasons[1].contains("would be one column"), "{reasons:?}");
        assert!(reasons[2].contains("empty name"), "{reasons:?}");
        assert_eq!(rows(&dir, "SELECT group_concat(name, ',') FROM pragma_table_info('t')").await, ["id,name"]);
        // Fields with no column are refused with their names, never dropped.
        let b = put(&mut sink, &[("", r#"{"ID2":2}"#), ("", r#"{"id":3,"Name":"y"}"#), ("", r#"{"id":4}"#)]).await;
        let reasons: Vec<&str> = b.rejected.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "fields without a column in table t: `ID2`",
                "fields without a column in table t: `Name` (the column is `name`)"
            ]
        );
        assert_eq!(rows(&dir, "SELECT group_concat(id, ',') FROM t").await, ["2,4"]);
        // A column added since is found, not refused.
        sqlx::raw_sql("ALTER TABLE t ADD COLUMN extra TEXT").execute(sink.conn().await.unwrap()).await.unwrap();
        let b = put(&mut sink, &[("", r#"{"id":5,"extra":"e"}"#)]).await;
        assert!(b.rejected.is_empty(), "{:?}", b.rejected);
    }

    #[tokio::test]
    async fn unknown_fields_can_be_ignored_or_stop_the_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(&dir, Mode::Insert);
        c.unknown_fields = UnknownFields::Ignore;
        let mut sink = SqlSink::open(c.clone(), "p").await.unwrap();
        put(&mut sink, &[("", r#"{"id":1}"#)]).await;
        let b = put(&mut sink, &[("", r#"{"id":2,"more":1}"#)]).await;
        assert!(b.rejected.is_empty());
        assert_eq!(rows(&dir, "SELECT group_concat(id, ',') FROM t").await, ["1,2"]);
        c.unknown_fields = UnknownFields::Fail;
        let mut sink = SqlSink::open(c, "p").await.unwrap();
        let err = sink.write(&mut batch(&[("", r#"{"id":3,"more":1}"#)])).await.unwrap_err();
        assert!(!err.is_retryable());
        assert!(err.message.contains("`more`"), "{}", err.message);
    }

    #[tokio::test]
    async fn a_record_cannot_pick_a_table_outside_the_allowed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(&dir, Mode::Insert);
        c.delivery = Delivery::EffectivelyOnce;
        c.table = "t_${value.t}".parse().unwrap();
        let mut sink = SqlSink::open(c.clone(), "p").await.unwrap();
        let b = put(&mut sink, &[("", r#"{"t":"a","id":1}"#), ("", r#"{"t":"a.b","id":2}"#)]).await;
        assert_eq!(b.rejected.len(), 1);
        assert!(b.rejected[0].reason.contains("no schema part"), "{:?}", b.rejected);
        c.table = "${value.t}".parse().unwrap();
        let mut sink = SqlSink::open(c.clone(), "p").await.unwrap();
        let b = put(
            &mut sink,
            &[
                ("", r#"{"t":"flowgate_source_positions","pipeline":"p","source":"x","position":"1"}"#),
                ("", r#"{"t":"../../etc","id":1}"#),
                ("", r#"{"t":"main.orders","id":1}"#),
                ("", r#"{"t":"sqlite_master","id":1}"#),
                ("", "{\"t\":\"evil\\nline\",\"id\":1}"),
                ("", r#"{"t":"ok","id":1}"#),
            ],
        )
        .await;
        assert_eq!(b.rejected.len(), 5, "{:?}", b.rejected);
        assert_eq!(b.records.len(), 1);
        assert_eq!(
            rows(&dir, "SELECT CAST(count(*) AS TEXT) FROM flowgate_source_positions WHERE source = 'x'").await,
            ["0"]
        );
        c.tables_allowed = Some(vec!["t_*".into()]);
        let mut sink = SqlSink::open(c, "p").await.unwrap();
        let b = put(&mut sink, &[("", r#"{"t":"t_b","id":1}"#), ("", r#"{"t":"ok","id":1}"#)]).await;
        assert_eq!(b.rejected.len(), 1);
        assert!(b.rejected[0].reason.contains("tables_allowed"), "{:?}", b.rejected);
    }

    fn json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("(op|before|after|id|\\PC{0,70})", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 500, failure_persistence: None, ..Default::default() })]

        /// Any JSON record through the row builder of every dialect and mode:
        /// a plan or a refusal with a reason, never a panic.
        #[test]
        fn any_record_is_planned_or_refused(value in json(), key in json(), t in "\\PC{0,70}") {
            let dir = tempfile::tempdir().unwrap();
            let mut record = Record::from_value(serde_json::to_vec(&value).unwrap());
            record.key = Some(serde_json::to_vec(&key).unwrap().into());
            let records = [record];
            for dialect in [Dialect::Postgres, Dialect::MySql, Dialect::Sqlite] {
                for mode in [Mode::Insert, Mode::Upsert, Mode::Cdc] {
                    let mut c = config(&dir, mode);
                    c.key = if mode == Mode::Upsert { vec!["id".into()] } else { Vec::new() };
                    c.table = "${value.t}".parse().unwrap();
                    let filter = TableFilter::new(vec![t.clone(), "*".into()]);
                    let (tables, refused) = plan(&records, &c, dialect, Some(&filter));
                    proptest::prop_assert_eq!(tables.iter().map(|(_, o)| o.ops.len().min(1)).sum::<usize>() + refused.len().min(1), 1);
                    for (_, ops) in &tables {
                        for (_, op) in &ops.ops {
                            for (column, v) in op.row().into_iter().flatten() {
                                for ty in ["text", "bigint", "jsonb", "text[]", "bytea", "DATETIME(6)", "LONGBLOB"] {
                                    let _ = dialect.cell(Some(v), ty);
                                }
                                proptest::prop_assert!(dialect.check_name(column).is_ok());
                            }
                        }
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn a_missing_table_without_create_is_a_clear_fatal_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(&dir, Mode::Insert);
        c.create_table = false;
        let mut sink = SqlSink::open(c, "p").await.unwrap();
        let err = sink.write(&mut batch(&[("", r#"{"a":1}"#)])).await.unwrap_err();
        assert!(!err.is_retryable());
        assert!(err.message.contains("create_table"), "{}", err.message);
    }
}
