//! One table's operations applied in the batch's transaction, in order: a row
//! moved in place on its own, the rest batched. A batch refused for a
//! row-level reason is rolled back to a savepoint and applied row by row, so
//! that only the offending rows are refused.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::cell::Cell;
use super::copy::{COPY_MIN_ROWS, StraightIn, arbiter_key};
use super::{SqlSink, TableInfo, Tx};
use crate::change::{Op, key_text};
use crate::dialect::Dialect;
use crate::error::{SqlError, is_row_error};

impl SqlSink {
    /// Applies one table's operations in order; refused records are returned
    /// with the reason. A row moved in place is applied on its own, between
    /// what comes before and after it.
    pub(super) async fn apply(
        &mut self,
        table: &str,
        ops: Vec<(usize, Op)>,
        key: &[String],
    ) -> Result<Vec<(usize, String)>, SqlError> {
        let mut refused = Vec::new();
        let mut segment = Vec::with_capacity(ops.len());
        for (i, op) in ops {
            match op {
                Op::Move { from, row } => {
                    refused.extend(self.apply_segment(table, std::mem::take(&mut segment), key).await?);
                    if let Some(reason) = self.apply_move(table, &from, &row, key).await? {
                        refused.push((i, reason));
                    }
                }
                op => segment.push((i, op)),
            }
        }
        refused.extend(self.apply_segment(table, segment, key).await?);
        Ok(refused)
    }

    /// `UPDATE ... SET <row> WHERE <key> = <from>`, or an insert of `row` when
    /// there was no such row; `Some(reason)` when the database refused it.
    async fn apply_move(
        &mut self,
        table: &str,
        from: &Map<String, Value>,
        row: &Map<String, Value>,
        key: &[String],
    ) -> Result<Option<String>, SqlError> {
        let info = self.tables.get(table).cloned().ok_or_else(|| SqlError::NoColumns { table: table.to_string() })?;
        let d = self.dialect;
        let columns: Vec<String> =
            info.columns.iter().filter(|(c, _)| row.contains_key(c)).map(|(c, _)| c.clone()).collect();
        let mut n = 0;
        let mut param = |c: &str| {
            n += 1;
            d.param(n, info.ty(c).unwrap_or("text"))
        };
        let sets: Vec<String> = columns.iter().map(|c| format!("{} = {}", d.quote(c), param(c))).collect();
        let wheres: Vec<String> = key.iter().map(|k| format!("{} = {}", d.quote(k), param(k))).collect();
        let sql = format!("UPDATE {} SET {} WHERE {}", info.quoted, sets.join(", "), wheres.join(" AND "));
        let cells: Vec<Cell<'_>> = columns
            .iter()
            .map(|c| d.cell(row.get(c), info.ty(c).unwrap_or("text")))
            .chain(key.iter().map(|k| d.cell(from.get(k), info.ty(k).unwrap_or("text"))))
            .collect();
        self.savepoint("flowgate_row", table).await?;
        let conn = self.conn.as_mut().expect("connected");
        let moved = match conn.execute(&sql, cells).await {
            Ok(affected) => affected > 0,
            Err(e) if is_row_error(&e) => {
                self.raw("ROLLBACK TO SAVEPOINT flowgate_row", table).await?;
                return Ok(Some(e.to_string()));
            }
            Err(e) => return Err(SqlError::Write { table: table.to_string(), source: e }),
        };
        if moved {
            return Ok(None);
        }
        // The old row was not there: write the new one as it came.
        let insert = vec![(0, Op::Upsert(row.clone()))];
        Ok(self.apply_segment(table, insert, key).await?.pop().map(|(_, reason)| reason))
    }

    /// Applies operations other than moves, batched; refused records are
    /// returned with the reason.
    async fn apply_segment(
        &mut self,
        table: &str,
        ops: Vec<(usize, Op)>,
        key: &[String],
    ) -> Result<Vec<(usize, String)>, SqlError> {
        // Only the last operation per key counts (an upsert carries the whole row,
        // a delete removes it), which also keeps one statement from touching a
        // row twice. A truncate drops what came before it.
        let start = ops.iter().rposition(|(_, op)| *op == Op::Truncate);
        let truncate = start.map(|t| ops[t].0);
        let mut last: Vec<(usize, Op)> = Vec::with_capacity(ops.len());
        let mut index: HashMap<String, usize> = HashMap::new();
        for (i, op) in ops.into_iter().skip(start.map_or(0, |t| t + 1)) {
            match op {
                Op::Insert(_) => last.push((i, op)),
                // None after the last truncate; moves are applied on their own.
                Op::Truncate | Op::Move { .. } => {}
                Op::Upsert(ref row) | Op::Create(ref row) | Op::Delete(ref row) => {
                    let k = key_text(row, key);
                    match index.get(&k) {
                        Some(&at) => {
                            // A row created again after an earlier change to
                            // its key in the batch may still be in the table.
                            let mut op = match op {
                                Op::Create(row) => Op::Upsert(row),
                                op => op,
                            };
                            // An upsert lacking unchanged TOAST values takes them
                            // from the one before it in the batch.
                            if let (Op::Upsert(new), (_, Op::Upsert(old) | Op::Create(old))) = (&mut op, &last[at]) {
                                for (c, v) in old {
                                    new.entry(c.clone()).or_insert_with(|| v.clone());
                                }
                            }
                            last[at] = (i, op);
                        }
                        None => {
                            index.insert(k, last.len());
                            last.push((i, op));
                        }
                    }
                }
            }
        }
        let info = self.tables.get(table).cloned().ok_or_else(|| SqlError::NoColumns { table: table.to_string() })?;
        let mut refused = Vec::new();
        self.savepoint("flowgate_batch", table).await?;
        match self.apply_grouped(&info, truncate, &last, key).await {
            Ok(()) => {}
            Err(e) if is_row_error(&e) => {
                tracing::debug!(table, error = %e, "a row was refused; applying the batch row by row");
                self.metrics.row_isolations.increment(1);
                self.raw("ROLLBACK TO SAVEPOINT flowgate_batch", table).await?;
                if let Some(i) = truncate
                    && let Err(e) = self.apply_grouped(&info, Some(i), &[], key).await
                {
                    return Err(SqlError::Write { table: table.to_string(), source: e });
                }
                for (i, op) in &last {
                    self.savepoint("flowgate_row", table).await?;
                    match self.apply_grouped(&info, None, std::slice::from_ref(&(*i, op.clone())), key).await {
                        Ok(()) => {}
                        Err(e) if is_row_error(&e) => {
                            self.raw("ROLLBACK TO SAVEPOINT flowgate_row", table).await?;
                            refused.push((*i, e.to_string()));
                        }
                        Err(e) => return Err(SqlError::Write { table: table.to_string(), source: e }),
                    }
                }
            }
            Err(e) => return Err(SqlError::Write { table: table.to_string(), source: e }),
        }
        // Freeing a batch's rows is thousands of small frees: on a blocking
        // thread, not between its last statement and its commit.
        if last.len() >= COPY_MIN_ROWS {
            tokio::task::spawn_blocking(move || drop(last));
        }
        Ok(refused)
    }

