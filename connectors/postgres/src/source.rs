//! The `postgres_cdc` source: an initial snapshot through the slot's exported
//! snapshot, then the slot's change stream (pgoutput, protocol 1).
//!
//! Positions: every batch remembers the end LSN of the last transaction it
//! completes. The slot's confirmed position moves to that LSN only when the
//! batch and every batch before it are acknowledged, so a restart replays at
//! most the unacknowledged stretch. With nothing in flight the slot follows the
//! server's WAL end (from keepalives), so an idle or unpublished workload does
//! not make it hold WAL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flowgate_sdk::{
    Batch, ConnectorError, OpenContext, PendingPositions, Read, Source, StateStore, Watermark, async_trait,
};
use pg_walstream::{
    CancellationToken, ChangeEvent, EventType, LogicalReplicationStream, ReplicaIdentity, ReplicationStreamConfig,
    RetryConfig, SnapshotOutcome, SnapshotRows, StreamingMode,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::catalog;
use crate::config::{PostgresCdcConfig, SnapshotMode, redact_url};
use crate::error::{PgCdcError, is_slot_problem};
use crate::event::{Encoder, Op, Origin, Table};

/// How long `read` waits for a change before reporting the source idle.
const IDLE_AFTER: Duration = Duration::from_secs(1);
/// Longest wait between attempts to reach a server that went away.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);
/// A connection attempt that takes longer than this has failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// What this pipeline has done with its slot, kept in the state directory: a
/// slot that disappears after it was used means lost changes, which must stop
/// the pipeline rather than be papered over with a new slot.
#[derive(Debug, Serialize, Deserialize)]
struct SlotRecord {
    /// The initial snapshot was written in full (or none was asked for).
    snapshot_done: bool,
}

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

/// Turns events into records, and tracks the transaction they belong to.
struct Decoder {
    pipeline: Arc<str>,
    db: Arc<str>,
    tombstones: bool,
    /// Streamed tables by relation id, from Relation messages (which precede
    /// the first change in a new shape, so a schema change shows up here first).
    tables: HashMap<u32, Arc<Table>>,
    /// Snapshot tables by relation id, from the catalog.
    snapshot_tables: HashMap<u32, Arc<Table>>,
    keys: HashMap<(String, String), Vec<String>>,
    txn: Option<(u32, i64)>,
    /// End LSN of the last transaction whose changes were all handed out.
    last_end: u64,
    /// Changes handed out of the transaction in progress.
    txn_count: u64,
    /// Resuming inside a transaction (after a reconnect, or from a position a
    /// sink stored): its id and how many of its changes were handed out
    /// already, which are skipped if it is the first transaction streamed.
    skip: Option<(u32, u64)>,
    /// Changes of the current transaction still to skip.
    skip_left: u64,
    encoder: Encoder,
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

fn state_key(slot: &str) -> String {
    format!("postgres_cdc.{slot}")
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
        match (existing, record) {
            (Some(_), Some(r)) if r.snapshot_done => {
                tracing::info!(slot = %slot, from = source.decoder.last_end, "resuming from the replication slot");
                source.start_streaming().await?;
            }
            (Some(_), Some(_)) => {
                tracing::warn!(slot = %slot, "the initial snapshot did not finish last time; dropping the slot and taking it again");
                catalog::drop_slot(&mut conn, &slot).await?;
                source.create_slot().await?;
            }
            (Some(_), None) if !wants_snapshot => {
                tracing::info!(slot = %slot, "streaming from the existing replication slot");
                source.save(true)?;
                source.start_streaming().await?;
            }
            (Some(_), None) => {
                return Err(PgCdcError::Setup(format!(
                    "replication slot `{slot}` already exists, and this pipeline has no record of a snapshot through \
                     it, so one taken now would not line up with the slot's position. Drop it \
                     (`SELECT pg_drop_replication_slot('{slot}')`) to start with a snapshot, or set `snapshot: never` \
                     to stream from where it stands"
                )));
            }
            (None, Some(r)) if r.snapshot_done => {
                return Err(PgCdcError::Setup(format!(
                    "replication slot `{slot}` is gone (dropped, or lost in a failover), so changes made since it \
                     was last read cannot be streamed. To start over with a new snapshot, delete {} in the state \
                     directory and run again",
                    source.state.dir().join(format!("{key}.json")).display()
                )));
            }
            (None, _) => source.create_slot().await?,
        }
        Ok(source)
    }

    /// Starts streaming from the slot. A slot still held by the walsender of a
    /// process that just died, or a server that is restarting, is waited for in
    /// `read`, as any lost connection is.
    async fn start_streaming(&mut self) -> Result<(), PgCdcError> {
        let from = (self.decoder.last_end > 0).then_some(self.decoder.last_end);
        match self.stream(from).await {
            Ok(stream) => self.phase = Phase::Streaming(Box::new(stream)),
            Err(e) if e.is_retryable() => {
                tracing::warn!(slot = %self.slot, error = %e, "cannot stream yet; retrying");
                self.phase = Phase::Disconnected { retry_at: Instant::now() + self.reconnect_delay };
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn save(&self, snapshot_done: bool) -> Result<(), PgCdcError> {
        let record = SlotRecord { snapshot_done };
        self.state.save(&state_key(&self.slot), &record).map_err(PgCdcError::State)
    }

    fn stream_config(&self) -> ReplicationStreamConfig {
        ReplicationStreamConfig::builder(self.slot.clone(), self.publication.clone())
            // Protocol 1: a transaction arrives once, at its commit, so nothing
            // uncommitted is buffered here (the server spills large ones to disk).
            .with_protocol_version(1)
            .with_streaming_mode(StreamingMode::Off)
            // Reconnecting must never create the slot anew: that would skip changes.
            .with_existing_slot_required(true)
            .with_feedback_interval(Duration::from_secs(1))
            .with_connection_timeout(CONNECT_TIMEOUT)
            .with_retry_config(RetryConfig { max_attempts: 1, max_duration: CONNECT_TIMEOUT, ..RetryConfig::default() })
    }

    async fn connect(&mut self) -> Result<LogicalReplicationStream, PgCdcError> {
        LogicalReplicationStream::new(&self.conninfo, self.stream_config()).await.map_err(|e| {
            PgCdcError::replication(
                format!("cannot open a replication connection to {}", redact_url(&self.config.url)),
                e,
            )
        })
    }

    /// A stream started from the slot (`None`) or past a transaction end already
    /// handed out.
    async fn stream(&mut self, from: Option<u64>) -> Result<LogicalReplicationStream, PgCdcError> {
        let mut stream = self.connect().await?;
        if self.confirmed > 0 {
            stream.shared_lsn_feedback.update_flushed_lsn(self.confirmed);
            stream.shared_lsn_feedback.update_applied_lsn(self.confirmed);
        }
        stream.start(from).await.map_err(|e| {
            let context = if is_slot_problem(&e) {
                format!("replication slot `{}` cannot be streamed from", self.slot)
            } else {
                "cannot start streaming".to_string()
            };
            PgCdcError::replication(context, e)
        })?;
        Ok(stream)
    }

    async fn create_slot(&mut self) -> Result<(), PgCdcError> {
        let stream = self.connect().await?;
        if self.config.snapshot == SnapshotMode::Never {
            let mut stream = stream;
            stream
                .ensure_replication_slot()
                .await
                .map_err(|e| PgCdcError::replication(format!("cannot create replication slot `{}`", self.slot), e))?;
            tracing::info!(slot = %self.slot, publication = %self.publication, "created the replication slot");
            self.save(true)?;
            stream.start(None).await.map_err(|e| PgCdcError::replication("cannot start streaming", e))?;
            self.phase = Phase::Streaming(Box::new(stream));
            return Ok(());
        }
        // Recorded first, so a crash during the copy is known to have left an
        // unfinished snapshot behind.
        self.save(false)?;
        for attempt in 1..=5 {
            let mut locks = catalog::connect(&self.config.url).await?;
            let before = catalog::filenodes(&mut locks, &self.publication).await?;
            let stream = self.connect().await?;
            let outcome = stream
                .snapshot()
                .await
                .map_err(|e| PgCdcError::replication(format!("cannot create replication slot `{}`", self.slot), e))?;
            let SnapshotOutcome::Available(snapshot) = outcome else {
                return Err(PgCdcError::Setup(format!(
                    "replication slot `{}` appeared while Flowgate was creating it; is another pipeline using the same slot?",
                    self.slot
                )));
            };
            // Locked only now, so that slot creation (which waits for running
            // transactions) cannot wait on a transaction waiting on the lock.
            // A rewrite between the two looks at a different file: start over.
            catalog::lock_published(&mut locks, &self.publication).await?;
            if catalog::filenodes(&mut locks, &self.publication).await? != before {
                tracing::warn!(slot = %self.slot, attempt, "a captured table was rewritten while the slot was created; taking the snapshot again");
                drop(snapshot); // Drops the slot (pg_walstream), best effort.
                catalog::drop_slot(&mut locks, &self.slot).await?;
                continue;
            }
            let tables: Vec<String> = snapshot.tables().iter().map(|t| t.qualified_name()).collect();
            tracing::info!(
                slot = %self.slot,
                publication = %self.publication,
                consistent_point = %snapshot.consistent_point(),
                tables = %tables.join(", "),
                "created the replication slot; taking the initial snapshot"
            );
            self.snapshot = SnapshotProgress::Reading { last_seq: None };
            self.phase = Phase::Snapshot { rows: Box::new(snapshot.rows()), started_ms: now_ms(), _locks: locks };
            return Ok(());
        }
        Err(PgCdcError::Setup(
            "the captured tables were rewritten (ALTER TABLE, TRUNCATE, VACUUM FULL) each time the snapshot started; \
             run again once that DDL is done"
                .to_string(),
        ))
    }

    async fn read_snapshot(&mut self, batch: &mut Batch) -> Result<Read, PgCdcError> {
        let Phase::Snapshot { rows, started_ms, .. } = &mut self.phase else { unreachable!() };
        let origin = Origin {
            pipeline: &self.decoder.pipeline,
            db: &self.decoder.db,
            commit_ms: *started_ms,
            now_ms: now_ms(),
            tx_id: None,
            snapshot: true,
        };
        let mut done = false;
        while batch.records.len() < self.batch_size {
            // pg_walstream cannot resume a failed copy (the exported snapshot is
            // gone with its connection), so the pipeline stops; the next start
            // finds the snapshot unfinished and takes it again.
            let row = rows.next_row().await.map_err(PgCdcError::Snapshot)?;
            let Some(row) = row else {
                done = true;
                break;
            };
            let keys = &self.decoder.keys;
            let table = self.decoder.snapshot_tables.entry(row.relation.relation_id).or_insert_with(|| {
                let r = &row.relation;
                let keys = keys.get(&(r.namespace.to_string(), r.relation_name.to_string()));
                let is_key = |name: &str| keys.is_some_and(|k| k.iter().any(|c| c == name));
                Arc::new(Table::new(
                    r.namespace.clone(),
                    r.relation_name.clone(),
                    false,
                    r.columns.iter().map(|c| (c.name.clone(), c.type_id, c.type_modifier, is_key(&c.name))),
                ))
            });
            batch.records.push(self.decoder.encoder.change(
                &origin,
                table,
                Op::Read,
                row.lsn.value(),
                None,
                Some(&row.data),
            ));
        }
        if !batch.records.is_empty() {
            self.pending.push(batch.seq, Mark::Snapshot);
            if let SnapshotProgress::Reading { last_seq } = &mut self.snapshot {
                *last_seq = Some(batch.seq);
            }
        }
        if done {
            let Phase::Snapshot { rows, .. } = std::mem::replace(&mut self.phase, Phase::Finished) else {
                unreachable!()
            };
            let mut stream = rows.finish().await.map_err(PgCdcError::Snapshot)?;
            tracing::info!(slot = %self.slot, "initial snapshot read; streaming changes from its consistent point");
            let unacked = self.pending.iter().any(|(_, m)| matches!(m, Mark::Snapshot));
            match self.snapshot {
                SnapshotProgress::Reading { last_seq: Some(last_seq) } if unacked => {
                    self.snapshot = SnapshotProgress::Unacked { last_seq };
                }
                _ => self.snapshot_done()?, // Empty tables, or every row already acknowledged.
            }
            if self.config.snapshot != SnapshotMode::InitialOnly {
                match stream.start(None).await {
                    Ok(()) => self.phase = Phase::Streaming(Box::new(stream)),
                    Err(e) => {
                        tracing::warn!(slot = %self.slot, error = %e, "cannot start streaming yet; retrying");
                        self.phase = Phase::Disconnected { retry_at: Instant::now() + self.reconnect_delay };
                    }
                }
            }
        }
        Ok(if batch.records.is_empty() { Read::Idle } else { Read::Data })
    }

    async fn read_stream(&mut self, batch: &mut Batch) -> Result<Read, PgCdcError> {
        let Phase::Streaming(stream) = &mut self.phase else { unreachable!() };
        let token = CancellationToken::new();
        let deadline = tokio::time::sleep(IDLE_AFTER);
        tokio::pin!(deadline);
        let mut lost = None;
        while batch.records.len() < self.batch_size && !token.is_cancelled() {
            let event = {
                let next = stream.next_event(&token);
                tokio::pin!(next);
                // Cancelling through the token, never by dropping the future,
                // keeps the connection's state intact.
                tokio::select! {
                    biased;
                    event = &mut next => event,
                    _ = &mut deadline => {
                        token.cancel();
                        next.await
                    }
                }
            };
            match event {
                Ok(event) => {
                    let was_empty = batch.records.is_empty();
                    self.decoder.handle(event, now_ms(), batch);
                    if was_empty && !batch.records.is_empty() {
                        deadline.as_mut().reset(Instant::now() + self.linger);
                    }
                }
                Err(e) if e.is_cancelled() => break,
                Err(e) => {
                    lost = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = lost {
            if e.is_permanent() || is_slot_problem(&e) {
                return Err(PgCdcError::replication(format!("streaming from slot `{}` failed", self.slot), e));
            }
            tracing::warn!(slot = %self.slot, error = %e, "lost the replication connection; reconnecting");
            self.phase = Phase::Disconnected { retry_at: Instant::now() };
        }
        let read = if batch.records.is_empty() {
            Read::Idle
        } else {
            self.pending.push(batch.seq, Mark::Lsn(self.decoder.last_end));
            batch.position = Some(crate::position::encode(self.decoder.last_end, self.decoder.within()));
            Read::Data
        };
        if matches!(self.phase, Phase::Disconnected { .. }) {
            // The transaction in progress is streamed again after reconnecting;
            // the changes of it already handed out are skipped then.
            self.decoder.skip = self.decoder.within();
            self.decoder.txn = None;
        } else if read == Read::Idle {
            self.advance_idle().await;
        }
        Ok(read)
    }

    /// With every batch acknowledged and no transaction half handed out, all the
    /// server has sent is done: confirm its WAL position, so the slot keeps up
    /// with writes that publish nothing.
    async fn advance_idle(&mut self) {
        if !self.pending.is_empty() || self.decoder.txn.is_some() {
            return;
        }
        let Phase::Streaming(stream) = &mut self.phase else { return };
        let received = stream.current_lsn();
        if received > self.confirmed {
            self.confirmed = received;
            stream.shared_lsn_feedback.update_flushed_lsn(received);
            stream.shared_lsn_feedback.update_applied_lsn(received);
            if let Err(e) = stream.send_feedback().await {
                tracing::debug!(error = %e, "sending the idle position failed; the next status update carries it");
            }
        }
    }

    async fn reconnect(&mut self) -> Result<(), PgCdcError> {
        let Phase::Disconnected { retry_at } = self.phase else { return Ok(()) };
        let wait = retry_at.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait.min(IDLE_AFTER)).await;
            return Ok(());
        }
        // Past the last transaction handed out in full, so that it is not sent
        // again; one cut off by the disconnect is sent again whole.
        let from = (self.decoder.last_end > 0).then_some(self.decoder.last_end);
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, self.stream(from)).await;
        match attempt {
            Ok(Ok(stream)) => {
                tracing::info!(slot = %self.slot, "replication connection restored");
                self.reconnect_delay = Duration::from_millis(100);
                self.phase = Phase::Streaming(Box::new(stream));
            }
            Ok(Err(e)) if !e.is_retryable() => return Err(e),
            failed => {
                let reason = match failed {
                    Ok(Err(e)) => e.to_string() + &source_text(&e),
                    _ => "timed out".to_string(),
                };
                tracing::warn!(slot = %self.slot, retry_in = ?self.reconnect_delay, error = %reason, "cannot reconnect yet");
                self.phase = Phase::Disconnected { retry_at: Instant::now() + self.reconnect_delay };
                self.reconnect_delay = (self.reconnect_delay * 2).min(MAX_RECONNECT_DELAY);
            }
        }
        Ok(())
    }

    fn snapshot_done(&mut self) -> Result<(), PgCdcError> {
        if self.config.snapshot != SnapshotMode::InitialOnly {
            self.save(true)?;
        }
        tracing::info!(slot = %self.slot, "initial snapshot written");
        self.snapshot = SnapshotProgress::Idle;
        Ok(())
    }
}

fn source_text(e: &dyn std::error::Error) -> String {
    e.source().map(|s| format!(": {s}")).unwrap_or_default()
}

impl Decoder {
    fn new(pipeline: Arc<str>, db: Arc<str>, tombstones: bool, keys: HashMap<(String, String), Vec<String>>) -> Self {
        Decoder {
            pipeline,
            db,
            tombstones,
            tables: HashMap::new(),
            snapshot_tables: HashMap::new(),
            keys,
            txn: None,
            last_end: 0,
            txn_count: 0,
            skip: None,
            skip_left: 0,
            encoder: Encoder::default(),
        }
    }

    fn handle(&mut self, event: ChangeEvent, now_ms: i64, batch: &mut Batch) {
        let lsn = event.lsn.value();
        match event.event_type {
            EventType::Begin { transaction_id, commit_timestamp, .. } => {
                self.txn = Some((transaction_id, commit_timestamp.timestamp_millis()));
                self.txn_count = 0;
                // Only the first transaction after a resume point can be one
                // partly handed out already.
                self.skip_left = match self.skip.take() {
                    Some((xid, n)) if xid == transaction_id => n,
                    _ => 0,
                };
            }
            EventType::Commit { end_lsn, .. } => {
                self.txn = None;
                self.last_end = end_lsn.value();
                self.skip_left = 0;
            }
            EventType::Relation { relation_id, namespace, relation_name, replica_identity, columns } => {
                // Under FULL every column is flagged as part of the identity, and
                // under NOTHING none: the primary key is the record's key there.
                let catalog_keys = matches!(replica_identity, ReplicaIdentity::Full | ReplicaIdentity::Nothing)
                    .then(|| self.keys.get(&(namespace.to_string(), relation_name.to_string())));
                let is_key = |name: &str, flagged: bool| match catalog_keys {
                    Some(keys) => keys.is_some_and(|k| k.iter().any(|c| c == name)),
                    None => flagged,
                };
                let columns: Vec<_> = columns
                    .into_iter()
                    .map(|c| (c.name.clone(), c.type_id, c.type_modifier, is_key(&c.name, c.is_key)))
                    .collect();
                let full = replica_identity == ReplicaIdentity::Full;
                self.tables.insert(relation_id, Arc::new(Table::new(namespace, relation_name, full, columns)));
            }
            EventType::Insert { relation_oid, data, .. } => {
                self.change(relation_oid, Op::Create, lsn, None, Some(&data), now_ms, batch);
            }
            EventType::Update { relation_oid, old_data, new_data, .. } => {
                self.change(relation_oid, Op::Update, lsn, old_data.as_ref(), Some(&new_data), now_ms, batch);
            }
            EventType::Delete { relation_oid, old_data, .. } => {
                self.change(relation_oid, Op::Delete, lsn, Some(&old_data), None, now_ms, batch);
            }
            EventType::Truncate { tables, .. } => {
                if self.skipped() {
                    return;
                }
                for name in tables {
                    // Named `schema.table`; the Relation message sent before it
                    // has the two parts, which may themselves contain dots.
                    let known = self
                        .tables
                        .values()
                        .find(|t| name.strip_prefix(&*t.schema).and_then(|r| r.strip_prefix('.')) == Some(&*t.name));
                    let table = match known {
                        Some(t) => Table {
                            schema: t.schema.clone(),
                            name: t.name.clone(),
                            columns: Vec::new(),
                            full_identity: false,
                            avro: t.avro.clone(),
                        },
                        None => {
                            let (schema, table) = name.split_once('.').unwrap_or(("", &name));
                            Table {
                                schema: schema.into(),
                                name: table.into(),
                                columns: Vec::new(),
                                full_identity: false,
                                avro: None,
                            }
                        }
                    };
                    let origin = streamed(&self.pipeline, &self.db, self.txn, now_ms);
                    batch.records.push(self.encoder.change(&origin, &table, Op::Truncate, lsn, None, None));
                }
            }
            // Types, origins, logical messages: nothing to emit.
            _ => {}
        }
    }

    /// Counts a change of the current transaction; whether it was handed out
    /// before (and is skipped now).
    fn skipped(&mut self) -> bool {
        self.txn_count += 1;
        if self.skip_left > 0 {
            self.skip_left -= 1;
            return true;
        }
        false
    }

    /// Where a batch ending now stands inside the transaction in progress.
    fn within(&self) -> Option<(u32, u64)> {
        self.txn.map(|(xid, _)| (xid, self.txn_count))
    }

    #[allow(clippy::too_many_arguments)]
    fn change(
        &mut self,
        relation: u32,
        op: Op,
        lsn: u64,
        before: Option<&pg_walstream::RowData>,
        after: Option<&pg_walstream::RowData>,
        now_ms: i64,
        batch: &mut Batch,
    ) {
        if self.skipped() {
            return;
        }
        // The server sends a Relation message before a table's first change on
        // every connection, so a miss is a protocol violation, not a state to handle.
        let Some(table) = self.tables.get(&relation).cloned() else {
            tracing::error!(relation, "change for a table without a Relation message; skipped");
            return;
        };
        let origin = streamed(&self.pipeline, &self.db, self.txn, now_ms);
        let record = self.encoder.change(&origin, &table, op, lsn, before, after);
        if op == Op::Delete && self.tombstones {
            let tombstone = Encoder::tombstone(&record);
            batch.records.push(record);
            batch.records.push(tombstone);
        } else {
            batch.records.push(record);
        }
    }
}

fn streamed<'a>(pipeline: &'a str, db: &'a str, txn: Option<(u32, i64)>, now_ms: i64) -> Origin<'a> {
    let (tx_id, commit_ms) = txn.map_or((None, now_ms), |(x, t)| (Some(x), t));
    Origin { pipeline, db, commit_ms, now_ms, tx_id, snapshot: false }
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
    use pg_walstream::{ColumnValue, Lsn, RelationColumn, RowData};

    fn decoder(keys: &[(&str, &str, &[&str])]) -> Decoder {
        let keys = keys
            .iter()
            .map(|(s, t, k)| ((s.to_string(), t.to_string()), k.iter().map(|c| c.to_string()).collect()))
            .collect();
        Decoder::new("p".into(), "db".into(), false, keys)
    }

    fn event(event_type: EventType) -> ChangeEvent {
        ChangeEvent { event_type, lsn: Lsn::new(100), metadata: None, xid: None }
    }

    fn relation(identity: ReplicaIdentity, flags: [bool; 2]) -> ChangeEvent {
        let col = |name: &str, is_key| RelationColumn { name: name.into(), type_id: 23, type_modifier: -1, is_key };
        event(EventType::Relation {
            relation_id: 7,
            namespace: "public".into(),
            relation_name: "t".into(),
            replica_identity: identity,
            columns: vec![col("id", flags[0]), col("n", flags[1])],
        })
    }

    fn update(d: &mut Decoder) -> Batch {
        let row = |id, n| RowData::from_pairs(vec![("id", ColumnValue::text(id)), ("n", ColumnValue::text(n))]);
        let mut batch = Batch::with_capacity(0, 4);
        d.handle(
            event(EventType::Update {
                schema: "public".into(),
                table: "t".into(),
                relation_oid: 7,
                old_data: Some(row("1", "1")),
                new_data: row("1", "2"),
                replica_identity: ReplicaIdentity::Full,
                key_columns: vec![],
            }),
            0,
            &mut batch,
        );
        batch
    }

    #[test]
    fn under_replica_identity_full_the_primary_key_is_the_record_key() {
        let mut d = decoder(&[("public", "t", &["id"])]);
        // pgoutput flags every column as identity under FULL.
        d.handle(relation(ReplicaIdentity::Full, [true, true]), 0, &mut Batch::with_capacity(0, 1));
        let batch = update(&mut d);
        assert_eq!(&batch.records[0].key.as_ref().unwrap()[..], br#"{"id":1}"#);

        let mut d = decoder(&[]);
        d.handle(relation(ReplicaIdentity::Default, [true, false]), 0, &mut Batch::with_capacity(0, 1));
        let batch = update(&mut d);
        assert_eq!(&batch.records[0].key.as_ref().unwrap()[..], br#"{"id":1}"#);
    }

    #[test]
    fn resuming_inside_a_transaction_skips_its_applied_changes() {
        let mut d = decoder(&[]);
        d.handle(relation(ReplicaIdentity::Default, [true, false]), 0, &mut Batch::with_capacity(0, 1));
        d.skip = Some((1, 2));
        let insert = |lsn: u64| {
            let data = RowData::from_pairs(vec![("id", ColumnValue::text("1")), ("n", ColumnValue::text("1"))]);
            let e = EventType::Insert { schema: "public".into(), table: "t".into(), relation_oid: 7, data };
            ChangeEvent { event_type: e, lsn: Lsn::new(lsn), metadata: None, xid: None }
        };
        let mut batch = Batch::with_capacity(0, 8);
        let begin = || {
            event(EventType::Begin { transaction_id: 1, final_lsn: Lsn::new(0), commit_timestamp: Default::default() })
        };
        let commit = |end| {
            event(EventType::Commit {
                commit_timestamp: Default::default(),
                commit_lsn: Lsn::new(end),
                end_lsn: Lsn::new(end),
            })
        };
        d.handle(begin(), 0, &mut batch);
        // The first two share an LSN, as the rows of one multi-row insert do.
        for lsn in [150, 150, 200] {
            d.handle(insert(lsn), 0, &mut batch);
        }
        d.handle(commit(300), 0, &mut batch);
        d.handle(begin(), 0, &mut batch);
        d.handle(insert(120), 0, &mut batch);
        let lsns: Vec<_> = batch.records.iter().map(|r| r.meta.clone()).collect();
        assert_eq!(lsns.len(), 2, "{lsns:?}");
        assert_eq!(
            batch.records[0].meta,
            flowgate_sdk::SourceMeta::Table { schema: "public".into(), table: "t".into(), lsn: 200 }
        );
        assert_eq!(d.within(), Some((1, 1)));
    }

    #[test]
    fn a_batch_ending_inside_a_transaction_keeps_the_previous_end() {
        let mut d = decoder(&[]);
        let mut batch = Batch::with_capacity(0, 4);
        let begin = |xid| EventType::Begin {
            transaction_id: xid,
            final_lsn: Lsn::new(0),
            commit_timestamp: Default::default(),
        };
        let commit = |end| EventType::Commit {
            commit_timestamp: Default::default(),
            commit_lsn: Lsn::new(end - 8),
            end_lsn: Lsn::new(end),
        };
        d.handle(event(begin(1)), 0, &mut batch);
        d.handle(event(commit(500)), 0, &mut batch);
        d.handle(event(begin(2)), 0, &mut batch);
        assert_eq!((d.last_end, d.txn.is_some()), (500, true));
        d.handle(event(commit(900)), 0, &mut batch);
        assert_eq!((d.last_end, d.txn.is_some()), (900, false));
    }

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
