//! Snapshots of tables added to a running pipeline, taken incrementally (the
//! DBLog algorithm, as Debezium's incremental snapshots): the table is read in
//! key-ordered chunks while the stream goes on. Each chunk is read between a
//! low and a high watermark written into the WAL with
//! `pg_logical_emit_message`, each in a transaction of its own, so each
//! arrives in the stream at its commit's place among the other commits. A row that a transaction delivered between
//! the two watermarks touched is dropped from the chunk, since the streamed
//! change is as new or newer; the chunk's other rows are emitted where the high
//! watermark arrives, ordered with the stream. No transaction stays open, so
//! nothing holds back vacuum, and the progress (the last key of the last
//! acknowledged chunk) is kept with the slot's record: a restart re-reads at
//! most one chunk.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use flowgate_sdk::Batch;
use pg_walstream::{ColumnValue, RowData};
use sqlx::{PgConnection, Row};

use crate::avro;
use crate::catalog::quote_ident;
use crate::error::PgCdcError;
use crate::event::{Encoder, Op, Origin};
use crate::state::Todo;
use crate::table::Table;

/// The prefix of the watermark messages; their content names the slot, so
/// that pipelines sharing the database ignore each other's.
pub(super) const PREFIX: &str = "flowgate.snapshot";

/// The prefix of requests to snapshot tables again (`flowgate snapshot`).
pub(super) const SIGNAL: &str = "flowgate.signal";

/// A request written by `flowgate snapshot`, for the pipeline of `slot`.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Signal {
    pub slot: String,
    pub snapshot: Vec<(String, String)>,
}

/// Rows read per chunk (and held while it waits for its high watermark).
pub(super) const CHUNK_ROWS: usize = 2048;

/// What acknowledging a batch completes: a chunk of a table, up to `after`.
#[derive(Clone, Debug)]
pub(super) struct ChunkDone {
    pub todo: Todo,
    /// The table is done (this chunk was its last).
    pub complete: bool,
}

/// A chunk read, waiting for its watermarks in the stream.
struct Chunk {
    id: u64,
    todo: Todo,
    table: Arc<Table>,
    /// The key columns, as indices into the table's columns.
    key: Vec<usize>,
    /// The rows' keys in key order, and the rows by key.
    order: Vec<Vec<Option<String>>>,
    rows: HashMap<Vec<Option<String>>, RowData>,
    /// The low watermark arrived: changes to the table drop rows.
    window: bool,
    /// Fewer rows than asked for: the table ends with this chunk.
    complete: bool,
}

#[derive(Default)]
pub(super) struct Incremental {
    pub(super) slot: String,
    pub(super) queue: VecDeque<Todo>,
    chunk: Option<Chunk>,
    next_id: u64,
    /// The chunk emitted into the batch being read, for its mark.
    pub(super) done: Option<ChunkDone>,
}

/// A watermark's text: the slot, and an id unique to this run, so that the
/// watermarks of an earlier run (replayed from the slot after a crash or a
/// takeover) never match a chunk of this one.
fn watermark(slot: &str, kind: &str, id: u64) -> String {
    static RUN: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        t ^ u128::from(std::process::id())
    });
    format!("{kind} {slot} {run:x}.{id}")
}

fn text(v: Option<&ColumnValue>) -> Option<String> {
    match v? {
        ColumnValue::Null => None,
        ColumnValue::Text(b) | ColumnValue::Binary(b) => Some(String::from_utf8_lossy(b).into_owned()),
    }
}

impl Incremental {
    /// Whether a chunk should be read now: a table waits and no chunk is out.
    pub(super) fn wants_chunk(&self) -> bool {
        self.chunk.is_none() && !self.queue.is_empty()
    }

    /// Reads the next chunk of the first table waiting, between two watermarks.
    /// `keys`: the key columns of each captured table.
    pub(super) async fn read_chunk(
        &mut self,
        conn: &mut PgConnection,
        keys: &HashMap<(String, String), Vec<String>>,
    ) -> Result<(), PgCdcError> {
        let Some(todo) = self.queue.front().cloned() else { return Ok(()) };
        let q = |e| PgCdcError::db(format!("cannot read a chunk of `{}.{}`", todo.schema, todo.table), e);
        let columns = sqlx::query(
            "SELECT a.attname::text, a.atttypid::int8, a.atttypmod, format_type(a.atttypid, a.atttypmod)
               FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        )
        .bind(&todo.schema)
        .bind(&todo.table)
        .fetch_all(&mut *conn)
        .await
        .map_err(q)?;
        let names: Vec<String> = columns.iter().map(|r| r.get(0)).collect();
        let key_names = keys.get(&(todo.schema.clone(), todo.table.clone())).cloned().unwrap_or_default();
        let key: Vec<usize> = key_names.iter().filter_map(|k| names.iter().position(|n| n == k)).collect();
        if key.is_empty() || key.len() != key_names.len() {
            return Err(PgCdcError::Setup(format!(
                "`{}.{}` has no key to read it in chunks by; give it a primary key or name one in `keys`",
                todo.schema, todo.table
            )));
        }
        let table = Arc::new(avro::with_schema(Table::new(
            todo.schema.as_str().into(),
            todo.table.as_str().into(),
            false,
            columns.iter().map(|r| {
                let name: String = r.get(0);
                let is_key = key_names.contains(&name);
                (Arc::from(name), r.get::<i64, _>(1) as u32, r.get::<i32, _>(2), is_key)
            }),
        )));
        let select: Vec<String> = names.iter().map(|n| format!("{}::text", quote_ident(n))).collect();
        let key_list: Vec<String> = key.iter().map(|&i| quote_ident(&names[i])).collect();
        let mut sql = format!(
            "SELECT ARRAY[{}] FROM {}.{}",
            select.join(", "),
            quote_ident(&todo.schema),
            quote_ident(&todo.table)
        );
        if todo.after.is_some() {
            let params: Vec<String> = key
                .iter()
                .enumerate()
                .map(|(p, &i)| format!("(${}::text)::{}", p + 1, columns[i].get::<String, _>(3)))
                .collect();
            sql.push_str(&format!(" WHERE ({}) > ({})", key_list.join(", "), params.join(", ")));
        }
        sql.push_str(&format!(" ORDER BY {} LIMIT {CHUNK_ROWS}", key_list.join(", ")));

        let id = self.next_id;
        self.next_id += 1;
        self.emit(conn, "low", id).await?;
        // Identifiers are quoted by quote_ident; the key values are bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for v in todo.after.iter().flatten() {
            query = query.bind(v);
        }
        let rows = query.fetch_all(&mut *conn).await.map_err(q)?;
        self.emit(conn, "high", id).await?;

