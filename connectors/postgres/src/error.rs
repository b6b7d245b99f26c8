use flowgate_sdk::ConnectorError;
use pg_walstream::ReplicationError;

/// Errors of the Postgres CDC source.
#[derive(Debug, thiserror::Error)]
pub enum PgCdcError {
    /// A catalog query or setup statement over an ordinary connection.
    #[error("{context}")]
    Database {
        context: String,
        #[source]
        source: sqlx::Error,
    },
    /// The replication connection.
    #[error("{context}")]
    Replication {
        context: String,
        #[source]
        source: ReplicationError,
    },
    /// The database or the slot is not in a state Flowgate can stream from; the
    /// message says what to change.
    #[error("{0}")]
    Setup(String),
    /// The initial snapshot failed; it cannot be resumed.
    #[error("the initial snapshot failed; the next start takes it again from the beginning")]
    Snapshot(#[source] ReplicationError),
    #[error("cannot keep the source's state")]
    State(#[source] std::io::Error),
}

impl PgCdcError {
    pub fn db(context: impl Into<String>, source: sqlx::Error) -> Self {
        PgCdcError::Database { context: context.into(), source }
    }

    pub fn replication(context: impl Into<String>, source: ReplicationError) -> Self {
        PgCdcError::Replication { context: context.into(), source }
    }

    /// A lost connection, a restarting server, or too many clients is worth
    /// retrying; refused credentials, missing privileges and lost slots are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            PgCdcError::Database { source, .. } => db_retryable(source),
            // pg_walstream classifies by SQLSTATE: 55006, a slot still held by
            // the walsender of a process that just died, is transient; a lost or
            // invalidated slot (55000, 42704) is permanent.
            PgCdcError::Replication { source, .. } => !source.is_permanent(),
            PgCdcError::Setup(_) | PgCdcError::Snapshot(_) => false,
            PgCdcError::State(_) => true,
        }
    }
}

fn db_retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Protocol(_) => true,
        // Class 08 connection exception, 53 insufficient resources, 57P admin
        // shutdown / cannot connect now, 40 transaction rollback; 55006 an
        // object in use (a slot whose old walsender has not ended yet).
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") || c.starts_with("40") || c == "55006"
        }),
        _ => false,
    }
}

/// The server's word that the slot is unusable (dropped, invalidated:
/// SQLSTATE 55000 or 42704, which pg_walstream reports as `ReplicationSlot`).
pub(crate) fn is_slot_problem(e: &ReplicationError) -> bool {
    matches!(e, ReplicationError::ReplicationSlot(_))
}

impl From<PgCdcError> for ConnectorError {
    fn from(e: PgCdcError) -> Self {
        if e.is_retryable() {
            ConnectorError::transient("Postgres", e)
        } else {
            ConnectorError::fatal_from("Postgres", e)
        }
    }
}
