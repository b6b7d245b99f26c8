//! Incremental snapshots (the DBLog algorithm, as Debezium's): a table is read
//! in key-ordered chunks while the stream goes on. Each chunk is read between
//! a low and a high watermark written into the WAL with
//! `pg_logical_emit_message`, each in a transaction of its own, so each
//! arrives in the stream at its commit's place among the other commits. A row
//! that a transaction delivered between the two watermarks touched is dropped
//! from the chunk, since the streamed change is as new or newer; the chunk's
//! other rows are emitted where the high watermark arrives, ordered with the
//! stream (unless the change left a TOAST value out: see [`Replay`]). No
//! transaction stays open longer than a chunk's `COPY`, so nothing holds back
//! vacuum. The rows carry the low watermark's LSN: they
//! are the table as it was between the two watermarks.
//!
//! A transaction's commit enters the WAL, and the stream, before other
//! sessions see it, so a chunk read just after its low watermark can miss a
//! transaction that committed before it: that change would go out first and
//! the chunk's older row after it. So a reader notes the transactions its
//! snapshot shows as running, and its rows count only if the stream
//! delivered none of them before the low watermark; otherwise they are
//! dropped and the chunk read again with a new low watermark. Such a
//! transaction is usually seen within microseconds; a synchronous standby
//! can hold it for as long as it takes to answer. The stream keeps the ids
//! of the last 65,536 transactions it delivered for this: a transaction held
//! unseen while more than that many others went through is not caught.
//!
//! Readers (`workers` of them, each with a connection of its own) run beside
//! the stream, so the server reads the next chunk while the last one is
//! emitted and written; tasks beside each reader encode the rows into
//! records as they come, on every core. A reader writes a chunk's high
//! watermark after it has read the next one when there is one to read at
//! once, so that its connection does not wait for the encoding: each reader
//! holds at most two chunks. With more than one reader, a table is cut into key
//! ranges (the key `chunk_size` rows on, found through the index) read side
//! by side. A table's chunks go out in key order, and a reader writes its
//! high watermark only while fewer than `workers` chunks are emitted and not
//! yet acknowledged: the progress kept (the last key of the last
//! acknowledged chunk, with the slot's record) is never more than `workers`
//! chunks behind what was emitted, so a restart reads at most that much again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use flowgate_sdk::{Batch, Record};
use futures::TryStreamExt;
use pg_walstream::{ColumnValue, RowData};
use sqlx::{PgConnection, Row};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::avro;
use crate::catalog::{self, Keys, quote_ident};
use crate::config::Snapshot;
use crate::error::PgCdcError;
use crate::event::{Encoder, Origin};
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

/// What acknowledging a batch completes: a chunk of a table, up to `after`.
#[derive(Clone, Debug)]
pub(super) struct ChunkDone {
    pub todo: Todo,
    /// The reading it belongs to.
    cursor: u64,
    /// The table is done (this chunk was its last).
    pub complete: bool,
    /// The readers' budget of chunks out and not acknowledged, and whether
    /// this chunk gave its share back (a save retried after a failure saves
    /// it again).
    permits: Arc<Semaphore>,
    given_back: Arc<AtomicBool>,
}

impl ChunkDone {
    /// The chunk is recorded: another may go out.
    pub(super) fn recorded(&self) {
        if !self.given_back.swap(true, Ordering::Relaxed) {
            self.permits.add_permits(1);
        }
    }
}

/// A table being read: where its next chunk starts, and the order its chunks
/// go out in.
struct Cursor {
    /// Unique to this reading of the table.
    id: u64,
    /// `after`: where the next chunk starts.
    todo: Todo,
    /// The end of the last chunk emitted: where a restart begins.
    emitted: Option<Vec<String>>,
    /// A reader is finding where its chunk ends; the next waits.
    busy: bool,
    /// The last chunk is being read.
    exhausted: bool,
    next_seq: u64,
    /// The chunk whose high watermark goes next.
    next_high: u64,
}

#[derive(Default)]
struct Plan {
    tables: VecDeque<Cursor>,
    /// Each table's latest reading, by cursor id.
    latest: HashMap<(String, String), u64>,
    /// The readers of this plan stop (a reconnect or a step-down made a new one).
    closed: bool,
}

impl Plan {
    /// A new reading of a table (ids are unique in the process, so that a
    /// chunk of a reading given up is told apart after a restart too).
    fn push(&mut self, todo: Todo) {
        static NEXT_CURSOR: AtomicU64 = AtomicU64::new(1);
        self.push_as(NEXT_CURSOR.fetch_add(1, Ordering::Relaxed), todo);
    }

    fn push_as(&mut self, id: u64, todo: Todo) {
        self.latest.insert((todo.schema.clone(), todo.table.clone()), id);
        self.tables.push_back(Cursor {
            id,
            emitted: todo.after.clone(),
            todo,
            busy: false,
            exhausted: false,
            next_seq: 0,
            next_high: 0,
        });
    }

    fn cursor(&mut self, id: u64) -> Option<&mut Cursor> {
        self.tables.iter_mut().find(|c| c.id == id)
    }
}

/// How many transaction ids the stream keeps: see the module's notes.
const DELIVERED_KEPT: usize = 65_536;

/// The transactions the stream delivered, and what each chunk's reading
/// needs of them: see [`Delivered::check`].
#[derive(Default)]
struct Delivered {
    /// The last ones, oldest first.
    xids: VecDeque<u32>,
    /// Where each of those came: its count of deliveries before it.
    at: HashMap<u32, u64>,
    /// How many were delivered in all.
    count: u64,
    chunks: HashMap<u64, Check>,
}

/// A chunk's check, which has two halves: the transactions its snapshot
/// shows as running (from the reader) and how many transactions had been
/// delivered when its low watermark came (from the stream).
enum Check {
    Running(Vec<u32>),
    Low(u64),
    /// Whether one of the running ones was delivered before the low watermark.
    Missed(bool),
}

impl Delivered {
    /// One of `running` was delivered before the `low`-th delivery: it was
    /// not visible to the chunk's snapshot, and its change went out before
    /// the window opened. A low watermark older than what is kept cannot be
    /// told: a miss.
    fn missed(&self, running: &[u32], low: u64) -> bool {
        let first = self.count - self.xids.len() as u64;
        low < first || running.iter().any(|x| self.at.get(x).is_some_and(|&at| at < low))
    }

    fn push(&mut self, xid: u32) {
        if self.xids.len() == DELIVERED_KEPT
            && let Some(old) = self.xids.pop_front()
            && self.at.get(&old) == Some(&(self.count - DELIVERED_KEPT as u64))
        {
            self.at.remove(&old);
        }
        self.xids.push_back(xid);
        self.at.insert(xid, self.count);
        self.count += 1;
    }

    /// The half `check` of chunk `id`; whether the chunk missed a change,
    /// once both halves are in.
    fn check(&mut self, id: u64, check: Check) -> Option<bool> {
        let missed = match (self.chunks.remove(&id), check) {
            (Some(Check::Low(low)), Check::Running(running)) | (Some(Check::Running(running)), Check::Low(low)) => {
                self.missed(&running, low)
            }
            (_, half) => {
                self.chunks.insert(id, half);
                return None;
            }
        };
        self.chunks.insert(id, Check::Missed(missed));
        Some(missed)
    }
}