        let mut chunk = Chunk {
            id,
            todo: todo.clone(),
            key,
            order: Vec::with_capacity(rows.len()),
            rows: HashMap::with_capacity(rows.len()),
            window: false,
            complete: rows.len() < CHUNK_ROWS,
            table,
        };
        for r in rows {
            let values: Vec<Option<String>> = r.get(0);
            let mut row = RowData::with_capacity(values.len());
            for (column, v) in chunk.table.columns.iter().zip(&values) {
                let value = match v {
                    Some(s) => ColumnValue::Text(Bytes::from(s.clone())),
                    None => ColumnValue::Null,
                };
                row.push(Arc::clone(&column.name), value);
            }
            let k: Vec<Option<String>> = chunk.key.iter().map(|&i| values[i].clone()).collect();
            chunk.order.push(k.clone());
            chunk.rows.insert(k, row);
        }
        tracing::debug!(table = %format!("{}.{}", todo.schema, todo.table), chunk = id, rows = chunk.order.len(),
            "read a chunk of the incremental snapshot");
        self.chunk = Some(chunk);
        Ok(())
    }

    async fn emit(&self, conn: &mut PgConnection, kind: &str, id: u64) -> Result<(), PgCdcError> {
        // Transactional: its commit flushes the WAL, so the walsender sends it
        // at once (a non-transactional one waits for the WAL writer, 200 ms a
        // chunk), and it arrives at its commit's place among the other
        // commits, which is the order the stream's changes have.
        sqlx::query("SELECT pg_logical_emit_message(true, $1, $2)")
            .bind(PREFIX)
            .bind(watermark(&self.slot, kind, id))
            .execute(&mut *conn)
            .await
            .map_err(|e| PgCdcError::db("cannot write a snapshot watermark into the WAL", e))?;
        Ok(())
    }

    /// A streamed change to `table`: inside a chunk's window, its rows of the
    /// keys the change touched are dropped.
    pub(super) fn touched(&mut self, table: &Table, before: Option<&RowData>, after: Option<&RowData>) {
        let Some(chunk) = self.chunk.as_mut().filter(|c| c.window) else { return };
        if *table.schema != *chunk.todo.schema || *table.name != *chunk.todo.table {
            return;
        }
        for row in [before, after].into_iter().flatten() {
            let k: Vec<Option<String>> =
                chunk.key.iter().map(|&i| text(row.get(&chunk.table.columns[i].name))).collect();
            chunk.rows.remove(&k);
        }
    }

    /// A watermark message: the low one opens the chunk's window, the high one
    /// emits the chunk's remaining rows into `batch`.
    pub(super) fn watermark(
        &mut self,
        content: &[u8],
        lsn: u64,
        origin: &Origin<'_>,
        encoder: &mut Encoder,
        batch: &mut Batch,
    ) {
        let Some(chunk) = self.chunk.as_mut() else { return };
        let content = String::from_utf8_lossy(content);
        if content == watermark(&self.slot, "low", chunk.id) {
            chunk.window = true;
        } else if content == watermark(&self.slot, "high", chunk.id) {
            let chunk = self.chunk.take().expect("checked above");
            for k in &chunk.order {
                if let Some(row) = chunk.rows.get(k) {
                    batch.records.push(encoder.change(origin, &chunk.table, Op::Read, lsn, None, Some(row)));
                }
            }
            let after = chunk.order.last().map(|k| k.iter().map(|v| v.clone().unwrap_or_default()).collect());
            let mut todo = chunk.todo;
            if after.is_some() {
                todo.after = after;
            }
            if chunk.complete {
                tracing::info!(table = %format!("{}.{}", todo.schema, todo.table), "incremental snapshot read");
                self.queue.pop_front();
            } else if let Some(front) = self.queue.front_mut() {
                front.after = todo.after.clone();
            }
            self.done = Some(ChunkDone { todo, complete: chunk.complete });
        }
    }

    /// A TRUNCATE of the chunk's table (`schema.table`) in its window: none
    /// of the rows read is there any more.
    pub(super) fn truncated(&mut self, name: &str) {
        if let Some(chunk) = self.chunk.as_mut().filter(|c| c.window)
            && name == format!("{}.{}", chunk.todo.schema, chunk.todo.table)
        {
            chunk.rows.clear();
        }
    }

    /// After a reconnect the stream starts again from the last transaction
    /// handed out: a chunk waiting for its watermarks is read again.
    pub(super) fn restart_chunk(&mut self) {
        self.chunk = None;
    }
}
