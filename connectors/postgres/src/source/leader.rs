//! Which process runs a slot when the same pipeline runs on several machines
//! (a standby beside the active one). A replication slot admits one walsender,
//! but the phases before streaming (publication, state, snapshot) must not
//! run twice either: the active process holds a session-level advisory lock
//! named after the slot for as long as it runs it; the others poll for it and
//! take over when it is let go. A process that dies lets it go with its
//! session: at once when the server sees the connection close, and within
//! about 25 s when the network is cut (the session's TCP keepalives).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgConnection;
use tokio::time::Instant;

use crate::catalog;
use crate::error::PgCdcError;

/// How often a standby tries to take over.
pub(super) const STANDBY_POLL: Duration = Duration::from_millis(500);

/// How often the leader makes sure its lock's session is alive.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The session that holds the lock.
pub(super) struct Leader {
    conn: PgConnection,
    checked: Instant,
}

impl Leader {
    /// The lock of `slot`, if no other process holds it.
    pub(super) async fn try_acquire(url: &str, slot: &str) -> Result<Option<Leader>, PgCdcError> {
        let mut conn = catalog::connect(url).await?;
        // The server drops a session whose client vanished (a cut network)
        // after about 10 + 5 x 3 s instead of the system's default hours.
        sqlx::query(
            "SELECT set_config('tcp_keepalives_idle', '10', false), set_config('tcp_keepalives_interval', '5', false),
                    set_config('tcp_keepalives_count', '3', false)",
        )
        .execute(&mut conn)
        .await
        .map_err(|e| PgCdcError::db("cannot set up the leader session", e))?;
        let got: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('flowgate.postgres_cdc'), hashtext($1))")
                .bind(slot)
                .fetch_one(&mut conn)
                .await
                .map_err(|e| PgCdcError::db("cannot take the slot's leader lock", e))?;
        Ok(got.then(|| Leader { conn, checked: Instant::now() }))
    }

    /// Whether the lock's session is still there (checked every few seconds):
    /// without it, another process may have taken over.
    pub(super) async fn still_held(&mut self) -> bool {
        if self.checked.elapsed() < CHECK_EVERY {
            return true;
        }
        self.checked = Instant::now();
        let ping = sqlx::query("SELECT 1").execute(&mut self.conn);
        matches!(tokio::time::timeout(Duration::from_secs(5), ping).await, Ok(Ok(_)))
    }
}

/// Says which process runs the slot: the metric `flowgate_postgres_cdc_active`
/// (1 active, 0 standby) per pipeline, and the pipeline's `source` on `/health`.
pub(super) fn report(pipeline: &Arc<str>, slot: &str, active: bool) {
    metrics::gauge!("flowgate_postgres_cdc_active", "pipeline" => pipeline.to_string(), "slot" => slot.to_string())
        .set(if active { 1.0 } else { 0.0 });
    let note = if active {
        format!("active: this process runs replication slot `{slot}`")
    } else {
        format!("standby: another process runs replication slot `{slot}`")
    };
    flowgate_sdk::health::note_source(pipeline, Some(note));
}
