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
//! Layout: `start` decides, from the slot and the pipeline's record of it
//! (kept in the source database, `crate::state`), how the source starts; `snapshot` creates the slot with an exported
//! snapshot and reads the snapshot through it; `stream` reads the change
//! stream (reconnecting when the connection is lost) and holds the decoder
//! that turns its events into records.

mod incremental;
mod leader;
mod observe;
mod snapshot;
mod start;
mod stream;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flowgate_sdk::{Batch, ConnectorError, OpenContext, PendingPositions, Read, Source, Watermark, async_trait};
use pg_walstream::{LogicalReplicationStream, SnapshotRows};
use tokio::time::Instant;

use crate::config::{PostgresCdcConfig, SnapshotMode};
use crate::error::PgCdcError;
use crate::state::{self, SlotState};
use crate::{catalog, preflight};
pub(crate) use start::{StartPlan, plan_start, state_key};
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
        held: Option<Box<snapshot::Held>>,
        /// The connection whose transaction keeps the tables from being
        /// rewritten until they are copied (see `catalog::lock_published`).
        _locks: sqlx::PgConnection,
    },
    Streaming(Box<LogicalReplicationStream>),
    Disconnected {
        retry_at: Instant,
    },
    /// Another process runs this pipeline's slot: wait, and take over when
    /// it stops (see `leader`).
    Standby {
        since: Instant,
        next_try: Instant,
    },
    /// `initial_only`: the snapshot is out; the input ends here.
    Finished,
}

/// A batch's position for the acknowledgement queue: the end of the last
/// transaction it completes, and the chunk of an incremental snapshot it
/// holds the end of, if any.
#[derive(Debug)]
enum Mark {
    Snapshot,
    Lsn(u64, Vec<incremental::ChunkDone>),
}

