use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use flowgate_sdk::{Batch, ConnectorError, Sink, async_trait};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Connection, Row};

use crate::error::is_row_error;
use crate::rows::{Cell, cells, field_names, parse_object, quote_ident};
use crate::{SqlError, SqliteSinkConfig, Synchronous};

/// SQLite accepts at most 32766 bound parameters per statement; beyond a few
/// hundred rows per statement nothing is gained.
const MAX_PARAMS: usize = 32766;
const MAX_ROWS_PER_STATEMENT: usize = 500;

pub struct SqliteSink {
    config: SqliteSinkConfig,
    options: SqliteConnectOptions,
    conn: Option<SqliteConnection>,
    columns: Option<Vec<String>>,
    /// The multi-row INSERT for a full chunk, built once.
    full_insert: String,
    stage: Arc<str>,
}

fn connect_options(config: &SqliteSinkConfig) -> Result<SqliteConnectOptions, SqlError> {
    let url = if config.url.starts_with("sqlite:") { config.url.clone() } else { format!("sqlite:{}", config.url) };
    let options =
        SqliteConnectOptions::from_str(&url).map_err(|source| SqlError::Connect { url: config.url.clone(), source })?;
    Ok(options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match config.synchronous {
            Synchronous::Full => SqliteSynchronous::Full,
            Synchronous::Normal => SqliteSynchronous::Normal,
        })
        .busy_timeout(Duration::from_secs(5)))
}

fn insert_sql(table: &str, columns: &[String], rows: usize) -> String {
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let row = format!("({})", vec!["?"; columns.len()].join(","));
    format!("INSERT INTO {} ({}) VALUES {}", quote_ident(table), cols.join(","), vec![row; rows].join(","))
}

fn bind_cells<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    cells: &'q [Cell],
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    for cell in cells {
        q = match cell {
            Cell::Null => q.bind(None::<i64>),
            Cell::Int(i) => q.bind(*i),
            Cell::Real(f) => q.bind(*f),
            Cell::Text(s) => q.bind(s.as_str()),
        };
    }
    q
}

impl SqliteSink {
    pub async fn open(config: SqliteSinkConfig) -> Result<Self, SqlError> {
        let options = connect_options(&config)?;
        let mut sink =
            SqliteSink { columns: None, full_insert: String::new(), stage: "sink".into(), conn: None, options, config };
        // Fail at start-up, not at the first record, when the database cannot be opened.
        sink.conn().await?;
        if let Some(columns) = sink.config.columns.clone() {
            sink.set_columns(columns).await?;
        } else if let Some(existing) = sink.table_columns().await? {
            sink.set_columns(existing).await?;
        }
        Ok(sink)
    }

    fn write_err(&self, source: sqlx::Error) -> SqlError {
        SqlError::Write { table: self.config.table.clone(), source }
    }