    /// Sets the batch's savepoint as [`savepoint`](Self::savepoint) does, and
    /// says whether `info` still describes the table: `None` when not.
    /// Binary `COPY` data carries no types: into a column whose type changed
    /// since the table was described, it would be misread rather than
    /// refused (a `double precision`'s bits as a `bigint`). Checked in the
    /// same round trip, under the lock the `COPY` takes anyway, so that no
    /// `ALTER TABLE` comes between the check and the `COPY`. An upsert that
    /// may go straight in is checked alike, its rows binary or text: its try
    /// takes that lock anyway.
    ///
    /// On Postgres 11 and later, an upsert (`try_in` `Maybe`) takes its turn
    /// at going straight in here, and its look at the key's index comes
    /// along in the same round trip: returned is what the upsert is to do
    /// (see [`StraightIn`]). Before, it is left to look on its own.
    pub(super) async fn savepoint_described(
        &mut self,
        info: &TableInfo,
        table: &str,
        key: &[String],
        try_in: StraightIn,
    ) -> Result<Option<StraightIn>, SqlError> {
        // Read before `conn()`, which on reconnecting forgets the transaction:
        // `BEGIN` then goes out on the new connection, as in `savepoint`.
        let began = match self.tx {
            Tx::Pending(began) => Some(began),
            _ => None,
        };
        let conn = self.conn().await?;
        // `indnkeyatts`, which the look at the key's index reads, came with
        // Postgres 11: before, the look would fail the whole round trip, and
        // the upsert looks on its own.
        let postgres_11 = conn.postgres().and_then(|c| c.server_version_num()).is_some_and(|v| v >= 110_000);
        let (try_in, lookup) = match try_in {
            StraightIn::Maybe if postgres_11 => {
                if self.tries_straight_in(info) {
                    let (table, key) = (Dialect::pg_literal(&info.quoted), Dialect::pg_literal(&arbiter_key(key)));
                    (try_in, Some(Dialect::Postgres.arbiter_sql(&table, &key)))
                } else {
                    (StraightIn::No, None)
                }
            }
            other => (other, None),
        };
        let (arbiter, then) = match &lookup {
            Some(lookup) => (lookup.as_str(), "; SAVEPOINT flowgate_new"),
            None => ("NULL", ""),
        };
        let begin = if began.is_some() { format!("{}; ", self.begin()) } else { String::new() };
        let sql = format!(
            "{begin}SAVEPOINT flowgate_batch; LOCK TABLE {} IN ROW EXCLUSIVE MODE; \
             SELECT (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), chr(31) \
                     ORDER BY a.attnum) \
                     FROM pg_attribute a WHERE a.attrelid = {}::regclass AND a.attnum > 0 AND NOT a.attisdropped), \
             {arbiter}{then}",
            info.quoted,
            Dialect::pg_literal(&info.quoted)
        );
        let row = self.conn().await?.last_row(&sql).await.map_err(SqlError::write(table))?;
        if let Some(began) = began {
            self.tx = Tx::Open(began);
        }
        let described: Vec<String> = info.columns.iter().map(|(c, ty)| format!("{c} {ty}")).collect();
        if row.first().and_then(Option::as_deref) != Some(described.join("\u{1f}").as_str()) {
            return Ok(None);
        }
        Ok(Some(match lookup {
            Some(_) => StraightIn::Looked(row.get(1).and_then(Option::as_deref) == Some("true")),
            None => try_in,
        }))
    }

    /// Sets savepoint `name`; the batch's first one also begins its transaction.
    pub(super) async fn savepoint(&mut self, name: &str, table: &str) -> Result<(), SqlError> {
        let Tx::Pending(began) = self.tx else {
            return self.raw(&format!("SAVEPOINT {name}"), table).await;
        };
        self.raw(&format!("{}; SAVEPOINT {name}", self.begin()), table).await?;
        self.tx = Tx::Open(began);
        Ok(())
    }
}
