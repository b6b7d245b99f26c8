//! Reading the slot's change stream: the replication connection, reconnecting
//! after it is lost, and the decoder that turns its events into records.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use flowgate_sdk::{Batch, Read};
use pg_walstream::{
    CancellationToken, ChangeEvent, EventType, LogicalReplicationStream, ReplicaIdentity, ReplicationStreamConfig,
    RetryConfig, StreamingMode,
};
use tokio::time::Instant;

use super::incremental::{self, Incremental};
use super::{Mark, Phase, PostgresCdcSource, now_ms, observe};
use crate::avro;
use crate::config::redact_url;
use crate::error::{PgCdcError, is_slot_problem};
use crate::event::{Encoder, Op, Origin};
use crate::table::Table;

/// How long `read` waits for a change before reporting the source idle.
const IDLE_AFTER: Duration = Duration::from_secs(1);
/// How long it waits while a snapshot chunk waits for its acknowledgement,
/// which the engine passes on only between reads.
const ACK_POLL: Duration = Duration::from_millis(2);
/// Longest wait between attempts to reach a server that went away.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);
/// A connection attempt that takes longer than this has failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Turns events into records, and tracks the transaction they belong to.
pub(super) struct Decoder {
    pub(super) pipeline: Arc<str>,
    pub(super) db: Arc<str>,
    tombstones: bool,
    /// Streamed tables by relation id, from Relation messages (which precede
    /// the first change in a new shape, so a schema change shows up here first).
    tables: HashMap<u32, Arc<Table>>,
    /// Snapshot tables by relation id, from the catalog.
    pub(super) snapshot_tables: HashMap<u32, Arc<Table>>,
    pub(super) keys: HashMap<(String, String), Vec<String>>,
    /// Tables whose key the settings name (`keys`): it holds under any
    /// replica identity.
    pub(super) pinned: HashSet<(String, String)>,
    txn: Option<(u32, i64)>,
    /// End LSN of the last transaction whose changes were all handed out.
    pub(super) last_end: u64,
    /// When the last transaction delivered was committed (ms since the epoch).
    pub(super) last_commit_ms: i64,
    /// Changes handed out of the transaction in progress.
    txn_count: u64,
    /// Resuming inside a transaction (after a reconnect, or from a position a
    /// sink stored): its id and how many of its changes were handed out
    /// already, which are skipped if it is the first transaction streamed.
    pub(super) skip: Option<(u32, u64)>,
    /// Changes of the current transaction still to skip.
    skip_left: u64,
    pub(super) encoder: Encoder,
    /// Snapshots of tables added later, taken between the stream's events.
    pub(super) incremental: Incremental,
    /// Tables `flowgate snapshot` asked to read again, not queued yet.
    pub(super) requested: Vec<(String, String)>,
}

