//! A batch's records as row operations, in runs per target table, with the
//! records that cannot be applied and why.

use flowgate_sdk::{Batch, Prepare, Prepared, Record, RefusalClass};
use serde_json::Value;

use super::TableOps;
use super::direct::{Encoded, SharedShape, encode, shape_of};
use crate::change::ops;
use crate::config::{Mode, SqlSinkConfig};
use crate::dialect::Dialect;
use crate::names::{TableFilter, check_fields};

/// Records refused, by index in the batch, with the reason and its class.
pub(super) type Refused = Vec<(usize, String, RefusalClass)>;

/// How a batch is written: the prepare step's work, which the sink's own
/// mostly is.
pub(super) enum Plan {
    /// Encoded as `COPY` text for one table (see [`super::direct`]).
    Copy(Encoded),
    /// Runs of row operations per table, and the records refused.
    Ops(Vec<(String, TableOps)>, Refused),
}

/// A batch's plan, made by the engine's prepare step while the sink writes
/// the batches before it.
struct Planned {
    /// How many records it was made from: a batch whose count changed since
    /// is planned again (nothing else touches its records in between).
    records: usize,
    plan: Plan,
}

/// The sink's [`Prepare`] step: it needs only the settings, and the shape of
/// the table the sink last described.
pub(super) struct Planner {
    pub(super) config: SqlSinkConfig,
    pub(super) dialect: Dialect,
    pub(super) filter: Option<TableFilter>,
    pub(super) shape: SharedShape,
}

impl Prepare for Planner {
    fn prepare(&self, batch: &mut Batch) {
        let shape = shape_of(&self.shape).clone();
        let plan = match shape.and_then(|shape| encode(&batch.records, &shape)) {
            Some(encoded) => Plan::Copy(encoded),
            None => {
                let (tables, refused) = plan(&batch.records, &self.config, self.dialect, self.filter.as_ref());
                Plan::Ops(tables, refused)
            }
        };
        batch.prepared = Some(Prepared::new(Planned { records: batch.records.len(), plan }));
    }
}

/// The batch's plan: the one prepared for it, or its operations made now.
pub(super) fn planned(
    batch: &mut Batch,
    config: &SqlSinkConfig,
    dialect: Dialect,
    filter: Option<&TableFilter>,
) -> Plan {
    match batch.prepared.take().and_then(Prepared::take::<Planned>) {
        Some(p) if p.records == batch.records.len() => p.plan,
        _ => {
            let (tables, refused) = plan(&batch.records, config, dialect, filter);
            Plan::Ops(tables, refused)
        }
    }
}

/// The records of a batch as runs of consecutive records for one table, in
/// order: changes to different tables keep their order (a parent row before
/// the child rows that reference it).
pub(super) fn plan(
    records: &[Record],
    config: &SqlSinkConfig,
    dialect: Dialect,
    filter: Option<&TableFilter>,
) -> (Vec<(String, TableOps)>, Refused) {
    let mut tables: Vec<(String, TableOps)> = Vec::new();
    let mut refused = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let mut parsed = None;
        let table = match config.table.fixed() {
            Some(t) => t.to_string(),
            None => match config.table.render(r, &mut parsed) {
                Ok(t) => match filter.map_or(Ok(()), |f| f.check(dialect, &t)) {
                    Ok(()) => t,
                    Err(why) => {
                        refused.push((
                            i,
                            format!("table `{}` refused: {why}", t.escape_debug()),
                            RefusalClass::Template,
                        ));
                        continue;
                    }
                },
                Err(e) => {
                    refused.push((i, format!("no table for the record: {e}"), RefusalClass::Template));
                    continue;
                }
            },
        };
        let checked =
            ops(&r.value, r.key.as_deref(), config.mode, config.columns.as_ref(), &config.key).and_then(|list| {
                list.iter().try_for_each(|op| op.row().map_or(Ok(()), |row| check_fields(dialect, row))).map(|()| list)
            });
        match checked {
            Ok(list) => {
                if tables.last().is_none_or(|(t, _)| *t != table) {
                    tables.push((table, TableOps::default()));
                }
                let run = tables.last_mut().expect("pushed above");
                run.1.ops.extend(list.into_iter().map(|op| (i, op)));
            }
            // Not the shape its mode and columns need.
            Err(reason) => refused.push((i, reason, RefusalClass::Schema)),
        }
    }
    (tables, refused)
}

/// The key columns for a table: configured, or the fields of a record's key.
pub(super) fn key_for(config: &SqlSinkConfig, records: &[Record], ops: &TableOps) -> Vec<String> {
    if !config.key.is_empty() || config.mode == Mode::Insert {
        return config.key.clone();
    }
    ops.ops
        .first()
        .and_then(|(i, _)| records[*i].key.as_deref())
        .and_then(|k| serde_json::from_slice::<Value>(k).ok())
        .and_then(|v| v.as_object().map(|m| m.keys().cloned().collect()))
        .unwrap_or_default()
}
