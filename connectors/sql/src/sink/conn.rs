//! The sink's connection, by each database's own sqlx driver: Postgres's
//! alone offers `COPY ... FROM STDIN`, and skipping the `Any` layer saves its
//! conversion of every bound value. Statements bind the same [`Cell`]s on each.

use sqlx::mysql::MySqlConnection;
use sqlx::postgres::PgConnection;
use sqlx::query::Query;
use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Connection, Database, Encode, Row, Type};

use super::cell::Cell;
use crate::dialect::Dialect;

pub(super) enum Conn {
    Postgres(PgConnection),
    MySql(MySqlConnection),
    Sqlite(SqliteConnection),
}

/// Runs `$body` with `$c` bound to the connection, whichever driver it is.
macro_rules! each {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            Conn::Postgres($c) => $body,
            Conn::MySql($c) => $body,
            Conn::Sqlite($c) => $body,
        }
    };
}

/// Binds `cells` in order, as the types each database takes.
fn bind_all<'a, 'q, DB: Database>(
    mut q: Query<'q, DB, <DB as Database>::Arguments>,
    cells: impl IntoIterator<Item = Cell<'a>>,
) -> Query<'q, DB, <DB as Database>::Arguments>
where
    Option<String>: Encode<'q, DB> + Type<DB>,
    bool: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
    f64: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
{
    for cell in cells {
        q = match cell {
            Cell::Null => q.bind(None::<String>),
            Cell::Bool(b) => q.bind(b),
            Cell::Int(i) => q.bind(i),
            Cell::Real(f) => q.bind(f),
            Cell::Text(s) => q.bind(s.into_owned()),
        };
    }
    q
}

impl Conn {
    /// Connects to `url` (already in the form sqlx takes) with the driver for `dialect`.
    pub(super) async fn connect(url: &str, dialect: Dialect) -> Result<Self, sqlx::Error> {
        Ok(match dialect {
            Dialect::Postgres => Conn::Postgres(PgConnection::connect(url).await?),
            Dialect::MySql => Conn::MySql(MySqlConnection::connect(url).await?),
            Dialect::Sqlite => Conn::Sqlite(SqliteConnection::connect(url).await?),
        })
    }

    /// Runs `sql` (one or more statements, nothing bound) by the simple protocol.
    pub(super) async fn raw(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        let sql = AssertSqlSafe(sql.to_string());
        each!(self, c => sqlx::raw_sql(sql).execute(c).await.map(drop))
    }

    /// Runs one prepared statement (kept in the connection's statement cache)
    /// with `cells` bound; the number of rows it affected.
    pub(super) async fn execute<'a>(
        &mut self,
        sql: &str,
        cells: impl IntoIterator<Item = Cell<'a>>,
    ) -> Result<u64, sqlx::Error> {
        let sql = AssertSqlSafe(sql.to_string());
        each!(self, c => Ok(bind_all(sqlx::query(sql), cells).execute(c).await?.rows_affected()))
    }

    /// The rows of a query with text parameters `binds`, every column read as
    /// text (the query casts what is not).
    pub(super) async fn texts(&mut self, sql: &str, binds: &[&str]) -> Result<Vec<Vec<String>>, sqlx::Error> {
        let sql = AssertSqlSafe(sql.to_string());
        let cells = binds.iter().map(|b| Cell::Text((*b).into()));
        fn columns<R: Row>(r: &R) -> Result<Vec<String>, sqlx::Error>
        where
            usize: sqlx::ColumnIndex<R>,
            String: for<'r> sqlx::Decode<'r, R::Database> + Type<R::Database>,
        {
            (0..r.len()).map(|i| r.try_get::<String, _>(i)).collect()
        }
        each!(self, c => bind_all(sqlx::query(sql), cells).fetch_all(c).await?.iter().map(columns).collect())
    }

    /// Runs `sql` (statements, nothing bound) by the simple protocol in one
    /// round trip; the columns, as text, of the last row any of them
    /// returned (none when none did).
    pub(super) async fn last_row(&mut self, sql: &str) -> Result<Vec<Option<String>>, sqlx::Error> {
        let sql = AssertSqlSafe(sql.to_string());
        let conn = self.postgres().expect("statements by the simple protocol with rows: Postgres only");
        let rows = sqlx::raw_sql(sql).fetch_all(conn).await?;
        rows.last().map_or(Ok(Vec::new()), |r| (0..r.len()).map(|i| r.try_get::<Option<String>, _>(i)).collect())
    }

    /// The Postgres connection, for what only Postgres has (`COPY`).
    pub(super) fn postgres(&mut self) -> Option<&mut PgConnection> {
        match self {
            Conn::Postgres(c) => Some(c),
            _ => None,
        }
    }

    pub(super) async fn close(self) -> Result<(), sqlx::Error> {
        each!(self, c => c.close().await)
    }
}