impl PostgresCdcSource {
    /// Starts streaming from the slot. A slot still held by the walsender of a
    /// process that just died, or a server that is restarting, is waited for in
    /// `read`, as any lost connection is.
    pub(super) async fn start_streaming(&mut self) -> Result<(), PgCdcError> {
        let from = (self.decoder.last_end > 0).then_some(self.decoder.last_end);
        match self.stream(from).await {
            Ok(stream) => self.streaming(stream),
            Err(e) if e.is_retryable() => {
                tracing::warn!(slot = %self.slot, error = %e, "cannot stream yet; retrying");
                self.cut_off(format!("{e}{}", source_text(&e)));
                self.phase = Phase::Disconnected { retry_at: Instant::now() + self.reconnect_delay };
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn stream_config(&self) -> ReplicationStreamConfig {
        ReplicationStreamConfig::builder(self.slot.clone(), self.publication.clone())
            // Protocol 1: a transaction arrives once, at its commit, so nothing
            // uncommitted is buffered here (the server spills large ones to disk).
            .with_protocol_version(1)
            .with_streaming_mode(StreamingMode::Off)
            // Reconnecting must never create the slot anew: that would skip changes.
            .with_existing_slot_required(true)
            // The watermarks of incremental snapshots (`incremental`).
            .with_messages(true)
            .with_feedback_interval(Duration::from_secs(1))
            .with_connection_timeout(CONNECT_TIMEOUT)
            .with_retry_config(RetryConfig { max_attempts: 1, max_duration: CONNECT_TIMEOUT, ..RetryConfig::default() })
    }

    pub(super) async fn connect(&mut self) -> Result<LogicalReplicationStream, PgCdcError> {
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

    pub(super) async fn read_stream(&mut self, batch: &mut Batch) -> Result<Read, PgCdcError> {
        if !self.decoder.requested.is_empty() {
            self.queue_requested().await?;
        }
        // Chunks whose progress could not be saved are saved first, so that
        // progress is recorded in order.
        while let Some(done) = self.deferred.first().cloned() {
            self.save_chunk(&done).await?;
            self.deferred.remove(0);
        }
        self.decoder.incremental.run_readers()?;
        let idle_after = if self.chunks_unacked() { ACK_POLL } else { IDLE_AFTER };
        let Phase::Streaming(stream) = &mut self.phase else { unreachable!() };
        let token = CancellationToken::new();
        let deadline = tokio::time::sleep(idle_after);
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
            if e.is_permanent() {
                return Err(PgCdcError::replication(format!("streaming from slot `{}` failed", self.slot), e));
            }
            tracing::warn!(slot = %self.slot, error = %e, "lost the replication connection; reconnecting");
            self.cut_off(format!("lost the replication connection: {e}"));
            self.phase = Phase::Disconnected { retry_at: Instant::now() };
        }
        let chunks = std::mem::take(&mut self.decoder.incremental.done);
        let read = if batch.records.is_empty() {
            // Chunks whose rows all gave way to streamed changes: nothing of
            // them waits for an acknowledgement (the changes come again from
            // the slot), but the batches handed out before them do: they
            // ride on the last of those.
            match self.pending.last_mut() {
                Some((_, Mark::Lsn(_, marks))) => marks.extend(chunks),
                Some((_, Mark::Snapshot)) | None => self.deferred.extend(chunks),
            }
            Read::Idle
        } else {
            if self.decoder.last_commit_ms > 0 {
                observe::behind(&self.pipeline, self.decoder.last_commit_ms, now_ms());
            }
            self.pending.push(batch.seq, Mark::Lsn(self.decoder.last_end, chunks));
            batch.position = Some(crate::position::encode(self.decoder.last_end, self.decoder.within()));
            Read::Data
        };
        if matches!(self.phase, Phase::Disconnected { .. }) {
            // The transaction in progress is streamed again after reconnecting;
            // the changes of it already handed out are skipped then.
            self.decoder.skip = self.decoder.within();
            self.decoder.txn = None;
            self.decoder.incremental.restart();
        } else if read == Read::Idle {
            self.advance_idle().await;
        }
        Ok(read)
    }

    /// Streams from `stream` from now on.
    pub(super) fn streaming(&mut self, stream: LogicalReplicationStream) {
        observe::connected(&self.pipeline, true);
        self.phase = Phase::Streaming(Box::new(stream));
    }

    /// The source cannot reach Postgres: its pipeline is degraded until it can.
    fn cut_off(&self, cause: String) {
        observe::connected(&self.pipeline, false);
        flowgate_sdk::health::trouble(&self.pipeline, "source", "cut off", cause, true);
    }

    /// Snapshot chunks are out and not recorded: the next waits for them.
    pub(super) fn chunks_unacked(&self) -> bool {
        !self.deferred.is_empty() || self.pending.iter().any(|(_, m)| matches!(m, Mark::Lsn(_, c) if !c.is_empty()))
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

    pub(super) async fn reconnect(&mut self) -> Result<(), PgCdcError> {
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
                flowgate_sdk::health::recovered(&self.pipeline, "source");
                observe::reconnected(&self.pipeline);
                self.reconnect_delay = Duration::from_millis(100);
                self.streaming(stream);
            }
            Ok(Err(e)) if !e.is_retryable() => return Err(e),
            failed => {
                let reason = match failed {
                    Ok(Err(e)) => e.to_string() + &source_text(&e),
                    _ => "timed out".to_string(),
                };
                tracing::warn!(slot = %self.slot, retry_in = ?self.reconnect_delay, error = %reason, "cannot reconnect yet");
                self.cut_off(reason);
                self.phase = Phase::Disconnected { retry_at: Instant::now() + self.reconnect_delay };
                self.reconnect_delay = (self.reconnect_delay * 2).min(MAX_RECONNECT_DELAY);
            }
        }
        Ok(())
    }
}

fn source_text(e: &dyn std::error::Error) -> String {
    e.source().map(|s| format!(": {s}")).unwrap_or_default()
}

impl Decoder {
    pub(super) fn new(
        pipeline: Arc<str>,
        db: Arc<str>,
        tombstones: bool,
        keys: HashMap<(String, String), Vec<String>>,
    ) -> Self {
        Decoder {
            pipeline,
            db,
            tombstones,
            tables: HashMap::new(),
            snapshot_tables: HashMap::new(),
            keys,
            pinned: HashSet::new(),
            txn: None,
            last_end: 0,
            last_commit_ms: 0,
            txn_count: 0,
            skip: None,
            skip_left: 0,
            encoder: Encoder::default(),
            incremental: Incremental::default(),
            requested: Vec::new(),
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
                if let Some((xid, commit_ms)) = self.txn.take() {
                    self.incremental.delivered(xid);
                    self.last_commit_ms = commit_ms;
                }
                self.last_end = end_lsn.value();
                self.skip_left = 0;
            }
            EventType::Relation { relation_id, namespace, relation_name, replica_identity, columns } => {
                // Under FULL every column is flagged as part of the identity, and
                // under NOTHING none: the primary key is the record's key there.
                let id = (namespace.to_string(), relation_name.to_string());
                let catalog_keys = (self.pinned.contains(&id)
                    || matches!(replica_identity, ReplicaIdentity::Full | ReplicaIdentity::Nothing))
                .then(|| self.keys.get(&id));
                let is_key = |name: &str, flagged: bool| match catalog_keys {
                    Some(keys) => keys.is_some_and(|k| k.iter().any(|c| c == name)),
                    None => flagged,
                };
                let columns: Vec<_> = columns
                    .into_iter()
                    .map(|c| (c.name.clone(), c.type_id, c.type_modifier, is_key(&c.name, c.is_key)))
                    .collect();
                let full = replica_identity == ReplicaIdentity::Full;
                let table = avro::with_schema(Table::new(namespace, relation_name, full, columns));
                self.tables.insert(relation_id, Arc::new(table));
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
                    self.incremental.truncated(&name);
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
            EventType::Message { prefix, content, .. } if &*prefix == incremental::SIGNAL => {
                match serde_json::from_slice::<incremental::Signal>(&content) {
                    Ok(signal) if signal.slot == self.incremental.slot() => self.requested.extend(signal.snapshot),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "a snapshot request that cannot be read; ignored"),
                }
            }
            EventType::Message { prefix, content, .. } if &*prefix == incremental::PREFIX => {
                self.incremental.watermark(&content, batch);
            }
            // Types, origins, other logical messages: nothing to emit.
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
        let from = batch.records.len();
        if op == Op::Delete && self.tombstones {
            let tombstone = Encoder::tombstone(&record);
            batch.records.push(record);
            batch.records.push(tombstone);
        } else {
            batch.records.push(record);
        }
        self.incremental.touched(&table, before, after, &batch.records[from..]);
    }
}

fn streamed<'a>(pipeline: &'a str, db: &'a str, txn: Option<(u32, i64)>, now_ms: i64) -> Origin<'a> {
    let (tx_id, commit_ms) = txn.map_or((None, now_ms), |(x, t)| (Some(x), t));
    Origin { pipeline, db, commit_ms, now_ms, tx_id, snapshot: "false" }
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
        assert_eq!(batch.records[0].meta, crate::event::meta(&"public".into(), &"t".into(), 200));
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
}