/// What the readers share with the stream.
struct Shared {
    plan: Mutex<Plan>,
    changed: Notify,
    /// Outlives a restart of the plan: a transaction delivered before it can
    /// still be running in the next chunk's snapshot.
    delivered: Arc<Mutex<Delivered>>,
    permits: Arc<Semaphore>,
    url: String,
    slot: String,
    /// Named in the records.
    pipeline: Arc<str>,
    db: Arc<str>,
    /// The key each table is read in chunks by, and its records' key.
    keys: Arc<Keys>,
    record_keys: Arc<Keys>,
    settings: Snapshot,
}

impl Shared {
    fn plan(&self) -> MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn delivered(&self) -> MutexGuard<'_, Delivered> {
        self.delivered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether chunk `id`, read in a snapshot that shows `running` as
    /// running, missed a change the stream delivered before its low
    /// watermark; `None` if the plan closed meanwhile.
    async fn missed(&self, id: u64, running: Vec<u32>) -> Option<bool> {
        let mut half = Some(Check::Running(running));
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut delivered = self.delivered();
                if let Some(check) = half.take() {
                    delivered.check(id, check);
                }
                if let Some(Check::Missed(missed)) = delivered.chunks.get(&id) {
                    let missed = *missed;
                    delivered.chunks.remove(&id);
                    return Some(missed);
                }
            }
            if self.plan().closed {
                // A restart may have cleared the checks before this one came.
                self.delivered().chunks.remove(&id);
                return None;
            }
            notified.await;
        }
    }

    /// The next chunk to read, waiting (with `wait`) while every table left
    /// is being cut or has its last chunk out; `None` once none is left or the
    /// plan is closed, or without `wait` when none can be read now.
    async fn next_job(&self, wait: bool) -> Option<Job> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut plan = self.plan();
                if plan.closed || plan.tables.is_empty() {
                    return None;
                }
                if let Some(c) = plan.tables.iter_mut().find(|c| !c.busy && !c.exhausted) {
                    c.busy = true;
                    c.next_seq += 1;
                    return Some(Job { cursor: c.id, seq: c.next_seq - 1, todo: c.todo.clone() });
                }
            }
            if !wait {
                return None;
            }
            notified.await;
        }
    }

    /// The job's cursor moves on to `after`; `last`: nothing is left past it.
    fn advance(&self, cursor: u64, after: Option<Vec<String>>, last: bool) {
        if let Some(c) = self.plan().cursor(cursor) {
            if after.is_some() {
                c.todo.after = after;
            }
            c.exhausted = last;
            c.busy = false;
        }
        self.changed.notify_waiters();
    }

    /// Waits until chunk `seq` of the cursor is the next to go out; false when
    /// the plan closed meanwhile.
    async fn wait_turn(&self, cursor: u64, seq: u64) -> bool {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut plan = self.plan();
                if plan.closed {
                    return false;
                }
                match plan.cursor(cursor) {
                    Some(c) if c.next_high == seq => return true,
                    Some(_) => {}
                    None => return false,
                }
            }
            notified.await;
        }
    }

    fn turn_done(&self, cursor: u64) {
        if let Some(c) = self.plan().cursor(cursor) {
            c.next_high += 1;
        }
        self.changed.notify_waiters();
    }
}

struct Job {
    cursor: u64,
    seq: u64,
    todo: Todo,
}

/// What readers tell the stream.
enum Report {
    /// A chunk's low watermark is about to be written.
    Open {
        id: u64,
        schema: String,
        table: String,
        key: Vec<String>,
    },
    /// Its rows, sent before its high watermark is written.
    Chunk(Chunk),
    /// The chunk is read again under another id.
    Abandoned(u64),
    Failed(PgCdcError),
}

struct Chunk {
    id: u64,
    cursor: u64,
    /// The rows' records in key order (`None`: gave way to a streamed
    /// change), and their keys. Encoded beside the reader, so that the
    /// stream only moves them at the high watermark (and, when a change
    /// touches the table in the chunk's window, looks their keys up).
    rows: Vec<Option<Record>>,
    keys: RowKeys,
    /// Where the table's next chunk starts (as read: the last row's key).
    end: Option<Vec<String>>,
    /// The table ends with this chunk.
    complete: bool,
}

/// A chunk between its watermarks, as the stream sees it.
struct Window {
    schema: String,
    table: String,
    key: Vec<String>,
    /// The low watermark arrived: changes to the table drop rows.
    open: bool,
    /// Keys changed before the rows came, and whether the table was truncated.
    touched: Vec<Vec<u8>>,
    truncated: bool,
    chunk: Option<Chunk>,
    /// The keys changed in the window whose rows may need going out after
    /// all (see [`Replay`]); kept only for tables without `REPLICA IDENTITY
    /// FULL`, and once the rows came, only for keys among them.
    replays: HashMap<Vec<u8>, Replay>,
}

/// A row that gave way to changes in its window, and those changes. When
/// they left an unchanged TOAST value out (a placeholder under the default
/// replica identity), the row was the only carrier of that value: dropped, the
/// value would never reach the sink. So the row goes out at the high
/// watermark followed by the window's changes to its key again, in their
/// order: whether the row was read before or after each change, applying
/// them in that order (a placeholder keeping the value) ends at the row as it
/// now is, its TOAST values whole. The changes are delivered twice, which
/// at-least-once allows.
#[derive(Default)]
struct Replay {
    row: Option<Record>,
    /// The changes to go out again, each with the columns it left out (by
    /// index). A change that carries every value an earlier one carries
    /// replaces it, so a key updated all window long keeps one or a few.
    changes: Vec<(Vec<Record>, Vec<usize>)>,
    /// Nothing to replay: a change carried every value or deleted the row
    /// (what the sink has is whole from then on), or the key moved (the row
    /// read would come back under its old key; the value is lost there, as
    /// in Debezium).
    settled: bool,
}

impl Replay {
    fn add(&mut self, records: &[Record], left: Vec<usize>, moved: bool) {
        if self.settled {
            return;
        }
        if moved || left.is_empty() {
            *self = Replay { settled: true, ..Replay::default() };
            return;
        }
        self.changes.retain(|(_, earlier)| !left.iter().all(|c| earlier.contains(c)));
        self.changes.push((records.to_vec(), left));
    }
}

pub(super) struct Incremental {
    shared: Arc<Shared>,
    readers: JoinSet<()>,
    tx: mpsc::UnboundedSender<Report>,
    reports: mpsc::UnboundedReceiver<Report>,
    windows: HashMap<u64, Window>,
    /// Chunks emitted into the batch being read, for its mark.
    pub(super) done: Vec<ChunkDone>,
    failed: Option<PgCdcError>,
}

impl Default for Incremental {
    fn default() -> Self {
        let names = (Arc::from(""), Arc::from(""));
        Incremental::new(String::new(), String::new(), names, Snapshot::default(), Keys::default(), Keys::default())
    }
}

/// A watermark's text: the slot, and a tag unique to this run, so that the
/// watermarks of an earlier run (replayed from the slot after a crash or a
/// takeover) never match a chunk of this one.
fn watermark(slot: &str, kind: &str, id: u64) -> String {
    format!("{kind} {slot} {}.{id}", run_tag())
}

fn run_tag() -> &'static str {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        format!("{:x}", t ^ u128::from(std::process::id()))
    })
}

/// A watermark of this run for `slot`: its kind and chunk.
fn parse_watermark<'a>(content: &'a str, slot: &str) -> Option<(&'a str, u64)> {
    let mut parts = content.split(' ');
    let (kind, s, tag) = (parts.next()?, parts.next()?, parts.next()?);
    let (run, id) = tag.split_once('.')?;
    (s == slot && run == run_tag() && parts.next().is_none()).then_some(())?;
    Some((kind, id.parse().ok()?))
}

