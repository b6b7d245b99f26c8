//! The source position of effectively-once sinks, kept with the rows in table
//! `flowgate_source_positions`: stored in the batch's transaction, read back
//! when the pipeline starts, and asked after when the answer to a `COMMIT`
//! was lost.

use std::time::Duration;

use flowgate_sdk::{Batch, ConnectorError, Position};

use super::SqlSink;
use super::cell::Cell;
use crate::config::Delivery;
use crate::dialect::Dialect;
use crate::error::SqlError;

/// How long a commit whose answer was lost may take to end.
const COMMIT_WAIT: Duration = Duration::from_secs(5);

impl SqlSink {
    /// Stores each part of the source's position, in the batch's
    /// transaction; on Postgres, that transaction's id.
    pub(super) async fn save_position(&mut self, position: &Position) -> Result<Option<String>, SqlError> {
        let (sql, dialect) = (self.dialect.save_position(), self.dialect);
        let pipeline = self.pipeline.to_string();
        let conn = self.conn().await?;
        let table = "flowgate_source_positions";
        let mut xid = None;
        for (source, at) in position.parts() {
            if dialect == Dialect::Postgres {
                let rows = conn.texts(sql, &[&pipeline, source, at]).await.map_err(SqlError::write(table))?;
                xid = rows.into_iter().next().and_then(|r| r.into_iter().next());
            } else {
                let cells = [Cell::Text(pipeline.as_str().into()), Cell::Text(source.into()), Cell::Text(at.into())];
                conn.execute(sql, cells).await.map_err(SqlError::write(table))?;
            }
        }
        Ok(xid)
    }

    /// The position stored for the pipeline (`Sink::stored_position`), or the one
    /// 0.1 stored when it has none of its own; `None` when not effectively-once.
    pub(super) async fn load_position(&mut self) -> Result<Option<Position>, ConnectorError> {
        if self.config.delivery != Delivery::EffectivelyOnce {
            return Ok(None);
        }
        let dialect = self.dialect;
        let mut position = self.stored(dialect.load_positions(), "flowgate_source_positions").await?;
        if position.is_empty() && self.describe("flowgate_positions").await?.is_some() {
            // Stored by 0.1: the same parts, as numbers.
            position = self.stored(dialect.load_legacy_positions(), "flowgate_positions").await?;
        }
        Ok((!position.is_empty()).then_some(position))
    }

    /// The pipeline's position as `sql` reads it from `table`: a row per
    /// part, its name and its text.
    async fn stored(&mut self, sql: &str, table: &str) -> Result<Position, SqlError> {
        let pipeline = self.pipeline.to_string();
        let rows = self.conn().await?.texts(sql, &[&pipeline]).await.map_err(SqlError::write(table))?;
        let mut position = Position::default();
        for mut r in rows {
            position.set(r.swap_remove(0), r.swap_remove(0));
        }
        Ok(position)
    }

    /// Whether `batch` is the one whose commit's answer was lost, and that
    /// commit went through. Postgres is asked after the transaction; on the
    /// others, the position stored with the rows says so, read once the
    /// transaction has let go of it. Read while the `COMMIT` is still under
    /// way (a slow disk, a synchronous standby), the position would be the
    /// one before, and the batch would go in twice.
    pub(super) async fn committed_before(&mut self, batch: &Batch) -> Result<bool, ConnectorError> {
        let Some((unsure, xid)) = self.unsure.take() else { return Ok(false) };
        if batch.position.as_ref() != Some(&unsure) {
            return Ok(false);
        }
        let outcome: Result<bool, ConnectorError> = async {
            if let Some(xid) = &xid
                && let Some(committed) = self.outcome(xid).await?
            {
                return Ok(committed);
            }
            let stored = self.stored(self.dialect.load_positions_settled(), "flowgate_source_positions").await?;
            Ok(unsure.parts().all(|(part, at)| stored.get(part) == Some(at)))
        }
        .await;
        if outcome.is_err() {
            self.lost();
            self.unsure = Some((unsure, xid));
        }
        outcome
    }

    /// Whether Postgres transaction `xid` committed; `None` when it is too
    /// old to say. One still under way is ended first: the backend running
    /// it is this sink's, whose connection broke (behind a pooler, only that
    /// backend is in this transaction).
    async fn outcome(&mut self, xid: &str) -> Result<Option<bool>, SqlError> {
        let table = "flowgate_source_positions";
        let conn = self.conn().await?;
        let started = tokio::time::Instant::now();
        let mut ended = false;
        loop {
            let rows = conn
                .texts("SELECT coalesce(txid_status($1::bigint), 'unknown')", &[xid])
                .await
                .map_err(SqlError::write(table))?;
            match rows.first().and_then(|r| r.first()).map(String::as_str) {
                Some("committed") => return Ok(Some(true)),
                Some("aborted") => return Ok(Some(false)),
                Some("in progress") => {}
                _ => return Ok(None),
            }
            if started.elapsed() >= COMMIT_WAIT {
                return Err(SqlError::CommitUnresolved { waited: COMMIT_WAIT });
            }
            if !ended {
                // Not allowed (another role's backend), it is waited for.
                let end = "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity \
                           WHERE backend_xid = ($1::bigint % 4294967296)::text::xid";
                if let Err(e) = conn.texts(end, &[xid]).await {
                    tracing::debug!(error = %e, "cannot end the transaction of a broken connection; waiting for it");
                }
                ended = true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
