//! The `postgres_cdc` source: an initial snapshot through the slot's exported
//! snapshot, then the slot's change stream (pgoutput, protocol 1).
//!
//! Positions: every batch remembers the end LSN of the last transaction it
//! completes. The slot's confirmed position moves to that LSN only when the
//! batch and every batch before it are acknowledged, so a restart replays at
//! most the unacknowledged stretch. With nothing in flight the slot follows the
//! server's WAL end (from keepalives), so an idle or unpublished workload does
//! not make it hold WAL.
//!
//! Layout: `start` decides, from the slot and the state directory's record of
//! it, how the source starts; `snapshot` creates the slot with an exported
//! snapshot and reads the snapshot through it; `stream` reads the change
//! stream (reconnecting when the connection is lost) and holds the decoder
//! that turns its events into records.

mod snapshot;
mod start;
mod stream;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flowgate_sdk::{
    Batch, ConnectorError, OpenContext, PendingPositions, Read, Source, StateStore, Watermark, async_trait,
};
use pg_walstream::{LogicalReplicationStream, SnapshotRows};
use tokio::time::Instant;

use crate::catalog;
use crate::config::{PostgresCdcConfig, SnapshotMode};
use crate::error::PgCdcError;
use start::{SlotRecord, StartPlan, plan_start, state_key};
use stream::Decoder;

/// Where the initial snapshot stands.
#[derive(Debug, PartialEq, Eq)]
enum SnapshotProgress {
    /// None running, or it is recorded as done.
    Idle,
    /// Rows are being read; the last batch of them so far.
    Reading { last_seq: Option<u64> },
    /// All rows are read; done once this batch is acknowledged.
    Unacked { last_seq: u64 },
}

enum Phase {
    Snapshot {
        rows: Box<SnapshotRows>,
        started_ms: i64,
        /// The connection whose transaction keeps the tables from being
        /// rewritten until they are copied (see `catalog::lock_published`).
        _locks: sqlx::PgConnection,
    },
    Streaming(Box<LogicalReplicationStream>),
    Disconnected {
        retry_at: Instant,
    },
    /// `initial_only`: the snapshot is out; the input ends here.
    Finished,
}

/// A batch's position for the acknowledgement queue.
#[derive(Debug)]
enum Mark {
    Snapshot,
    Lsn(u64),
}

pub struct PostgresCdcSource {
    config: PostgresCdcConfig,
    slot: String,
    publication: String,
    conninfo: String,
    batch_size: usize,
    linger: Duration,
    state: StateStore,
    phase: Phase,
    decoder: Decoder,
    /// Batches read but not yet acknowledged, in order.
    pending: PendingPositions<Mark>,
    /// The last LSN reported to the server as flushed.
    confirmed: u64,
    snapshot: SnapshotProgress,
    reconnect_delay: Duration,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The replication connection's string: the user's URL in `replication=database`
/// mode, with a session whose timestamps print in UTC ISO form, which the
/// decoder turns into ISO 8601.
fn replication_conninfo(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}replication=database&options=-c%20TimeZone%3DUTC%20-c%20DateStyle%3DISO")
}

impl PostgresCdcSource {
    pub async fn open(config: PostgresCdcConfig, ctx: &OpenContext) -> Result<Self, PgCdcError> {
        let slot = config.slot_name(&ctx.pipeline);
        let publication = config.publication_name(&slot);
        let mut conn = catalog::connect(&config.url).await?;
        let db = catalog::check_server(&mut conn).await?;
        if config.tables.is_empty() {
            if catalog::published_tables(&mut conn, &publication).await?.is_none() {
                return Err(PgCdcError::Setup(format!(
                    "publication `{publication}` does not exist; create it or list the `tables` to capture"
                )));
            }
        } else {
            catalog::ensure_publication(&mut conn, &publication, &config.qualified_tables()).await?;
        }
        let keys = catalog::key_columns(&mut conn, &publication).await?;
        let existing = catalog::slot(&mut conn, &slot).await?;
        if let Some(info) = &existing {
            if info.wal_status.as_deref() == Some("lost") {
                return Err(PgCdcError::Setup(format!(
                    "replication slot `{slot}` is invalidated (wal_status = lost): the server removed WAL it still \
                     needed, so changes were lost. Drop the slot and start over with a new snapshot"
                )));
            }
            if info.plugin.as_deref() != Some("pgoutput") || info.database.as_deref() != Some(db.as_str()) {
                return Err(PgCdcError::Setup(format!(
                    "replication slot `{slot}` exists but is not a pgoutput slot of database `{db}`; choose another `slot`"
                )));
            }
        }
        let key = state_key(&slot);
        let record: Option<SlotRecord> = ctx.state.load(&key).map_err(PgCdcError::State)?;
        let decoder = Decoder::new(ctx.pipeline.clone(), db.into(), config.tombstones, keys);
        let mut source = PostgresCdcSource {
            conninfo: replication_conninfo(&config.url),
            slot,
            publication,
            batch_size: ctx.batch_size,
            linger: ctx.linger,
            state: ctx.state.clone(),
            phase: Phase::Finished,
            decoder,
            pending: PendingPositions::default(),
            confirmed: 0,
            snapshot: SnapshotProgress::Idle,
            reconnect_delay: Duration::from_millis(100),
            config,
        };
        // A sink that stores the position with its data (effectively-once) may
        // be ahead of the slot: what it has is not sent again.
        if let Some((end, within)) = ctx.resume.as_ref().and_then(crate::position::decode) {
            source.decoder.last_end = end;
            source.decoder.skip = within;
        }
        let wants_snapshot = source.config.snapshot != SnapshotMode::Never;
        let slot = source.slot.clone();
        let state_file = source.state.dir().join(format!("{key}.json"));
        match plan_start(existing.is_some(), record.as_ref(), wants_snapshot, &slot, &state_file) {
            StartPlan::Resume => {
                tracing::info!(slot = %slot, from = source.decoder.last_end, "resuming from the replication slot");
                source.start_streaming().await?;
            }
            StartPlan::RetakeSnapshot => {
                tracing::warn!(slot = %slot, "the initial snapshot did not finish last time; dropping the slot and taking it again");
                catalog::drop_slot(&mut conn, &slot).await?;
                source.create_slot().await?;
            }
            StartPlan::StreamExisting => {
                tracing::info!(slot = %slot, "streaming from the existing replication slot");
                source.save(true)?;
                source.start_streaming().await?;
            }
            StartPlan::Create => source.create_slot().await?,
            StartPlan::Refuse(message) => return Err(PgCdcError::Setup(message)),
        }
        Ok(source)
    }