fn value_bytes(v: &ColumnValue) -> Option<&[u8]> {
    match v {
        ColumnValue::Null => None,
        ColumnValue::Text(b) | ColumnValue::Binary(b) => Some(b),
    }
}

/// A row's key as one byte string (a value is text, so it holds no NUL).
fn key_bytes<'a>(values: impl Iterator<Item = Option<&'a [u8]>>) -> Vec<u8> {
    let mut k = Vec::new();
    push_key(&mut k, values);
    k
}

fn push_key<'a>(k: &mut Vec<u8>, values: impl Iterator<Item = Option<&'a [u8]>>) {
    for v in values {
        match v {
            None => k.push(1),
            Some(v) => {
                k.push(2);
                k.extend_from_slice(v);
                k.push(0);
            }
        }
    }
}

/// Each row's key bytes, end to end, and where each ends; looked up through
/// a map made at the first streamed change to the table in the chunk's
/// window. A snapshot of a table nobody writes to never makes one; under
/// writes the stream makes it (before, the encoder made one for every
/// chunk).
#[derive(Default)]
struct RowKeys {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    by_key: Option<HashMap<Vec<u8>, usize>>,
}

impl RowKeys {
    fn push<'a>(&mut self, values: impl Iterator<Item = Option<&'a [u8]>>) {
        push_key(&mut self.bytes, values);
        self.ends.push(self.bytes.len());
    }

    fn append(&mut self, other: RowKeys) {
        let base = self.bytes.len();
        self.bytes.extend_from_slice(&other.bytes);
        self.ends.extend(other.ends.iter().map(|e| e + base));
    }

    /// The row of `key`, forgotten.
    fn take(&mut self, key: &[u8]) -> Option<usize> {
        let (bytes, ends) = (&self.bytes, &self.ends);
        let by_key = self.by_key.get_or_insert_with(|| {
            let starts = std::iter::once(0).chain(ends.iter().copied());
            starts.zip(ends).enumerate().map(|(i, (a, &b))| (bytes[a..b].to_vec(), i)).collect()
        });
        by_key.remove(key)
    }
}

impl Chunk {
    /// Drops the row of `key`: `None` if the chunk has none (any more),
    /// otherwise the row (`None` if cleared by a truncate).
    fn take_row(&mut self, key: &[u8]) -> Option<Option<Record>> {
        self.keys.take(key).map(|i| self.rows[i].take())
    }

    fn clear(&mut self) {
        self.rows.iter_mut().for_each(|r| *r = None);
    }
}

/// COPY's text format, as the server writes it.
mod copy_text {
    use std::borrow::Cow;

    use bytes::{Bytes, BytesMut};

    /// Cuts the data COPY sends into lines (without their newline); a line
    /// may come in several pieces.
    #[derive(Default)]
    pub struct Lines {
        partial: BytesMut,
    }

    impl Lines {
        pub fn push(&mut self, mut data: Bytes) -> Vec<Bytes> {
            let mut lines = Vec::new();
            while let Some(end) = memchr::memchr(b'\n', &data) {
                let mut line = data.split_to(end + 1);
                line.truncate(end);
                if self.partial.is_empty() {
                    lines.push(line);
                } else {
                    self.partial.extend_from_slice(&line);
                    lines.push(self.partial.split().freeze());
                }
            }
            self.partial.extend_from_slice(&data);
            lines
        }
    }

    /// A line's values into `out`: `\N` is NULL; a value with a backslash
    /// escape is copied unescaped, any other is a slice of the line.
    pub fn fields<'a>(line: &'a [u8], out: &mut Vec<Option<Cow<'a, [u8]>>>) {
        out.clear();
        let mut start = 0;
        for end in memchr::memchr_iter(b'\t', line).chain([line.len()]) {
            let field = &line[start..end];
            out.push(if field == b"\\N" {
                None
            } else if memchr::memchr(b'\\', field).is_some() {
                Some(Cow::Owned(unescape(field)))
            } else {
                Some(Cow::Borrowed(field))
            });
            start = end + 1;
        }
    }

    fn unescape(field: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(field.len());
        let mut bytes = field.iter();
        while let Some(&b) = bytes.next() {
            if b != b'\\' {
                out.push(b);
                continue;
            }
            match bytes.next() {
                Some(b'b') => out.push(0x08),
                Some(b'f') => out.push(0x0c),
                Some(b'n') => out.push(b'\n'),
                Some(b'r') => out.push(b'\r'),
                Some(b't') => out.push(b'\t'),
                Some(b'v') => out.push(0x0b),
                Some(&other) => out.push(other),
                None => out.push(b'\\'),
            }
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn lines_split_across_pieces_and_escapes_are_undone() {
            let mut lines = Lines::default();
            assert!(lines.push(Bytes::from_static(b"1\ta\\tb")).is_empty());
            let got = lines.push(Bytes::from_static(b"\\\\c\t\\N\n2\tx\t\n3\t"));
            assert_eq!(got.len(), 2);
            let values = |line: &Bytes| {
                let mut out = Vec::new();
                fields(line, &mut out);
                out.into_iter().map(|v| v.map(|v| String::from_utf8(v.into_owned()).unwrap())).collect::<Vec<_>>()
            };
            let text = |v: &str| Some(v.to_string());
            assert_eq!(values(&got[0]), vec![text("1"), text("a\tb\\c"), None]);
            assert_eq!(values(&got[1]), vec![text("2"), text("x"), text("")]);
            let last = lines.push(Bytes::from_static(b"y\n"));
            assert_eq!(values(&last[0]), vec![text("3"), text("y")]);
        }
    }
}