    async fn conn(&mut self) -> Result<&mut SqliteConnection, SqlError> {
        if self.conn.is_none() {
            let conn = SqliteConnection::connect_with(&self.options)
                .await
                .map_err(|source| SqlError::Connect { url: self.config.url.clone(), source })?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    async fn table_columns(&mut self) -> Result<Option<Vec<String>>, SqlError> {
        let sql = format!("PRAGMA table_info({})", quote_ident(&self.config.table));
        let conn = self.conn().await?;
        let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(conn).await;
        let rows = rows.map_err(|e| self.write_err(e))?;
        let names: Vec<String> = rows.iter().map(|r| r.get::<String, _>("name")).collect();
        Ok((!names.is_empty()).then_some(names))
    }

    async fn set_columns(&mut self, columns: Vec<String>) -> Result<(), SqlError> {
        if self.config.create_table {
            let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
            let sql = format!("CREATE TABLE IF NOT EXISTS {} ({})", quote_ident(&self.config.table), cols.join(", "));
            let conn = self.conn().await?;
            let done = sqlx::query(AssertSqlSafe(sql)).execute(conn).await;
            done.map_err(|e| self.write_err(e))?;
        }
        self.full_insert = insert_sql(&self.config.table, &columns, self.rows_per_statement(columns.len()));
        self.columns = Some(columns);
        Ok(())
    }

    fn rows_per_statement(&self, ncols: usize) -> usize {
        (MAX_PARAMS / ncols.max(1)).clamp(1, MAX_ROWS_PER_STATEMENT)
    }

    /// All rows in one transaction; `Ok(Err(_))` when a row-level error aborted it.
    async fn insert_all(&mut self, cells: &[Cell], ncols: usize) -> Result<Result<(), sqlx::Error>, SqlError> {
        let per = self.rows_per_statement(ncols);
        let columns = self.columns.clone().unwrap_or_default();
        let table = self.config.table.clone();
        let full_insert = self.full_insert.clone();
        let conn = self.conn().await?;
        let result: Result<(), sqlx::Error> = async {
            let mut tx = conn.begin().await?;
            for chunk in cells.chunks(per * ncols) {
                let rows = chunk.len() / ncols;
                let sql = if rows == per { full_insert.clone() } else { insert_sql(&table, &columns, rows) };
                bind_cells(sqlx::query(AssertSqlSafe(sql)), chunk).execute(&mut *tx).await?;
            }
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => Ok(Ok(())),
            Err(e) if is_row_error(&e) => Ok(Err(e)),
            Err(e) => {
                // The connection may be broken; start afresh on the retry.
                self.conn = None;
                Err(self.write_err(e))
            }
        }
    }

    /// Row by row in one transaction, for a batch that held a bad row: the bad
    /// rows are returned with the database's message, the others committed.
    async fn insert_isolating(&mut self, cells: &[Cell], ncols: usize) -> Result<Vec<(usize, String)>, SqlError> {
        let sql = insert_sql(&self.config.table, self.columns.as_deref().unwrap_or_default(), 1);
        let conn = self.conn().await?;
        let result: Result<Vec<(usize, String)>, sqlx::Error> = async {
            let mut failed = Vec::new();
            let mut tx = conn.begin().await?;
            for (i, row) in cells.chunks(ncols).enumerate() {
                // A failed statement is undone alone; the transaction goes on.
                match bind_cells(sqlx::query(AssertSqlSafe(sql.clone())), row).execute(&mut *tx).await {
                    Ok(_) => {}
                    Err(e) if is_row_error(&e) => failed.push((i, e.to_string())),
                    Err(e) => return Err(e),
                }
            }
            tx.commit().await?;
            Ok(failed)
        }
        .await;
        result.map_err(|e| {
            self.conn = None;
            self.write_err(e)
        })
    }
}

#[async_trait]
impl Sink for SqliteSink {
    async fn write(&mut self, batch: &mut Batch) -> Result<(), ConnectorError> {
        // Parse first: a record that is not a JSON object is refused, not fatal.
        let mut objects = Vec::with_capacity(batch.records.len());
        let mut refused = Vec::new();
        for (i, r) in batch.records.iter().enumerate() {
            match parse_object(&r.value) {
                Ok(o) => objects.push((i, o)),
                Err(reason) => refused.push((i, reason)),
            }
        }
        // Columns come from the first record that has fields: `{}` has none.
        if self.columns.is_none()
            && let Some((first, _)) = objects.iter().find(|(_, o)| !o.is_empty())
        {
            if !self.config.create_table {
                return Err(ConnectorError::fatal(format!(
                    "table {} does not exist; create it or set `create_table: true`",
                    self.config.table
                )));
            }
            let columns = field_names(&batch.records[*first].value);
            self.set_columns(columns).await?;
        }
        if self.columns.is_none() {
            // Only empty objects so far: nothing to create a table from.
            for (i, _) in objects.drain(..) {
                refused.push((i, "the record has no fields, and the table's columns are not known yet".into()));
            }
        }
        if !objects.is_empty() {
            let ncols = self.columns.as_ref().map_or(0, Vec::len);
            if ncols == 0 {
                return Err(SqlError::NoColumns { table: self.config.table.clone() }.into());
            }
            let mut flat = Vec::with_capacity(objects.len() * ncols);
            let columns = self.columns.as_deref().unwrap_or_default();
            let index: Vec<usize> = objects.iter().map(|(i, _)| *i).collect();
            for (_, o) in objects {
                cells(o, columns, &mut flat);
            }
            if let Err(first) = self.insert_all(&flat, ncols).await? {
                tracing::debug!(error = %first, "a row was refused; writing the batch row by row");
                for (row, reason) in self.insert_isolating(&flat, ncols).await? {
                    refused.push((index[row], reason));
                }
            }
        }
        if !refused.is_empty() {
            refused.sort_unstable_by_key(|(i, _)| *i);
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

    async fn close(&mut self) -> Result<(), ConnectorError> {
        if let Some(conn) = self.conn.take() {
            conn.close().await.map_err(|e| self.write_err(e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use flowgate_sdk::Record;

    use super::*;

    /// A database `t.db` in `dir`: its URL, and a config creating table `t`
    /// from the first record.
    fn fresh(dir: &tempfile::TempDir) -> (String, SqliteSinkConfig) {
        let url = format!("sqlite:{}", dir.path().join("t.db").display());
        let config = SqliteSinkConfig {
            url: url.clone(),
            table: "t".into(),
            columns: None,
            create_table: true,
            synchronous: Synchronous::Normal,
        };
        (url, config)
    }

    fn batch(values: &[&str]) -> Batch {
        let mut b = Batch::with_capacity(0, values.len());
        b.records.extend(values.iter().map(|v| Record::from_value(v.to_string())));
        b
    }

    async fn query_all(url: &str, sql: &str) -> Vec<(i64, Option<String>)> {
        let mut c = SqliteConnection::connect(url).await.unwrap();
        sqlx::query(AssertSqlSafe(sql.to_string()))
            .fetch_all(&mut c)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    #[tokio::test]
    async fn creates_table_from_first_record_and_isolates_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let (url, config) = fresh(&dir);
        let mut sink = SqliteSink::open(config.clone()).await.unwrap();
        let mut b = batch(&[r#"{"id":1,"name":"a"}"#, r#"{"id":2}"#]);
        sink.write(&mut b).await.unwrap();
        assert!(b.rejected.is_empty());
        // A unique index makes the duplicate id a row error; `[1]` is not an object.
        let mut c = SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("CREATE UNIQUE INDEX t_id ON t(id)").execute(&mut c).await.unwrap();
        let mut b = batch(&[r#"{"id":3,"name":"c"}"#, r#"{"id":1,"name":"dup"}"#, "[1]", r#"{"id":4}"#]);
        sink.write(&mut b).await.unwrap();
        assert_eq!(b.records.len(), 2);
        let reasons: Vec<&str> = b.rejected.iter().map(|r| r.reason.as_str()).collect();
        assert!(reasons[0].contains("UNIQUE constraint failed"), "{reasons:?}");
        assert!(reasons[1].contains("not a JSON object"), "{reasons:?}");
        assert_eq!(b.rejected[0].record.value.as_ref(), br#"{"id":1,"name":"dup"}"#);
        assert_eq!(
            query_all(&url, "SELECT id, name FROM t ORDER BY id").await,
            [(1, Some("a".into())), (2, None), (3, Some("c".into())), (4, None)]
        );
        // A new sink on the existing table takes its columns from the table.
        sink.close().await.unwrap();
        let mut again = SqliteSink::open(SqliteSinkConfig { create_table: false, ..config }).await.unwrap();
        let mut b = batch(&[r#"{"name":"e","id":5,"extra":true}"#]);
        again.write(&mut b).await.unwrap();
        assert_eq!(query_all(&url, "SELECT id, name FROM t WHERE id = 5").await, [(5, Some("e".into()))]);
    }

    #[tokio::test]
    async fn an_empty_first_record_neither_defines_nor_breaks_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let (url, config) = fresh(&dir);
        let mut sink = SqliteSink::open(config).await.unwrap();
        let mut b = batch(&["{}"]);
        sink.write(&mut b).await.unwrap();
        assert_eq!(b.rejected.len(), 1);
        let mut b = batch(&["{}", r#"{"id":1,"id":2,"name":"x"}"#]);
        sink.write(&mut b).await.unwrap();
        assert_eq!(b.records.len(), 2, "{:?}", b.rejected);
        // `{}` is a row of NULLs once the columns are known; a repeated key is one column.
        assert_eq!(query_all(&url, "SELECT count(*), group_concat(id || name) FROM t").await, [(2, Some("2x".into()))]);
    }

    #[tokio::test]
    async fn large_batches_span_several_statements() {
        let dir = tempfile::tempdir().unwrap();
        let (url, config) = fresh(&dir);
        let config =
            SqliteSinkConfig { columns: Some(vec!["id".into(), "v".into()]), synchronous: Synchronous::Full, ..config };
        let mut sink = SqliteSink::open(config).await.unwrap();
        let values: Vec<String> = (0..1234).map(|i| format!(r#"{{"id":{i},"v":"x{i}"}}"#)).collect();
        let mut b = batch(&values.iter().map(String::as_str).collect::<Vec<_>>());
        sink.write(&mut b).await.unwrap();
        assert_eq!(query_all(&url, "SELECT count(*), max(v) FROM t").await, [(1234, Some("x999".into()))]);
    }

    #[tokio::test]
    async fn missing_table_without_create_is_a_clear_fatal_error() {
        let dir = tempfile::tempdir().unwrap();
        // A plain path works as well as a `sqlite:` URL.
        let (_, config) = fresh(&dir);
        let url = dir.path().join("t.db").display().to_string();
        let config = SqliteSinkConfig {
            url,
            table: "nope".into(),
            create_table: false,
            synchronous: Synchronous::Full,
            ..config
        };
        let mut sink = SqliteSink::open(config).await.unwrap();
        let err = sink.write(&mut batch(&[r#"{"a":1}"#])).await.unwrap_err();
        assert!(!err.is_retryable());
        assert!(err.message.contains("create_table"), "{}", err.message);
    }
}