pub struct PostgresCdcSource {
    config: PostgresCdcConfig,
    slot: String,
    publication: String,
    conninfo: String,
    batch_size: usize,
    linger: Duration,
    pipeline: std::sync::Arc<str>,
    /// The state directory, where release 0.1 kept the slot's record.
    legacy: flowgate_sdk::StateStore,
    /// Where an effectively-once sink says the pipeline stands.
    resume: Option<flowgate_sdk::Position>,
    /// What is recorded of the slot (in `<state_schema>.cdc_slots`).
    record: SlotState,
    /// The session holding the slot's leader lock, while this process is
    /// the one that runs the slot.
    leader: Option<leader::Leader>,
    /// The connection incremental snapshots read their chunks through.
    chunks: Option<sqlx::PgConnection>,
    /// Reads the slot's lag while this process runs the slot.
    lag: Option<observe::LagSampler>,
    /// Chunks that emitted no row (all gave way to streamed changes) while no
    /// batch was out, whose progress could not be saved yet: saved before
    /// anything else is read.
    deferred: Vec<incremental::ChunkDone>,
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
/// decoder turns into ISO 8601, and whose values print as the snapshot
/// chunks' session prints them (`catalog::connect_as_stream`): chunk rows
/// give way to streamed changes by the text of their keys.
fn replication_conninfo(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!(
        "{url}{sep}replication=database&options=-c%20TimeZone%3DUTC%20-c%20DateStyle%3DISO\
         %20-c%20IntervalStyle%3Dpostgres%20-c%20bytea_output%3Dhex"
    )
}

/// `flowgate snapshot`: writes a request to read `tables` again into the WAL,
/// for the process that runs the pipeline's slot. The tables must be
/// captured and have a key to be read in chunks by.
pub(crate) async fn request_snapshot(
    config: &PostgresCdcConfig,
    pipeline: &str,
    tables: &[String],
) -> Result<String, PgCdcError> {
    let slot = config.slot_name(pipeline);
    let publication = config.publication_name(&slot);
    let mut conn = catalog::connect(&config.url).await?;
    let captured = catalog::published_tables(&mut conn, &publication).await?.unwrap_or_default();
    let mut wanted = Vec::new();
    for text in tables {
        let table = crate::config::parse_table(text).map_err(PgCdcError::Setup)?;
        if !captured.contains(&table) {
            return Err(PgCdcError::Setup(format!("`{text}` is not captured by publication `{publication}`")));
        }
        let keyed = preflight::keyed(&mut conn, config, &table.0, &table.1)
            .await
            .map_err(|e| PgCdcError::db("cannot look the table's key up", e))?;
        if !keyed {
            return Err(PgCdcError::Setup(format!(
                "`{text}` has no primary key to read it in chunks by; name its key columns in `keys`"
            )));
        }
        wanted.push(table);
    }
    let signal = serde_json::to_string(&incremental::Signal { slot: slot.clone(), snapshot: wanted.clone() })
        .expect("a signal serializes");
    sqlx::query("SELECT pg_logical_emit_message(true, $1, $2)")
        .bind(incremental::SIGNAL)
        .bind(signal)
        .execute(&mut conn)
        .await
        .map_err(|e| PgCdcError::db("cannot write the request into the WAL", e))?;
    let names: Vec<String> = wanted.iter().map(|(s, t)| format!("{s}.{t}")).collect();
    Ok(format!(
        "asked the pipeline of slot `{slot}` to snapshot {} again: it reads the request from its stream (once it \
         runs) and the table in chunks while it streams",
        names.join(", ")
    ))
}

/// [`preflight::check`], refusing to start on any problem it finds.
async fn preflight(
    conn: &mut sqlx::PgConnection,
    config: &PostgresCdcConfig,
    pipeline: &str,
    legacy: &flowgate_sdk::StateStore,
) -> Result<preflight::Facts, PgCdcError> {
    let (problems, facts) = preflight::check(conn, config, pipeline, legacy).await?;
    if problems.is_empty() {
        return Ok(facts);
    }
    let each: Vec<String> = problems
        .iter()
        .map(|p| match &p.help {
            Some(help) => format!("{} (help: {help})", p.message),
            None => p.message.clone(),
        })
        .collect();
    Err(PgCdcError::Setup(each.join("; ")))
}

impl PostgresCdcSource {
    /// Checks what `validate --check` checks (and refuses to start on any of
    /// it), then runs the slot, or waits as a standby while another process
    /// of the same pipeline runs it.
    pub async fn open(config: PostgresCdcConfig, ctx: &OpenContext) -> Result<Self, PgCdcError> {
        let slot = config.slot_name(&ctx.pipeline);
        let publication = config.publication_name(&slot);
        let mut conn = catalog::connect(&config.url).await?;
        let decoder = Decoder::new(ctx.pipeline.clone(), "".into(), config.tombstones, Default::default());
        let now = Instant::now();
        let mut source = PostgresCdcSource {
            conninfo: replication_conninfo(&config.url),
            slot,
            publication,
            batch_size: ctx.batch_size,
            linger: ctx.linger,
            pipeline: ctx.pipeline.clone(),
            legacy: ctx.state.clone(),
            resume: ctx.resume.clone(),
            record: SlotState::default(),
            leader: None,
            chunks: None,
            lag: None,
            deferred: Vec::new(),
            phase: Phase::Standby { since: now, next_try: now },
            decoder,
            pending: PendingPositions::default(),
            confirmed: 0,
            snapshot: SnapshotProgress::Idle,
            reconnect_delay: Duration::from_millis(100),
            config,
        };
        match leader::Leader::try_acquire(&source.config.url, &source.slot).await? {
            Some(lead) => {
                source.leader = Some(lead);
                source.report_active(true);
                source.start(conn).await?;
            }
            None => {
                // A standby refuses what the active one would (see `start`).
                preflight(&mut conn, &source.config, &source.pipeline, &source.legacy).await?;
                source.report_active(false);
                tracing::info!(
                    slot = %source.slot,
                    "standby: another process runs this pipeline's replication slot; taking over when it stops"
                );
            }
        }
        Ok(source)
    }