impl Incremental {
    /// `keys`: the key each captured table is read in chunks by;
    /// `record_keys`: its records' key.
    /// `pipeline`, `db`: named in the records.
    pub(super) fn new(
        slot: String,
        url: String,
        names: (Arc<str>, Arc<str>),
        settings: Snapshot,
        keys: Keys,
        record_keys: Keys,
    ) -> Self {
        let (pipeline, db) = names;
        let (tx, reports) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            plan: Mutex::default(),
            changed: Notify::new(),
            delivered: Arc::default(),
            permits: Arc::new(Semaphore::new(settings.workers)),
            url,
            slot,
            pipeline,
            db,
            keys: Arc::new(keys),
            record_keys: Arc::new(record_keys),
            settings,
        });
        Incremental {
            shared,
            readers: JoinSet::new(),
            tx,
            reports,
            windows: HashMap::new(),
            done: Vec::new(),
            failed: None,
        }
    }

    /// The slot whose snapshots these are.
    pub(super) fn slot(&self) -> &str {
        &self.shared.slot
    }

    /// Reads `tables` from where each stands, stopping any reading under way.
    pub(super) fn set_queue(&mut self, tables: Vec<Todo>) {
        let mut plan = Plan::default();
        for t in tables {
            plan.push(t);
        }
        self.replace_plan(plan);
    }

    fn replace_plan(&mut self, plan: Plan) {
        {
            let mut plan = self.shared.plan();
            plan.closed = true;
        }
        self.shared.changed.notify_waiters();
        self.readers.abort_all();
        let (tx, reports) = mpsc::unbounded_channel();
        (self.tx, self.reports) = (tx, reports);
        self.windows.clear();
        // The checks under way were the stopped readers'.
        self.shared.delivered().chunks.clear();
        let old = &self.shared;
        self.shared = Arc::new(Shared {
            plan: Mutex::new(plan),
            changed: Notify::new(),
            delivered: Arc::clone(&old.delivered),
            permits: Arc::new(Semaphore::new(old.settings.workers)),
            url: old.url.clone(),
            slot: old.slot.clone(),
            pipeline: Arc::clone(&old.pipeline),
            db: Arc::clone(&old.db),
            keys: Arc::clone(&old.keys),
            record_keys: Arc::clone(&old.record_keys),
            settings: old.settings,
        });
    }

    /// After a reconnect the stream starts again from the last transaction
    /// handed out: the chunks not emitted yet are read again.
    pub(super) fn restart(&mut self) {
        self.restart_but(None);
    }

    /// [`restart`](Self::restart), leaving out the reading of `dropped`.
    fn restart_but(&mut self, dropped: Option<(&str, &str)>) {
        let mut plan = Plan::default();
        {
            let old = self.shared.plan();
            plan.latest = old.latest.clone();
            for c in &old.tables {
                if dropped == Some((c.todo.schema.as_str(), c.todo.table.as_str())) {
                    continue;
                }
                let todo =
                    Todo { schema: c.todo.schema.clone(), table: c.todo.table.clone(), after: c.emitted.clone() };
                plan.push_as(c.id, todo);
            }
        }
        self.replace_plan(plan);
    }

    /// Queues a table to read from the start. A reading of it under way is
    /// given up (the request reset the table's progress to its start): the
    /// readers start again, the other tables from what they emitted, and
    /// what the given-up reading emitted is no longer recorded as progress.
    pub(super) fn queue(&mut self, schema: String, table: String) {
        let reading = self.shared.plan().tables.iter().any(|c| c.todo.schema == schema && c.todo.table == table);
        if reading {
            self.restart_but(Some((&schema, &table)));
        }
        self.shared.plan().push(Todo { schema, table, after: None });
        self.shared.changed.notify_waiters();
    }

    /// Whether a chunk emitted is of the table's latest reading (progress to
    /// record), not of one a request gave up.
    pub(super) fn is_current(&self, done: &ChunkDone) -> bool {
        self.shared.plan().latest.get(&(done.todo.schema.clone(), done.todo.table.clone())) == Some(&done.cursor)
    }

    /// Starts readers while a table has chunks to read; the error of one
    /// that failed, with the reading started again from what was emitted.
    pub(super) fn run_readers(&mut self) -> Result<(), PgCdcError> {
        while let Some(ended) = self.readers.try_join_next() {
            if let Err(e) = ended
                && e.is_panic()
            {
                self.failed.get_or_insert(PgCdcError::Setup("a snapshot reader failed unexpectedly".into()));
            }
        }
        self.drain();
        if let Some(e) = self.failed.take() {
            self.restart();
            return Err(e);
        }
        if self.shared.plan().tables.iter().any(|c| !c.exhausted) {
            while self.readers.len() < self.shared.settings.workers {
                self.readers.spawn(reader(Arc::clone(&self.shared), self.tx.clone()));
            }
        }
        Ok(())
    }

    fn drain(&mut self) {
        while let Ok(report) = self.reports.try_recv() {
            match report {
                Report::Open { id, schema, table, key } => {
                    let window = Window {
                        schema,
                        table,
                        key,
                        open: false,
                        touched: Vec::new(),
                        truncated: false,
                        chunk: None,
                        replays: HashMap::new(),
                    };
                    self.windows.insert(id, window);
                }
                Report::Chunk(mut chunk) => {
                    if let Some(w) = self.windows.get_mut(&chunk.id) {
                        if w.truncated {
                            chunk.clear();
                        }
                        for k in w.touched.drain(..) {
                            // A key changed twice finds its row taken the second time.
                            if let (Some(row), Some(replay)) = (chunk.take_row(&k), w.replays.get_mut(&k))
                                && !replay.settled
                            {
                                replay.row = row;
                            }
                        }
                        w.replays.retain(|_, r| r.row.is_some());
                        w.chunk = Some(chunk);
                    }
                }
                Report::Abandoned(id) => {
                    self.windows.remove(&id);
                }
                Report::Failed(e) => {
                    self.failed.get_or_insert(e);
                }
            }
        }
    }

    /// The stream delivered transaction `xid`.
    pub(super) fn delivered(&mut self, xid: u32) {
        self.shared.delivered().push(xid);
    }

    /// A streamed change to `table`, written as `records`: inside a chunk's
    /// window, its rows of the keys the change touched are dropped (kept
    /// aside for a [`Replay`] where one may be needed).
    pub(super) fn touched(
        &mut self,
        table: &Table,
        before: Option<&RowData>,
        after: Option<&RowData>,
        records: &[Record],
    ) {
        if self.windows.is_empty() {
            return;
        }
        self.drain();
        let left = after.map_or_else(Vec::new, |a| crate::event::left_out(table, before, a));
        let windows =
            self.windows.values_mut().filter(|w| w.open && *w.schema == *table.schema && *w.table == *table.name);
        for w in windows {
            let mut keys: Vec<Vec<u8>> = [before, after]
                .into_iter()
                .flatten()
                .map(|row| key_bytes(w.key.iter().map(|n| row.get(n).and_then(value_bytes))))
                .collect();
            keys.dedup();
            let moved = keys.len() > 1;
            for k in keys {
                let row = match &mut w.chunk {
                    Some(chunk) => chunk.take_row(&k),
                    None => {
                        w.touched.push(k.clone());
                        None
                    }
                };
                // Under FULL identity the old row fills every value in.
                let tracked =
                    !table.full_identity && (w.chunk.is_none() || row.is_some() || w.replays.contains_key(&k));
                if tracked {
                    let replay = w.replays.entry(k).or_default();
                    if let Some(row) = row
                        && !replay.settled
                    {
                        replay.row = row;
                    }
                    replay.add(records, left.clone(), moved);
                }
            }
        }
    }

    /// A TRUNCATE of `schema.table`: none of the rows read in an open window
    /// is there any more.
    pub(super) fn truncated(&mut self, name: &str) {
        self.drain();
        for w in self.windows.values_mut().filter(|w| w.open && name == format!("{}.{}", w.schema, w.table)) {
            match &mut w.chunk {
                Some(chunk) => chunk.clear(),
                None => w.truncated = true,
            }
            // The rows read are gone: replaying them would bring them back.
            w.replays.clear();
        }
    }

    /// A watermark message: the low one opens the chunk's window, the high one
    /// emits the chunk's remaining rows into `batch`.
    pub(super) fn watermark(&mut self, content: &[u8], batch: &mut Batch) {
        let content = String::from_utf8_lossy(content);
        let Some((kind, id)) = parse_watermark(&content, &self.shared.slot) else { return };
        self.drain();
        match kind {
            "low" => {
                if let Some(w) = self.windows.get_mut(&id) {
                    w.open = true;
                    let mut delivered = self.shared.delivered();
                    let low = delivered.count;
                    if delivered.check(id, Check::Low(low)).is_some() {
                        self.shared.changed.notify_waiters();
                    }
                }
            }
            "high" => {
                let Some(window) = self.windows.remove(&id) else { return };
                // The rows are sent before the high watermark is written.
                let Some(chunk) = window.chunk else {
                    self.failed.get_or_insert(PgCdcError::Setup(format!(
                        "the rows of a chunk of `{}.{}` were missing at its high watermark",
                        window.schema, window.table
                    )));
                    return;
                };
                let before = batch.records.len();
                batch.records.reserve(chunk.rows.len());
                batch.records.extend(chunk.rows.into_iter().flatten());
                let table = format!("{}.{}", window.schema, window.table);
                let mut rows = (batch.records.len() - before) as u64;
                for replay in window.replays.into_values().filter(|r| !r.settled) {
                    let Some(row) = replay.row else { continue };
                    tracing::debug!(%table, "a row that gave way to a change leaving a TOAST value out goes out again");
                    rows += 1;
                    batch.records.push(row);
                    batch.records.extend(replay.changes.into_iter().flat_map(|(records, _)| records));
                }
                super::observe::snapshot_rows(&self.shared.pipeline, &table, rows);
                let mut plan = self.shared.plan();
                if let Some(pos) = plan.tables.iter().position(|c| c.id == chunk.cursor) {
                    if chunk.complete {
                        plan.tables.remove(pos);
                        tracing::info!(table = %format!("{}.{}", window.schema, window.table), "incremental snapshot read");
                    } else {
                        plan.tables[pos].emitted = chunk.end.clone();
                    }
                }
                drop(plan);
                self.shared.changed.notify_waiters();
                self.done.push(ChunkDone {
                    todo: Todo { schema: window.schema, table: window.table, after: chunk.end },
                    cursor: chunk.cursor,
                    complete: chunk.complete,
                    permits: Arc::clone(&self.shared.permits),
                    given_back: Arc::default(),
                });
            }
            _ => {}
        }
    }
}