    fn save(&self, snapshot_done: bool) -> Result<(), PgCdcError> {
        let record = SlotRecord { snapshot_done };
        self.state.save(&state_key(&self.slot), &record).map_err(PgCdcError::State)
    }
}

#[async_trait]
impl Source for PostgresCdcSource {
    async fn read(&mut self, batch: &mut Batch) -> Result<Read, ConnectorError> {
        let result = match self.phase {
            Phase::Snapshot { .. } => self.read_snapshot(batch).await,
            Phase::Streaming(_) => self.read_stream(batch).await,
            Phase::Disconnected { .. } => self.reconnect().await.map(|()| Read::Idle),
            // `initial_only`: the input ends once the snapshot is acknowledged.
            Phase::Finished if self.snapshot != SnapshotProgress::Idle => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(Read::Idle)
            }
            Phase::Finished => Ok(Read::End),
        };
        Ok(result?)
    }

    async fn commit(&mut self, done: Watermark) -> Result<(), ConnectorError> {
        let target = self
            .pending
            .covered(done)
            .filter_map(|(_, mark)| match mark {
                Mark::Lsn(lsn) => Some(*lsn),
                Mark::Snapshot => None,
            })
            .last();
        let snapshot_acked = match self.snapshot {
            SnapshotProgress::Unacked { last_seq } => self.pending.covered(done).any(|(seq, _)| *seq == last_seq),
            _ => false,
        };
        // Saved before the batches are forgotten: a failed save is retried by the next commit.
        if snapshot_acked {
            self.snapshot_done()?;
        }
        self.pending.release(done);
        let Some(target) = target.filter(|t| *t > self.confirmed) else { return Ok(()) };
        self.confirmed = target;
        if let Phase::Streaming(stream) = &mut self.phase {
            stream.shared_lsn_feedback.update_flushed_lsn(target);
            stream.shared_lsn_feedback.update_applied_lsn(target);
            if let Err(e) = stream.send_feedback().await {
                tracing::debug!(error = %e, "sending the confirmed position failed; the next status update carries it");
            }
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<(), ConnectorError> {
        match std::mem::replace(&mut self.phase, Phase::Finished) {
            Phase::Streaming(mut stream) => {
                // The final status update: the confirmed position, as of the last commit.
                stream.stop().await.map_err(|e| PgCdcError::replication("closing the replication stream", e))?;
            }
            Phase::Finished
                if self.config.snapshot == SnapshotMode::InitialOnly && self.snapshot == SnapshotProgress::Idle =>
            {
                let mut conn = catalog::connect(&self.config.url).await?;
                catalog::drop_slot(&mut conn, &self.slot).await?;
                tracing::info!(slot = %self.slot, "snapshot done; dropped the replication slot");
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replication_session_prints_timestamps_in_utc() {
        assert_eq!(
            replication_conninfo("postgres://u@h/db"),
            "postgres://u@h/db?replication=database&options=-c%20TimeZone%3DUTC%20-c%20DateStyle%3DISO"
        );
        assert!(
            replication_conninfo("postgres://u@h/db?sslmode=require")
                .starts_with("postgres://u@h/db?sslmode=require&replication")
        );
    }
}
