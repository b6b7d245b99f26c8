//! Creating the slot with an exported snapshot, and reading the initial
//! snapshot through it.

use std::sync::Arc;

use flowgate_sdk::{Batch, Read};
use pg_walstream::{SnapshotOutcome, SnapshotRow};
use tokio::time::Instant;

use super::{Mark, Phase, PostgresCdcSource, SnapshotProgress, now_ms};
use crate::avro;
use crate::catalog;
use crate::config::SnapshotMode;
use crate::error::PgCdcError;
use crate::event::{Op, Origin};
use crate::state;
use crate::table::Table;

/// A row of the exported snapshot read and not yet emitted.
pub(super) struct Held {
    row: SnapshotRow,
    /// The snapshot's first row, and its table's.
    first: bool,
    first_of_table: bool,
}

/// `source.snapshot` as Debezium writes it for a row of the snapshot, given
/// the table of the row after it (`None`: it is the last): `last` for the
/// last row (also when it is the only one, so that a consumer waiting for
/// the end sees it), `first` for the first, `last_in_data_collection` and
/// `first_in_data_collection` at each table's ends, `true` between.
fn marker(row: &Held, next_table: Option<u32>) -> &'static str {
    match next_table {
        None => "last",
        _ if row.first => "first",
        Some(t) if t != row.row.relation.relation_id => "last_in_data_collection",
        _ if row.first_of_table => "first_in_data_collection",
        _ => "true",
    }
}

impl PostgresCdcSource {
    pub(super) async fn create_slot(&mut self) -> Result<(), PgCdcError> {
        let stream = self.connect().await?;
        if matches!(self.config.snapshot.mode, SnapshotMode::Never | SnapshotMode::Incremental) {
            let mut stream = stream;
            if self.config.snapshot == SnapshotMode::Incremental {
                // Queued before the slot exists: a crash in between leaves the
                // record unfinished, and the next start begins again.
                self.save(false).await?;
                let mut conn = catalog::connect(&self.config.url).await?;
                let tables = catalog::published_tables(&mut conn, &self.publication).await?.unwrap_or_default();
                state::queue_snapshots(&mut conn, &self.config.state_schema, &self.slot, &tables).await?;
                let pending = state::pending_snapshots(&mut conn, &self.config.state_schema, &self.slot).await?;
                self.decoder.incremental.set_queue(pending);
                tracing::info!(slot = %self.slot, tables = tables.len(),
                    "taking an incremental snapshot of the tables while streaming");
            }
            stream
                .ensure_replication_slot()
                .await
                .map_err(|e| PgCdcError::replication(format!("cannot create replication slot `{}`", self.slot), e))?;
            tracing::info!(slot = %self.slot, publication = %self.publication, "created the replication slot");
            self.save(true).await?;
            stream.start(None).await.map_err(|e| PgCdcError::replication("cannot start streaming", e))?;
            self.streaming(stream);
            return Ok(());
        }
        // Recorded first, so a crash during the copy is known to have left an
        // unfinished snapshot behind.
        self.save(false).await?;
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
            self.phase =
                Phase::Snapshot { rows: Box::new(snapshot.rows()), started_ms: now_ms(), held: None, _locks: locks };
            return Ok(());
        }
        Err(PgCdcError::Setup(
            "the captured tables were rewritten (ALTER TABLE, TRUNCATE, VACUUM FULL) each time the snapshot started; \
             run again once that DDL is done"
                .to_string(),
        ))
    }

    pub(super) async fn read_snapshot(&mut self, batch: &mut Batch) -> Result<Read, PgCdcError> {
        let Phase::Snapshot { rows, started_ms, held, .. } = &mut self.phase else { unreachable!() };
        let origin = Origin {
            pipeline: &self.decoder.pipeline,
            db: &self.decoder.db,
            commit_ms: *started_ms,
            now_ms: now_ms(),
            tx_id: None,
            snapshot: "true",
        };
        let mut done = false;
        while batch.records.len() < self.batch_size {
            // pg_walstream cannot resume a failed copy (the exported snapshot is
            // gone with its connection), so the pipeline stops; the next start
            // finds the snapshot unfinished and takes it again.
            let next = rows.next_row().await.map_err(PgCdcError::Snapshot)?;
            // A row is emitted once the next is known: where it stands
            // (first, last of its table...) depends on it.
            let Some(row) = held.take() else {
                match next {
                    Some(next) => {
                        *held = Some(Box::new(Held { row: next, first: true, first_of_table: true }));
                        continue;
                    }
                    None => {
                        done = true;
                        break;
                    }
                }
            };
            let this = row.row.relation.relation_id;
            let next_table = next.as_ref().map(|n| n.relation.relation_id);
            let keys = &self.decoder.keys;
            let table = self.decoder.snapshot_tables.entry(this).or_insert_with(|| {
                let r = &row.row.relation;
                let keys = keys.get(&(r.namespace.to_string(), r.relation_name.to_string()));
                let is_key = |name: &str| keys.is_some_and(|k| k.iter().any(|c| c == name));
                Arc::new(avro::with_schema(Table::new(
                    r.namespace.clone(),
                    r.relation_name.clone(),
                    false,
                    r.columns.iter().map(|c| (c.name.clone(), c.type_id, c.type_modifier, is_key(&c.name))),
                )))
            });
            let origin = Origin { snapshot: marker(&row, next_table), ..origin };
            batch.records.push(self.decoder.encoder.change(
                &origin,
                table,
                Op::Read,
                row.row.lsn.value(),
                None,
                Some(&row.row.data),
            ));
            match next {
                Some(next) => {
                    *held = Some(Box::new(Held { row: next, first: false, first_of_table: next_table != Some(this) }))
                }
                None => {
                    done = true;
                    break;
                }
            }
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
            if self.config.snapshot == SnapshotMode::InitialOnly {
                tracing::info!(slot = %self.slot, "snapshot read");
            } else {
                tracing::info!(slot = %self.slot, "initial snapshot read; streaming changes from its consistent point");
            }
            let unacked = self.pending.iter().any(|(_, m)| matches!(m, Mark::Snapshot));
            match self.snapshot {
                SnapshotProgress::Reading { last_seq: Some(last_seq) } if unacked => {
                    self.snapshot = SnapshotProgress::Unacked { last_seq };
                }
                _ => self.snapshot_done().await?, // Empty tables, or every row already acknowledged.
            }
            if self.config.snapshot != SnapshotMode::InitialOnly {
                match stream.start(None).await {
                    Ok(()) => self.streaming(stream),
                    Err(e) => {
                        tracing::warn!(slot = %self.slot, error = %e, "cannot start streaming yet; retrying");
                        self.phase = Phase::Disconnected { retry_at: Instant::now() + self.reconnect_delay };
                    }
                }
            }
        }
        Ok(if batch.records.is_empty() { Read::Idle } else { Read::Data })
    }

    pub(super) async fn snapshot_done(&mut self) -> Result<(), PgCdcError> {
        if self.config.snapshot != SnapshotMode::InitialOnly {
            self.save(true).await?;
        }
        tracing::info!(slot = %self.slot, "initial snapshot written");
        self.snapshot = SnapshotProgress::Idle;
        Ok(())
    }
}