/// A reader: takes chunks until none is left, reporting each. Each chunk's
/// high watermark is written after the next chunk is read: its rows are
/// encoded (and the chunk before it written) while the server sends the
/// next, instead of the connection waiting for them.
async fn reader(shared: Arc<Shared>, tx: mpsc::UnboundedSender<Report>) {
    let mut conn = None;
    let mut pending: Option<Unfinished> = None;
    loop {
        // With a chunk pending, the next is taken only if it can be at once:
        // the one pending may be what the others wait for.
        let job = shared.next_job(pending.is_none()).await;
        let read = match job {
            Some(job) => match read_one(&shared, &tx, &mut conn, job).await {
                Ok(Some(read)) => Some(read),
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Report::Failed(e));
                    return;
                }
            },
            None => None,
        };
        if let (Some(unfinished), Some(c)) = (pending.take(), conn.as_mut()) {
            match finish(&shared, &tx, c, unfinished).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    let _ = tx.send(Report::Failed(e));
                    return;
                }
            }
        } else if read.is_none() {
            return;
        }
        pending = read;
    }
}

/// Reads chunk `job`, leaving its rows encoding and its high watermark to
/// [`finish`]; `None` when the stream is gone.
async fn read_one(
    shared: &Shared,
    tx: &mpsc::UnboundedSender<Report>,
    conn: &mut Option<PgConnection>,
    job: Job,
) -> Result<Option<Unfinished>, PgCdcError> {
    let conn = match conn {
        Some(c) => c,
        None => conn.insert(catalog::connect_as_stream(&shared.url).await?),
    };
    let todo = &job.todo;
    let shown = format!("{}.{}", todo.schema, todo.table);
    let q = |e| PgCdcError::db(format!("cannot read a chunk of `{shown}`"), e);
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
    let key_names = shared.keys.get(&(todo.schema.clone(), todo.table.clone())).cloned().unwrap_or_default();
    let record_keys = shared.record_keys.get(&(todo.schema.clone(), todo.table.clone()));
    let key: Vec<usize> = key_names.iter().filter_map(|k| names.iter().position(|n| n == k)).collect();
    if key.is_empty() || key.len() != key_names.len() {
        return Err(PgCdcError::Setup(format!(
            "`{shown}` has no key to read it in chunks by; give it a primary key or name one in `keys`"
        )));
    }
    let table = Arc::new(avro::with_schema(Table::new(
        todo.schema.as_str().into(),
        todo.table.as_str().into(),
        false,
        columns.iter().map(|r| {
            let name: String = r.get(0);
            // The records' key, as the streamed changes of the table have it.
            let is_key = record_keys.is_some_and(|k| k.contains(&name));
            (Arc::from(name), r.get::<i64, _>(1) as u32, r.get::<i32, _>(2), is_key)
        }),
    )));
    let from = format!("{}.{}", quote_ident(&todo.schema), quote_ident(&todo.table));
    let key_list = key.iter().map(|&i| quote_ident(&names[i])).collect::<Vec<_>>().join(", ");
    // The keys as literals, in both statements: COPY takes no parameters.
    let literals = |values: &[String]| {
        key.iter()
            .zip(values)
            .map(|(&i, v)| format!("'{}'::{}", v.replace('\'', "''"), columns[i].get::<String, _>(3)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if todo.after.is_none() {
        // The planner's estimate, for the progress of the table's snapshot.
        let estimate: Option<f64> =
            sqlx::query_scalar("SELECT reltuples::float8 FROM pg_class WHERE oid = to_regclass($1)")
                .bind(&from)
                .fetch_optional(&mut *conn)
                .await
                .map_err(q)?;
        if let Some(rows) = estimate.filter(|r| *r >= 0.0) {
            super::observe::snapshot_estimate(&shared.pipeline, &shown, rows);
        }
    }
    let after = todo.after.as_ref().map(|a| format!("({key_list}) > ({})", literals(a)));
    let rows_wanted = shared.settings.chunk_size;

    // With several readers, the chunk's end is found first (through the key's
    // index), so that the next reader can start there at once.
    let mut until = None;
    if shared.settings.workers > 1 {
        let keys_text = key.iter().map(|&i| format!("{}::text", quote_ident(&names[i]))).collect::<Vec<_>>();
        let sql = format!(
            "SELECT ARRAY[{}] FROM {from}{} ORDER BY {key_list} OFFSET {} LIMIT 1",
            keys_text.join(", "),
            after.as_ref().map(|a| format!(" WHERE {a}")).unwrap_or_default(),
            rows_wanted - 1
        );
        // Identifiers are quoted by quote_ident, key values as literals.
        let query = sqlx::query(sqlx::AssertSqlSafe(sql));
        let end: Option<Vec<Option<String>>> = query.fetch_optional(&mut *conn).await.map_err(q)?.map(|r| r.get(0));
        until = end.map(|k| k.into_iter().map(Option::unwrap_or_default).collect::<Vec<String>>());
        if until.is_some() {
            shared.advance(job.cursor, until.clone(), false);
        }
    }

    // COPY rather than a query: the server writes each value as its output
    // function does (as the stream does), and the rows come without a
    // per-value decode.
    let mut conditions: Vec<String> = after.into_iter().collect();
    if let Some(u) = &until {
        conditions.push(format!("({key_list}) <= ({})", literals(u)));
    }
    let select: Vec<String> = names.iter().map(|n| quote_ident(n)).collect();
    let mut sql = format!("COPY (SELECT {} FROM {from}", select.join(", "));
    if !conditions.is_empty() {
        sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
    }
    sql.push_str(&format!(" ORDER BY {key_list}"));
    if until.is_none() {
        sql.push_str(&format!(" LIMIT {rows_wanted}"));
    }
    sql.push_str(") TO STDOUT");

    let reading = Reading { job: &job, key: &key, key_names: &key_names, table: &table, sql: &sql, shown: &shown };
    let Some(mut read) = read_settled(shared, tx, conn, &reading).await? else { return Ok(None) };
    read.complete = until.is_none() && read.rows < rows_wanted;
    let ranged = until.is_some();
    read.end = until.or(read.end.take()).or_else(|| todo.after.clone());
    if !ranged {
        // The next chunk starts after this one's last row.
        shared.advance(job.cursor, read.end.clone(), read.complete);
    }
    tracing::debug!(table = %shown, chunk = read.id, rows = read.rows, "read a chunk of the incremental snapshot");
    Ok(Some(read))
}

/// Hands a chunk read to the stream once its rows are encoded, and writes
/// its high watermark in its turn; false when the stream is gone.
async fn finish(
    shared: &Shared,
    tx: &mpsc::UnboundedSender<Report>,
    conn: &mut PgConnection,
    read: Unfinished,
) -> Result<bool, PgCdcError> {
    let Unfinished { id, cursor, seq, complete, end, encoding, .. } = read;
    let failed = || PgCdcError::Setup(format!("encoding a chunk of the incremental snapshot (chunk {id}) failed"));
    let encoded = encoding.await.map_err(|_| failed())??;
    let chunk = Chunk { id, cursor, rows: encoded.rows, keys: encoded.keys, end, complete };
    if tx.send(Report::Chunk(chunk)).is_err() {
        return Ok(false);
    }
    if !shared.wait_turn(cursor, seq).await {
        return Ok(false);
    }
    // Fewer than `workers` chunks out and unacknowledged: see the module's notes.
    let Ok(permit) = Arc::clone(&shared.permits).acquire_owned().await else { return Ok(false) };
    permit.forget();
    emit(conn, &shared.slot, "high", id).await?;
    shared.turn_done(cursor);
    Ok(true)
}

/// A chunk read whose high watermark is not written yet.
struct Unfinished {
    id: u64,
    cursor: u64,
    seq: u64,
    /// How many rows were read.
    rows: usize,
    /// Where the table's next chunk starts (as read: the last row's key).
    end: Option<Vec<String>>,
    complete: bool,
    /// The rows' records, being encoded.
    encoding: tokio::task::JoinHandle<Result<Encoded, PgCdcError>>,
}

/// What a chunk is read by.
struct Reading<'a> {
    job: &'a Job,
    /// The key's columns: positions and names.
    key: &'a [usize],
    key_names: &'a [String],
    table: &'a Arc<Table>,
    /// The COPY statement.
    sql: &'a str,
    shown: &'a str,
}

/// Reads a chunk in a snapshot that sees every transaction the stream
/// delivered before the chunk's low watermark (see the module's notes),
/// trying again while one is not seen yet; `None` when the stream is gone.
async fn read_settled(
    shared: &Shared,
    tx: &mpsc::UnboundedSender<Report>,
    conn: &mut PgConnection,
    r: &Reading<'_>,
) -> Result<Option<Unfinished>, PgCdcError> {
    let mut unseen_since = None;
    let mut pause = Duration::from_millis(1);
    let mut warned = false;
    loop {
        match read_chunk(shared, tx, conn, r).await? {
            Attempt::Read(read) => return Ok(Some(read)),
            Attempt::Gone => return Ok(None),
            Attempt::Unseen => {}
        }
        // Seen within microseconds, unless a synchronous standby holds it.
        let since = *unseen_since.get_or_insert_with(std::time::Instant::now);
        if !warned && since.elapsed() > Duration::from_secs(10) {
            warned = true;
            tracing::warn!(
                table = %r.shown,
                "a snapshot chunk waits for a transaction that committed but is not visible yet \
                 (is a synchronous standby not answering?)"
            );
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

enum Attempt {
    Read(Unfinished),
    /// A transaction the stream delivered before the low watermark was not
    /// visible to the chunk's snapshot: the rows were dropped.
    Unseen,
    /// The stream is gone, or started a new plan.
    Gone,
}

/// Reads one chunk after a low watermark of its own.
async fn read_chunk(
    shared: &Shared,
    tx: &mpsc::UnboundedSender<Report>,
    conn: &mut PgConnection,
    r: &Reading<'_>,
) -> Result<Attempt, PgCdcError> {
    let shown = r.shown;
    let q = |e| PgCdcError::db(format!("cannot read a chunk of `{shown}`"), e);
    // Unique in the process, as the watermarks' run tag is: a process that
    // stands by and takes over again meets its own earlier watermarks in the
    // slot, which must not match a chunk of now.
    static NEXT_CHUNK: AtomicU64 = AtomicU64::new(0);
    let id = NEXT_CHUNK.fetch_add(1, Ordering::Relaxed);
    let todo = &r.job.todo;
    let open = Report::Open { id, schema: todo.schema.clone(), table: todo.table.clone(), key: r.key_names.to_vec() };
    if tx.send(open).is_err() {
        return Ok(Attempt::Gone);
    }
    let low = emit(conn, &shared.slot, "low", id).await?;
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *conn).await.map_err(q)?;
    // The first statement: the transaction's snapshot, which the COPY reads
    // in, is taken here. The stream's transaction ids are the 32-bit ones.
    let running: Vec<i64> = sqlx::query_scalar(
        "SELECT (x::text::numeric % 4294967296)::int8 FROM pg_snapshot_xip(pg_current_snapshot()) x",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(q)?;
    let running: Vec<u32> = running.into_iter().map(|x| x as u32).collect();
    // The rows are encoded beside the connection, on every core: the reader
    // only receives them and cuts them into lines.
    let encoding = Encoding {
        table: Arc::clone(r.table),
        key: r.key.to_vec(),
        pipeline: Arc::clone(&shared.pipeline),
        db: Arc::clone(&shared.db),
        lsn: low,
        shown: shown.to_string(),
        rows: shared.settings.chunk_size,
    };
    let (to_encoder, lines_in) = mpsc::channel(4);
    let encoder = tokio::spawn(encoding.run(lines_in));
    let (mut rows, mut last) = (0, None);
    {
        let mut copy = conn.copy_out_raw(r.sql).await.map_err(q)?;
        let mut lines = copy_text::Lines::default();
        let mut pending = Vec::with_capacity(LINES_HANDED);
        while let Some(data) = copy.try_next().await.map_err(q)? {
            pending.extend(lines.push(data));
            if pending.len() >= LINES_HANDED {
                rows += pending.len();
                last = pending.last().cloned();
                // Taken until the end: the encoder's errors come with its result.
                let _ = to_encoder.send(std::mem::take(&mut pending)).await;
            }
        }
        if !pending.is_empty() {
            rows += pending.len();
            last = pending.last().cloned();
            let _ = to_encoder.send(pending).await;
        }
    }
    drop(to_encoder);
    sqlx::raw_sql("COMMIT").execute(&mut *conn).await.map_err(q)?;
    // Decided once the stream has come to the low watermark: waited for
    // with the transaction ended, so that a stream behind holds nothing open.
    match shared.missed(id, running).await {
        Some(false) => {}
        Some(true) => {
            encoder.abort();
            if tx.send(Report::Abandoned(id)).is_err() {
                return Ok(Attempt::Gone);
            }
            tracing::debug!(table = %shown, chunk = id, "a chunk's snapshot missed a change delivered before it");
            return Ok(Attempt::Unseen);
        }
        None => return Ok(Attempt::Gone),
    }
    // The last row's key: where the next chunk starts.
    let end = last.map(|line| {
        let mut values = Vec::with_capacity(r.table.columns.len());
        copy_text::fields(&line, &mut values);
        r.key
            .iter()
            .map(|&i| {
                let value = values.get(i).and_then(|v| v.as_deref());
                value.map(String::from_utf8_lossy).map(|v| v.into_owned()).unwrap_or_default()
            })
            .collect()
    });
    Ok(Attempt::Read(Unfinished {
        id,
        cursor: r.job.cursor,
        seq: r.job.seq,
        rows,
        end,
        complete: false,
        encoding: encoder,
    }))
}

/// How many lines the reader hands the encoder at a time (COPY sends a
/// message a row); each such piece is encoded as a task of its own.
const LINES_HANDED: usize = 512;

/// How many pieces of a chunk are encoded at once.
const PIECES_OUT: usize = 4;

/// What a chunk's rows are encoded with.
struct Encoding {
    table: Arc<Table>,
    /// The positions of the key's columns.
    key: Vec<usize>,
    pipeline: Arc<str>,
    db: Arc<str>,
    /// The low watermark's: the rows are the table as it was between the
    /// two watermarks.
    lsn: u64,
    shown: String,
    /// How many rows to expect.
    rows: usize,
}

struct Encoded {
    rows: Vec<Option<Record>>,
    keys: RowKeys,
}

/// A piece of a chunk, encoded: its records and their keys.
type Piece = (Vec<Record>, RowKeys);

impl Encoding {
    /// Encodes the pieces as they come, each on a task of its own, so that
    /// one reader's rows are encoded on every core (encoding takes about
    /// twice the server's time to send them); puts them back in order.
    async fn run(self, mut lines: mpsc::Receiver<Vec<Bytes>>) -> Result<Encoded, PgCdcError> {
        let now_ms = super::now_ms();
        let this = Arc::new(self);
        let capacity = this.rows.min(65_536);
        let mut out = Encoded { rows: Vec::with_capacity(capacity), keys: RowKeys::default() };
        let mut pieces = VecDeque::new();
        loop {
            // A few pieces out at a time: past them the reader's channel fills
            // and holds the COPY back, so raw lines do not pile up.
            if pieces.len() >= PIECES_OUT
                && let Some(piece) = pieces.pop_front()
            {
                this.gather(&mut out, piece).await?;
                continue;
            }
            let Some(piece) = lines.recv().await else { break };
            let encoding = Arc::clone(&this);
            pieces.push_back(tokio::spawn(async move { encoding.encode(&piece, now_ms) }));
        }
        for piece in pieces {
            this.gather(&mut out, piece).await?;
        }
        Ok(out)
    }

    /// Adds an encoded piece to the chunk.
    async fn gather(
        &self,
        out: &mut Encoded,
        piece: tokio::task::JoinHandle<Result<Piece, PgCdcError>>,
    ) -> Result<(), PgCdcError> {
        let failed = || PgCdcError::Setup(format!("encoding a chunk of `{}` failed", self.shown));
        let (records, keys) = piece.await.map_err(|_| failed())??;
        out.rows.extend(records.into_iter().map(Some));
        out.keys.append(keys);
        Ok(())
    }

    fn encode(&self, lines: &[Bytes], now_ms: i64) -> Result<Piece, PgCdcError> {
        let origin = Origin {
            pipeline: &self.pipeline,
            db: &self.db,
            commit_ms: now_ms,
            now_ms,
            tx_id: None,
            snapshot: "incremental",
        };
        let (mut records, mut keys) = (Vec::with_capacity(lines.len()), RowKeys::default());
        let mut encoder = Encoder::default();
        let columns = &self.table.columns;
        let mut values = Vec::with_capacity(columns.len());
        for line in lines {
            values.clear();
            copy_text::fields(line, &mut values);
            if values.len() != columns.len() {
                return Err(PgCdcError::Setup(format!(
                    "a chunk of `{}` has {} columns where {} were expected (was the table altered?)",
                    self.shown,
                    values.len(),
                    columns.len()
                )));
            }
            keys.push(self.key.iter().map(|&i| values[i].as_deref()));
            records.push(encoder.read_row(&origin, &self.table, self.lsn, &values));
        }
        Ok((records, keys))
    }
}

/// Writes a watermark; its position in the WAL.
async fn emit(conn: &mut PgConnection, slot: &str, kind: &str, id: u64) -> Result<u64, PgCdcError> {
    // Transactional: its commit flushes the WAL, so the walsender sends it at
    // once (a non-transactional one waits for the WAL writer, 200 ms a
    // chunk), and it arrives at its commit's place among the other commits,
    // which is the order the stream's changes have.
    let lsn: i64 = sqlx::query_scalar("SELECT (pg_logical_emit_message(true, $1, $2) - '0/0')::int8")
        .bind(PREFIX)
        .bind(watermark(slot, kind, id))
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| PgCdcError::db("cannot write a snapshot watermark into the WAL", e))?;
    Ok(lsn as u64)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::event::Op;

    fn delivered(xids: &[u32]) -> Delivered {
        let mut d = Delivered::default();
        for &x in xids {
            d.push(x);
        }
        d
    }

    #[test]
    fn a_running_transaction_delivered_before_the_low_watermark_is_a_miss() {
        let mut d = delivered(&[10, 11, 12]);
        // Either half may come first; the second gives the answer.
        assert_eq!(d.check(1, Check::Running(vec![12, 20])), None);
        assert_eq!(d.check(1, Check::Low(3)), Some(true));
        // Delivered after the low watermark: inside the window, not a miss.
        assert_eq!(d.check(2, Check::Low(2)), None);
        assert_eq!(d.check(2, Check::Running(vec![12])), Some(false));
        assert_eq!(d.check(3, Check::Low(3)), None);
        assert_eq!(d.check(3, Check::Running(vec![])), Some(false));
    }

    #[test]
    fn a_rows_key_is_found_once_and_pieces_keep_their_places() {
        let (mut a, mut b) = (RowKeys::default(), RowKeys::default());
        a.push([Some(&b"1"[..]), None].into_iter());
        a.push([Some(&b"2"[..]), Some(&b"x"[..])].into_iter());
        b.push([Some(&b"3"[..]), None].into_iter());
        a.append(b);
        let key = |k: &[u8], v: Option<&[u8]>| key_bytes([Some(k), v].into_iter());
        assert_eq!(a.take(&key(b"3", None)), Some(2));
        assert_eq!(a.take(&key(b"2", Some(b"x"))), Some(1));
        assert_eq!(a.take(&key(b"2", Some(b"x"))), None);
        assert_eq!(a.take(&key(b"2", None)), None);
        assert_eq!(a.take(&key(b"1", None)), Some(0));
    }

    /// A window over `public.orders` (key `id`), through its low watermark.
    fn opened(inc: &mut Incremental, id: u64) {
        let key = vec!["id".to_string()];
        inc.tx.send(Report::Open { id, schema: "public".into(), table: "orders".into(), key }).unwrap();
        inc.watermark(watermark("", "low", id).as_bytes(), &mut Batch::with_capacity(0, 0));
    }

    /// Two long text columns, TOASTed.
    fn orders(full_identity: bool) -> Table {
        let columns = [
            ("id".into(), 23, -1, true),
            ("n".into(), 23, -1, false),
            ("doc".into(), 25, -1, false),
            ("doc2".into(), 25, -1, false),
        ];
        Table::new("public".into(), "orders".into(), full_identity, columns)
    }

    fn row(cols: &[(&str, &str)]) -> RowData {
        RowData::from_pairs(cols.iter().map(|(n, v)| (*n, ColumnValue::text(v))).collect())
    }

    /// The chunk of rows `ids` as read (`n` = 1, the long values "long").
    fn chunk(id: u64, ids: &[&str]) -> Chunk {
        let mut keys = RowKeys::default();
        let rows = ids
            .iter()
            .map(|i| {
                keys.push([Some(i.as_bytes())].into_iter());
                let read = row(&[("id", i), ("n", "1"), ("doc", "long"), ("doc2", "long")]);
                Some(record(Op::Read, None, Some(&read)))
            })
            .collect();
        Chunk { id, cursor: u64::MAX, rows, keys, end: None, complete: true }
    }

    fn record(op: Op, before: Option<&RowData>, after: Option<&RowData>) -> Record {
        let origin = crate::event::Origin {
            pipeline: "p",
            db: "d",
            commit_ms: 0,
            now_ms: 0,
            tx_id: None,
            snapshot: if op == Op::Read { "incremental" } else { "false" },
        };
        crate::event::Encoder::default().change(&origin, &orders(false), op, 1, before, after)
    }

    /// A streamed change, as the stream hands it to the snapshot.
    fn change(inc: &mut Incremental, table: &Table, op: Op, before: Option<&RowData>, after: Option<&RowData>) {
        let r = record(op, before, after);
        inc.touched(table, before, after, std::slice::from_ref(&r));
    }

    fn high(inc: &mut Incremental, id: u64) -> Vec<Value> {
        let mut batch = Batch::with_capacity(0, 0);
        inc.watermark(watermark("", "high", id).as_bytes(), &mut batch);
        batch.records.iter().map(|r| serde_json::from_slice(&r.value).unwrap()).collect()
    }

    fn summary(events: &[Value]) -> Vec<String> {
        let short = |v: &Value| v.as_str().unwrap().replace("__debezium_unavailable_value", "?");
        let line = |e: &Value| {
            let a = &e["after"];
            format!("{} {} n={} {} {}", e["op"].as_str().unwrap(), a["id"], a["n"], short(&a["doc"]), short(&a["doc2"]))
        };
        events.iter().map(line).collect()
    }

    #[test]
    fn a_row_given_way_to_a_change_without_its_toast_value_goes_out_again_before_the_changes() {
        let (t, full) = (orders(false), orders(true));
        let update = |id: &str, n: &str| row(&[("id", id), ("n", n)]);
        for rows_first in [false, true] {
            let mut inc = Incremental::default();
            opened(&mut inc, 1);
            if rows_first {
                inc.tx.send(Report::Chunk(chunk(1, &["1", "2", "3"]))).unwrap();
            }
            change(&mut inc, &t, Op::Update, None, Some(&update("1", "2")));
            change(&mut inc, &t, Op::Update, None, Some(&row(&[("id", "2"), ("n", "2"), ("doc", "a"), ("doc2", "b")])));
            change(&mut inc, &t, Op::Update, None, Some(&update("1", "3")));
            // A key outside the chunk is never replayed.
            change(&mut inc, &t, Op::Update, None, Some(&update("9", "3")));
            if !rows_first {
                inc.tx.send(Report::Chunk(chunk(1, &["1", "2", "3"]))).unwrap();
            }
            // Row 2 gave way to a whole change, as before; row 1 goes out whole,
            // then the last of its two changes, which carries every value the
            // first one does.
            assert_eq!(
                summary(&high(&mut inc, 1)),
                ["r 3 n=1 long long", "r 1 n=1 long long", "u 1 n=3 ? ?"],
                "rows first: {rows_first}"
            );
        }

        // Two changes that each carry a long value the other leaves out both
        // go again: applied in order, the row ends with both new values.
        let mut inc = Incremental::default();
        opened(&mut inc, 2);
        inc.tx.send(Report::Chunk(chunk(2, &["1"]))).unwrap();
        change(&mut inc, &t, Op::Update, None, Some(&row(&[("id", "1"), ("n", "2"), ("doc", "new")])));
        change(&mut inc, &t, Op::Update, None, Some(&row(&[("id", "1"), ("n", "3"), ("doc2", "new2")])));
        let events = high(&mut inc, 2);
        assert_eq!(summary(&events), ["r 1 n=1 long long", "u 1 n=2 new ?", "u 1 n=3 ? new2"]);
        let mut image = serde_json::Map::new();
        for e in &events {
            let values = e["after"].as_object().unwrap().iter().filter(|(_, v)| *v != "__debezium_unavailable_value");
            image.extend(values.map(|(k, v)| (k.clone(), v.clone())));
        }
        assert_eq!(Value::Object(image), serde_json::json!({"id": 1, "n": 3, "doc": "new", "doc2": "new2"}));

        // Nothing to replay after a change that carries every value, a delete,
        // or a key move (the row would come back under its old key).
        let whole = row(&[("id", "1"), ("n", "4"), ("doc", "c"), ("doc2", "d")]);
        let moved = update("1000", "4");
        let key_1 = row(&[("id", "1")]);
        let settle: [(Op, Option<&RowData>, Option<&RowData>); 3] = [
            (Op::Update, None, Some(&whole)),
            (Op::Delete, Some(&key_1), None),
            (Op::Update, Some(&key_1), Some(&moved)),
        ];
        for (op, before, after) in settle {
            for rows_first in [false, true] {
                let mut inc = Incremental::default();
                opened(&mut inc, 3);
                if rows_first {
                    inc.tx.send(Report::Chunk(chunk(3, &["1"]))).unwrap();
                }
                change(&mut inc, &t, Op::Update, None, Some(&update("1", "2")));
                change(&mut inc, &t, op, before, after);
                change(&mut inc, &t, Op::Update, None, Some(&update("1", "5")));
                if !rows_first {
                    inc.tx.send(Report::Chunk(chunk(3, &["1"]))).unwrap();
                }
                assert!(high(&mut inc, 3).is_empty(), "{op:?}, rows first: {rows_first}");
            }
        }

        // A truncate in the window: nothing read comes back.
        let mut inc = Incremental::default();
        opened(&mut inc, 4);
        change(&mut inc, &t, Op::Update, None, Some(&update("1", "2")));
        inc.truncated("public.orders");
        inc.tx.send(Report::Chunk(chunk(4, &["1", "2"]))).unwrap();
        change(&mut inc, &t, Op::Update, None, Some(&update("2", "2")));
        assert!(high(&mut inc, 4).is_empty());

        // Under FULL identity the change carries every value: the row just gives way.
        let mut inc = Incremental::default();
        opened(&mut inc, 5);
        inc.tx.send(Report::Chunk(chunk(5, &["1", "2"]))).unwrap();
        let old = row(&[("id", "1"), ("n", "1"), ("doc", "long"), ("doc2", "long")]);
        change(&mut inc, &full, Op::Update, Some(&old), Some(&update("1", "2")));
        assert_eq!(summary(&high(&mut inc, 5)), ["r 2 n=1 long long"]);
    }

    #[test]
    fn what_is_no_longer_kept_counts_as_a_miss() {
        let d = delivered(&(100..=100 + DELIVERED_KEPT as u32).collect::<Vec<_>>());
        assert!(!d.at.contains_key(&100), "the oldest is forgotten");
        // A low watermark before what is kept cannot be told.
        assert!(d.missed(&[7], 0));
        // One inside: only what came before it counts.
        assert!(d.missed(&[104], 5));
        assert!(!d.missed(&[105], 5));
    }
}
