use flowgate_sdk::ConnectorError;

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("cannot open the database {url}")]
    Connect { url: String, source: sqlx::Error },
    #[error("cannot determine the columns of table {table}: the first record is not a JSON object")]
    NoColumns { table: String },
    #[error("writing to table {table} failed")]
    Write { table: String, source: sqlx::Error },
}

/// SQLite result codes that a later attempt may not meet.
const BUSY: &str = "5";
const LOCKED: &str = "6";
const IOERR: &str = "10";
const FULL: &str = "13";
const CANTOPEN: &str = "14";

/// An error that concerns one row (constraint violation, wrong type), so the row
/// goes to the error policy and the rest of its batch is written.
pub(crate) fn is_row_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.is_unique_violation()
                || db.is_foreign_key_violation()
                || db.is_check_violation()
                || matches!(db.kind(), sqlx::error::ErrorKind::NotNullViolation)
                // SQLITE_CONSTRAINT (other), SQLITE_TOOBIG, SQLITE_MISMATCH.
                || db.code().is_some_and(|c| {
                    let primary = c.parse::<i32>().map(|c| c & 0xff).unwrap_or(0);
                    matches!(primary, 18..=20)
                })
        }
        _ => false,
    }
}

fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            let primary = c.parse::<i32>().map(|c| (c & 0xff).to_string()).unwrap_or_default();
            [BUSY, LOCKED, IOERR, FULL, CANTOPEN].contains(&primary.as_str())
        }),
        _ => false,
    }
}

impl SqlError {
    pub fn is_retryable(&self) -> bool {
        match self {
            SqlError::Connect { source, .. } | SqlError::Write { source, .. } => is_transient(source),
            SqlError::NoColumns { .. } => false,
        }
    }
}

impl From<SqlError> for ConnectorError {
    fn from(e: SqlError) -> Self {
        let message = e.to_string();
        if e.is_retryable() { ConnectorError::transient(message, e) } else { ConnectorError::fatal_from(message, e) }
    }
}