    /// Runs the slot, now that this process leads it: creates the
    /// publication and the slot as needed and starts the snapshot or the
    /// stream. The checks run again first: after a takeover, the other
    /// process may have changed what they found.
    async fn start(&mut self, mut conn: sqlx::PgConnection) -> Result<(), PgCdcError> {
        let facts = preflight(&mut conn, &self.config, &self.pipeline, &self.legacy).await?;
        let (config, slot, publication) = (&self.config, self.slot.clone(), self.publication.clone());
        let mut record = facts.record.clone();
        // Kept in the database from now on (a record of release 0.1 was read
        // from the state directory).
        if let Some(r) = &record {
            state::save(&mut conn, &config.state_schema, &slot, r).await?;
        }
        let existing = catalog::publication(&mut conn, &publication).await?;
        if !config.tables.is_empty()
            && existing.is_none()
            && catalog::create_publication(&mut conn, &publication, &config.qualified_tables()).await?
        {
            let r = record.get_or_insert_with(SlotState::default);
            r.publication_created = true;
            state::save(&mut conn, &config.state_schema, &slot, r).await?;
        }
        // Flowgate's own publication (named after the slot) follows `tables`:
        // a table added is published and snapshotted incrementally while the
        // others stream; one removed is no longer published.
        if let Some(p) = existing.filter(|_| config.publication.is_none() && !config.tables.is_empty()) {
            let wanted = config.qualified_tables();
            let added: Vec<_> = wanted.iter().filter(|t| !p.tables.contains(t)).cloned().collect();
            let removed: Vec<_> = p.tables.iter().filter(|t| !wanted.contains(t)).cloned().collect();
            // Queued before it is published, forgotten before it is not: a
            // crash in between leaves a queued table the next start publishes
            // (or a published one it drops), never a table without its snapshot.
            if !added.is_empty() {
                state::queue_snapshots(&mut conn, &config.state_schema, &slot, &added).await?;
                catalog::alter_publication(&mut conn, &publication, "ADD", &added).await?;
            }
            if !removed.is_empty() {
                state::forget_snapshots(&mut conn, &config.state_schema, &slot, Some(&removed)).await?;
                catalog::alter_publication(&mut conn, &publication, "DROP", &removed).await?;
            }
        }
        let (keys, pinned, chunk_keys) = catalog::record_keys(&mut conn, &publication, config.key_overrides()).await?;
        let names = (std::sync::Arc::clone(&self.pipeline), std::sync::Arc::from(facts.database));
        let incremental = incremental::Incremental::new(
            slot.clone(),
            config.url.clone(),
            names.clone(),
            config.snapshot,
            chunk_keys,
            keys.clone(),
        );
        let mut decoder = Decoder::new(names.0, names.1, config.tombstones, keys);
        decoder.pinned = pinned;
        decoder.incremental = incremental;
        // A sink that stores the position with its data (effectively-once) may
        // be ahead of the slot: what it has is not sent again.
        if let Some((end, within)) = self.resume.as_ref().and_then(crate::position::decode) {
            decoder.last_end = end;
            decoder.skip = within;
        }
        let published = catalog::published_tables(&mut conn, &publication).await?.unwrap_or_default();
        let pending: Vec<_> = state::pending_snapshots(&mut conn, &config.state_schema, &slot)
            .await?
            .into_iter()
            .filter(|t| published.contains(&(t.schema.clone(), t.table.clone())))
            .collect();
        for t in &pending {
            tracing::info!(table = %format!("{}.{}", t.schema, t.table), after = ?t.after,
                "taking an incremental snapshot of the table while the others stream");
        }
        decoder.incremental.set_queue(pending);
        self.decoder = decoder;
        self.record = record.clone().unwrap_or_default();
        let wants_snapshot = self.config.snapshot != SnapshotMode::Never;
        let forget = state::forget(&self.config.state_schema, &slot);
        match plan_start(facts.slot_exists, record.as_ref(), wants_snapshot, &slot, &forget) {
            StartPlan::Resume => {
                let from = catalog::slot(&mut conn, &slot).await?.and_then(|s| s.confirmed_flush).unwrap_or_default();
                tracing::info!(slot = %slot, from = %from, "resuming from the replication slot");
                self.start_streaming().await?;
            }
            StartPlan::RetakeSnapshot => {
                tracing::warn!(slot = %slot, "the initial snapshot did not finish last time; dropping the slot and taking it again");
                catalog::drop_slot(&mut conn, &slot).await?;
                // The initial snapshot reads every table.
                state::forget_snapshots(&mut conn, &self.config.state_schema, &slot, None).await?;
                self.decoder.incremental.set_queue(Vec::new());
                self.create_slot().await?;
            }
            StartPlan::StreamExisting => {
                tracing::info!(slot = %slot, "streaming from the existing replication slot");
                self.save(true).await?;
                self.start_streaming().await?;
            }
            StartPlan::Create => {
                state::forget_snapshots(&mut conn, &self.config.state_schema, &slot, None).await?;
                self.decoder.incremental.set_queue(Vec::new());
                self.create_slot().await?
            }
            StartPlan::Refuse(message) => return Err(PgCdcError::Setup(message)),
        }
        Ok(())
    }

