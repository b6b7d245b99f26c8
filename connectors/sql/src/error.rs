use flowgate_sdk::ConnectorError;
use sqlx::error::DatabaseError as _;

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("cannot connect to the database {url}")]
    Connect { url: String, source: sqlx::Error },
    #[error("cannot determine the columns of table {table}")]
    NoColumns { table: String },
    #[error("writing to table {table} failed")]
    Write { table: String, source: sqlx::Error },
    /// Effectively-once: a commit whose answer was lost is still under way.
    #[error("a commit whose answer was lost is still under way after {waited:?}")]
    CommitUnresolved { waited: std::time::Duration },
}

impl SqlError {
    /// For `map_err`: a failed statement on `table`.
    pub(crate) fn write(table: &str) -> impl FnOnce(sqlx::Error) -> SqlError + '_ {
        move |source| SqlError::Write { table: table.to_string(), source }
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            SqlError::Connect { source, .. } | SqlError::Write { source, .. } => is_transient(source),
            SqlError::NoColumns { .. } => false,
            // Until it ends, whether it went through is not known.
            SqlError::CommitUnresolved { .. } => true,
        }
    }
}

/// An error that concerns one row (a constraint violation, a value of the wrong
/// type or out of range), so the row goes to the error policy and the rest of
/// its batch is written.
pub(crate) fn is_row_error(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else { return false };
    if db.is_unique_violation()
        || db.is_foreign_key_violation()
        || db.is_check_violation()
        || matches!(db.kind(), sqlx::error::ErrorKind::NotNullViolation)
    {
        return true;
    }
    let code = db.code().unwrap_or_default();
    // SQLSTATE classes 22 (data exception) and 23 (integrity constraint), as
    // Postgres and MySQL report them.
    if code.len() == 5 && (code.starts_with("22") || code.starts_with("23")) {
        return true;
    }
    // Postgres's 21000 from an `ON CONFLICT` statement given one row twice:
    // keys the sink tells apart by their JSON (`0` and `-0.0`) that the
    // column's type makes one. Applied one by one, each goes in.
    if code == "21000" && db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some() {
        return true;
    }
    // MySQL files some bad values under the generic HY000: incorrect value
    // (1366, 1292), data truncated (1265), out of range (1264), too long (1406).
    if mysql_number(db.as_ref()).is_some_and(|n| matches!(n, 1264 | 1265 | 1292 | 1366 | 1406)) {
        return true;
    }
    // SQLite result codes: SQLITE_CONSTRAINT (19), SQLITE_TOOBIG (18), SQLITE_MISMATCH (20).
    sqlite_code(db.as_ref()).is_some_and(|c| matches!(c & 0xff, 18..=20))
}

/// Worth retrying: the connection or server went away, a deadlock, a
/// serialization failure, a busy or locked database, a full disk.
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // Postgres/MySQL SQLSTATE: 08 connection, 40 rollback (deadlock,
            // serialization), 53 resources, 57P admin shutdown, 55P03 lock wait.
            // 08P01 stays among them: PgBouncer reports its pooler outages
            // with it. The one non-transient cause seen (a NUL in a column
            // name, which cannot be sent) is refused per record before.
            let sqlstate =
                code.len() == 5 && (["08", "40", "53", "57P"].iter().any(|c| code.starts_with(c)) || code == "55P03");
            // MySQL lock wait timeout (1205, under HY000) and deadlock (1213).
            let mysql = mysql_number(db.as_ref()).is_some_and(|n| matches!(n, 1205 | 1213));
            // SQLite: BUSY 5, LOCKED 6, IOERR 10, FULL 13, CANTOPEN 14.
            let sqlite = sqlite_code(db.as_ref()).is_some_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13 | 14));
            sqlstate || mysql || sqlite
        }
        _ => false,
    }
}

/// MySQL's (and MariaDB's) error number; `None` for the other databases.
fn mysql_number(db: &dyn sqlx::error::DatabaseError) -> Option<u16> {
    db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().map(|e| e.number())
}

/// SQLite's (extended) result code; `None` for the other databases, whose
/// SQLSTATEs can look like numbers too (`42501`).
fn sqlite_code(db: &dyn sqlx::error::DatabaseError) -> Option<i32> {
    db.try_downcast_ref::<sqlx::sqlite::SqliteError>()?.code()?.parse().ok()
}

impl From<SqlError> for ConnectorError {
    fn from(e: SqlError) -> Self {
        if e.is_retryable() {
            ConnectorError::transient("database", e)
        } else {
            ConnectorError::fatal_from("database", e)
        }
    }
}
