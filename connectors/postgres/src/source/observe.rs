//! The source's metrics beyond the engine's counts: the slot's lag as the
//! server counts it, whether the stream is connected, reconnects, how far
//! behind its commits the changes read are, and snapshot rows by table.
//! Labels are the pipeline, the slot and (for snapshots) the captured
//! tables: all bounded by the configuration.

use std::sync::Arc;
use std::time::Duration;

use crate::catalog;

/// How often the slot's lag is read from the server.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// Reads `pg_current_wal_lsn() - confirmed_flush_lsn` of the slot (the WAL
/// the server keeps for it) on a connection of its own, for as long as it
/// lives: `flowgate_postgres_slot_lag_bytes` and
/// `flowgate_postgres_confirmed_lsn`.
pub(super) struct LagSampler(tokio::task::JoinHandle<()>);

impl LagSampler {
    pub(super) fn start(url: String, pipeline: Arc<str>, slot: String) -> Self {
        let labels = [("pipeline", pipeline.to_string()), ("slot", slot.clone())];
        let lag = metrics::gauge!("flowgate_postgres_slot_lag_bytes", &labels);
        let confirmed = metrics::gauge!("flowgate_postgres_confirmed_lsn", &labels);
        LagSampler(tokio::spawn(async move {
            let mut conn = None;
            loop {
                if conn.is_none() {
                    conn = catalog::connect(&url).await.ok();
                }
                if let Some(c) = conn.as_mut() {
                    let sampled: Result<Option<(Option<i64>, Option<i64>)>, _> = sqlx::query_as(
                        "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8, (confirmed_flush_lsn - '0/0')::int8
                           FROM pg_replication_slots WHERE slot_name = $1",
                    )
                    .bind(&slot)
                    .fetch_optional(&mut *c)
                    .await;
                    match sampled {
                        Ok(Some((Some(bytes), Some(at)))) => {
                            flowgate_sdk::health::lag_bytes(&pipeline, bytes.max(0) as u64);
                            lag.set(bytes as f64);
                            confirmed.set(at as f64);
                        }
                        Ok(_) => {}
                        // Made anew at the next sample.
                        Err(_) => conn = None,
                    }
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        }))
    }
}

impl Drop for LagSampler {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether the replication stream is connected: `flowgate_postgres_connected`
/// (1 or 0).
pub(super) fn connected(pipeline: &str, up: bool) {
    metrics::gauge!("flowgate_postgres_connected", "pipeline" => pipeline.to_string()).set(if up { 1.0 } else { 0.0 });
}

/// A lost replication connection restored: `flowgate_postgres_reconnects_total`.
pub(super) fn reconnected(pipeline: &str) {
    metrics::counter!("flowgate_postgres_reconnects_total", "pipeline" => pipeline.to_string()).increment(1);
}

/// How far behind the source the last change read is: now minus its
/// commit's time, `flowgate_postgres_behind_seconds`.
pub(super) fn behind(pipeline: &str, commit_ms: i64, now_ms: i64) {
    let seconds = (now_ms - commit_ms).max(0) as f64 / 1000.0;
    metrics::gauge!("flowgate_postgres_behind_seconds", "pipeline" => pipeline.to_string()).set(seconds);
}

/// Rows of a table's snapshot emitted: `flowgate_postgres_snapshot_rows_total`.
pub(super) fn snapshot_rows(pipeline: &str, table: &str, rows: u64) {
    metrics::counter!("flowgate_postgres_snapshot_rows_total", "pipeline" => pipeline.to_string(), "table" => table.to_string())
        .increment(rows);
}

/// The planner's estimate of a table's rows when its snapshot starts:
/// `flowgate_postgres_snapshot_rows_estimated`.
pub(super) fn snapshot_estimate(pipeline: &str, table: &str, rows: f64) {
    metrics::gauge!("flowgate_postgres_snapshot_rows_estimated", "pipeline" => pipeline.to_string(), "table" => table.to_string())
        .set(rows);
}