    /// As a standby: tries to take the slot over, twice a second.
    async fn wait_as_standby(&mut self) -> Result<Read, PgCdcError> {
        let Phase::Standby { since, next_try } = self.phase else { unreachable!("called in standby") };
        tokio::time::sleep_until(next_try).await;
        match leader::Leader::try_acquire(&self.config.url, &self.slot).await? {
            Some(lead) => {
                self.leader = Some(lead);
                self.report_active(true);
                tracing::info!(
                    slot = %self.slot,
                    waited_ms = since.elapsed().as_millis() as u64,
                    "taking over: this process now runs the replication slot"
                );
                self.phase = Phase::Finished;
                let started = match catalog::connect(&self.config.url).await {
                    Ok(conn) => self.start(conn).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = started {
                    // Let go, so that this or another process tries again.
                    self.leader = None;
                    self.report_active(false);
                    self.phase = Phase::Standby { since, next_try: Instant::now() + leader::STANDBY_POLL };
                    return Err(e);
                }
            }
            None => self.phase = Phase::Standby { since, next_try: Instant::now() + leader::STANDBY_POLL },
        }
        Ok(Read::Idle)
    }

    /// Queues the tables `flowgate snapshot` asked for: read again from the
    /// start, in chunks (one being read now goes on, since it started after
    /// the request was written).
    async fn queue_requested(&mut self) -> Result<(), PgCdcError> {
        let tables = std::mem::take(&mut self.decoder.requested);
        let queued = match self.chunk_conn().await {
            Ok(mut conn) => {
                let queued = state::queue_snapshots(&mut conn, &self.config.state_schema, &self.slot, &tables).await;
                self.keep_chunk_conn(conn, &queued);
                queued
            }
            Err(e) => Err(e),
        };
        if let Err(e) = queued {
            self.decoder.requested = tables; // Kept for the next read.
            return Err(e);
        }
        for (schema, table) in tables {
            tracing::info!(table = %format!("{schema}.{table}"), "snapshot requested; reading the table again in chunks");
            self.decoder.incremental.queue(schema, table);
        }
        Ok(())
    }

    /// Records a chunk of an incremental snapshot as written (unless a
    /// request gave its reading up, which reset the table's progress).
    async fn save_chunk(&mut self, chunk: &incremental::ChunkDone) -> Result<(), PgCdcError> {
        if !self.decoder.incremental.is_current(chunk) {
            chunk.recorded();
            return Ok(());
        }
        let mut conn = self.chunk_conn().await?;
        let saved =
            state::save_chunk(&mut conn, &self.config.state_schema, &self.slot, &chunk.todo, chunk.complete).await;
        self.keep_chunk_conn(conn, &saved);
        saved?;
        chunk.recorded();
        Ok(())
    }

    /// Says which process runs the slot (see [`leader::report`]); the active
    /// one samples the slot's lag.
    fn report_active(&mut self, active: bool) {
        leader::report(&self.pipeline, &self.slot, active);
        self.lag = active.then(|| {
            observe::LagSampler::start(
                self.config.url.clone(),
                std::sync::Arc::clone(&self.pipeline),
                self.slot.clone(),
            )
        });
    }

    /// The connection incremental snapshots go through (chunks, progress,
    /// requests), made when there is none; give it back with
    /// [`keep_chunk_conn`](Self::keep_chunk_conn).
    pub(super) async fn chunk_conn(&mut self) -> Result<sqlx::PgConnection, PgCdcError> {
        match self.chunks.take() {
            Some(conn) => Ok(conn),
            None => catalog::connect_as_stream(&self.config.url).await,
        }
    }

    /// Keeps the connection for the next use, unless what was done with it
    /// failed: a broken one is made anew next time.
    pub(super) fn keep_chunk_conn<T>(&mut self, conn: sqlx::PgConnection, outcome: &Result<T, PgCdcError>) {
        if outcome.is_ok() {
            self.chunks = Some(conn);
        }
    }

    /// Records whether the snapshot through the slot is written, in the
    /// source database.
    async fn save(&mut self, snapshot_done: bool) -> Result<(), PgCdcError> {
        self.record.snapshot_done = snapshot_done;
        let mut conn = catalog::connect(&self.config.url).await?;
        state::save(&mut conn, &self.config.state_schema, &self.slot, &self.record).await
    }
}

#[async_trait]
impl Source for PostgresCdcSource {
    async fn read(&mut self, batch: &mut Batch) -> Result<Read, ConnectorError> {
        // A leader whose lock session is gone takes the lock again before it
        // goes on; if another process took it meanwhile, it steps down rather
        // than compete for the slot. (The database out of reach: the stream
        // is down too, and both are tried again.)
        let mut step_down = false;
        if let Some(lead) = &mut self.leader
            && !lead.still_held().await
        {
            match leader::Leader::try_acquire(&self.config.url, &self.slot).await {
                Ok(Some(again)) => {
                    *lead = again;
                    tracing::info!(slot = %self.slot, "the leader lock's session was lost; took the lock again");
                }
                Ok(None) => step_down = true,
                Err(e) => tracing::debug!(slot = %self.slot, error = %e, "cannot take the leader lock again yet"),
            }
        }
        if step_down {
            tracing::warn!(slot = %self.slot, "another process took over the replication slot; standing by");
            self.leader = None;
            self.report_active(false);
            if let Phase::Streaming(mut stream) = std::mem::replace(&mut self.phase, Phase::Finished) {
                let _ = stream.stop().await;
            }
            // The new leader goes on from the slot and the saved state: what
            // this process still has in flight must not move either.
            self.pending = PendingPositions::default();
            self.snapshot = SnapshotProgress::Idle;
            self.deferred.clear();
            self.decoder.incremental.set_queue(Vec::new());
            let now = Instant::now();
            self.phase = Phase::Standby { since: now, next_try: now + leader::STANDBY_POLL };
        }
        let result = match self.phase {
            Phase::Standby { .. } => self.wait_as_standby().await,
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
                Mark::Lsn(lsn, _) => Some(*lsn),
                Mark::Snapshot => None,
            })
            .last();
        let chunks: Vec<incremental::ChunkDone> = self
            .pending
            .covered(done)
            .filter_map(|(_, mark)| match mark {
                Mark::Lsn(_, chunks) => Some(chunks.iter().cloned()),
                Mark::Snapshot => None,
            })
            .flatten()
            .collect();
        // Saved before the batches are forgotten: a failed save is retried by the next commit.
        for chunk in &chunks {
            self.save_chunk(chunk).await?;
            if chunk.complete {
                let t = &chunk.todo;
                tracing::info!(table = %format!("{}.{}", t.schema, t.table), "incremental snapshot written");
            }
        }
        let snapshot_acked = match self.snapshot {
            SnapshotProgress::Unacked { last_seq } => self.pending.covered(done).any(|(seq, _)| *seq == last_seq),
            _ => false,
        };
        // Saved before the batches are forgotten: a failed save is retried by the next commit.
        if snapshot_acked {
            self.snapshot_done().await?;
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

    fn commit_soon(&self) -> bool {
        self.chunks_unacked()
    }

    async fn close(&mut self) -> Result<(), ConnectorError> {
        match std::mem::replace(&mut self.phase, Phase::Finished) {
            Phase::Streaming(mut stream) => {
                // The final status update: the confirmed position, as of the last commit.
                stream.stop().await.map_err(|e| PgCdcError::replication("closing the replication stream", e))?;
                tracing::info!(slot = %self.slot, confirmed = %pg_walstream::Lsn::new(self.confirmed),
                    "replication stream closed; the slot keeps this position");
            }
            Phase::Finished
                if self.config.snapshot == SnapshotMode::InitialOnly && self.snapshot == SnapshotProgress::Idle =>
            {
                // Nothing of an `initial_only` pipeline stays behind: its slot,
                // the publication it created, and its record.
                let mut conn = catalog::connect(&self.config.url).await?;
                catalog::drop_slot(&mut conn, &self.slot).await?;
                if self.record.publication_created {
                    catalog::drop_publication(&mut conn, &self.publication).await?;
                }
                state::delete(&mut conn, &self.config.state_schema, &self.slot).await?;
                tracing::info!(slot = %self.slot, publication_dropped = self.record.publication_created,
                    "snapshot done; dropped the replication slot");
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
            "postgres://u@h/db?replication=database&options=-c%20TimeZone%3DUTC%20-c%20DateStyle%3DISO\
             %20-c%20IntervalStyle%3Dpostgres%20-c%20bytea_output%3Dhex"
        );
        assert!(
            replication_conninfo("postgres://u@h/db?sslmode=require")
                .starts_with("postgres://u@h/db?sslmode=require&replication")
        );
    }
}
