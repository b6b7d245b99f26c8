//! Postgres's bulk path: rows streamed with `COPY ... FROM STDIN` in text
//! format. Inserts go straight into the table; upserts and deletes go through
//! a temporary staging table and are applied from it with one `INSERT ...
//! ON CONFLICT` or `DELETE ... USING`, as PeerDB does, since `COPY` itself
//! can neither update nor delete. Upserts whose keys are all new are
//! inserts, and try going straight in first (see [`Guess`]).
//!
//! Each value is the text Postgres's input function for the column reads, the
//! same text the statement path casts to the column's type, so both paths
//! take and refuse the same values. A refused row fails the whole `COPY`; the
//! caller then rolls back and applies the batch row by row with statements,
//! which name the row.

use serde_json::{Map, Value};

use super::cell::Cell;
use super::{SqlSink, TableInfo};
use crate::dialect::Dialect;
use crate::error::SqlError;

/// Groups smaller than this take the statement path: `COPY` through a staging
/// table costs three round trips whatever the size.
pub(super) const COPY_MIN_ROWS: usize = 16;

/// `COPY` data goes out in chunks of about this many bytes.
const COPY_CHUNK: usize = 128 * 1024;

/// A table's staging table: a column per target column, typed alike, with no
/// constraints (a row may fill only some columns). Emptied with `TRUNCATE`
/// after each use: temporary tables are never vacuumed, so deleted rows would
/// pile up; `ON COMMIT DELETE ROWS` would empty every staging table of the
/// session at each commit. `name` is `None` when Postgres refused to create
/// it (no `TEMP` privilege): that table takes the statement path.
pub(super) struct Stage {
    pub(super) name: Option<String>,
    columns: Vec<(String, String)>,
    /// Set when upserts may first go straight into the table: `COPY` into
    /// it does what `INSERT` does.
    guess: Option<Guess>,
}

/// Upserts into a table first try going straight in with `COPY`, as inserts
/// do. With none of their keys in the table yet (a first load, a backfill),
/// that is all the upsert does, without the staging table and `ON
/// CONFLICT`'s probe of the key's index per row. A key already there fails
/// the `COPY` on that index; the rows then go through the staging table, and
/// the next upserts into the table (one per batch, or per group of rows
/// filling the same columns) skip the try: 2, 4, ... up to 64 after misses
/// in a row. Of change events, only creates and snapshot rows try: an
/// update's row is already there, and its misses would keep the creates
/// beside it from trying.
#[derive(Default)]
struct Guess {
    skip: u32,
    misses: u32,
}

impl Guess {
    fn tries(&mut self) -> bool {
        if self.skip == 0 {
            return true;
        }
        self.skip -= 1;
        false
    }

    fn learn(&mut self, hit: bool) {
        self.misses = if hit { 0 } else { (self.misses + 1).min(6) };
        self.skip = if hit { 0 } else { 1 << self.misses };
    }
}

/// Whether an upsert tries going straight into the table first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum StraightIn {
    /// No: its keys are likely there already (updates), or the table's
    /// [`Guess`] says not this time, or it has none.
    No,
    /// When the table's [`Guess`] says to, the key's index looked up first.
    Maybe,
    /// The guess was taken and the key's index looked up in the batch's
    /// first round trip, with savepoint `flowgate_new` set after it: whether
    /// the table has an index `ON CONFLICT` takes.
    Looked(bool),
}

impl StraightIn {
    /// `Maybe` for rows whose keys are likely `new`, else `No`.
    pub(super) fn when(new: bool) -> StraightIn {
        if new { StraightIn::Maybe } else { StraightIn::No }
    }
}

/// The key's column names as [`Dialect::arbiter_sql`] compares them: sorted
/// bytewise, each once, joined by U+001F.
pub(super) fn arbiter_key(key: &[String]) -> String {
    let mut sorted: Vec<&str> = key.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    sorted.join("\u{1f}")
}

/// The rows of a `COPY`: parsed, or already its text or binary data (see
/// [`super::direct`]).
#[derive(Clone, Copy)]
pub(super) enum Rows<'a> {
    Parsed(&'a [&'a Map<String, Value>]),
    Text(&'a [u8]),
    Binary(&'a [u8]),
}

impl<'a> Rows<'a> {
    /// `COPY` data made ahead, in binary format or as text.
    pub(super) fn made(data: &'a [u8], binary: bool) -> Rows<'a> {
        if binary { Rows::Binary(data) } else { Rows::Text(data) }
    }
}

impl TableInfo {
    /// Whether `COPY`'s text format reads every column as the statement
    /// path's cast does (into the table or its staging table). `bytea`
    /// arrives as base64, which the statements decode in SQL and `COPY` would
    /// take as bytes in escape format.
    pub(super) fn copies(&self) -> bool {
        !self.columns.iter().any(|(_, ty)| ty.starts_with("bytea"))
    }
}

impl SqlSink {
    /// Creates (or, when the table's columns changed, recreates) `table`'s
    /// staging table. Runs before the batch's transaction begins, so a
    /// rollback never takes a staging table this sink believes it has.
    pub(super) async fn stage(&mut self, table: &str) -> Result<(), SqlError> {
        let Some(info) = self.tables.get(table) else { return Ok(()) };
        if self.stages.get(&info.quoted).is_some_and(|s| s.columns == info.columns) {
            return Ok(());
        }
        // Going straight in takes the table's lock.
        let tries = info.copy_in && info.lockable;
        // Numbered, never reused: a recreated one may not take another's name.
        self.stage_seq += 1;
        let name = format!("pg_temp.flowgate_stage_{}", self.stage_seq);
        let columns = info.columns.clone();
        // Typed from the catalog, so that making it needs no privilege on
        // the table.
        let defs: Vec<String> = columns.iter().map(|(c, ty)| format!("{} {ty}", Dialect::Postgres.quote(c))).collect();
        let old = self.stages.get(&info.quoted).and_then(|s| s.name.clone());
        let drop = old.map(|old| format!("DROP TABLE IF EXISTS {old}; ")).unwrap_or_default();
        let sql = format!("{drop}CREATE TEMPORARY TABLE {name} ({})", defs.join(", "));
        let quoted = info.quoted.clone();
        let name = match self.raw(&sql, table).await {
            Ok(()) => Some(name),
            Err(e) if e.is_retryable() => return Err(e),
            Err(e) => {
                tracing::warn!(table, error = %e, "no staging table; upserts and deletes into it go by statements");
                None
            }
        };
        self.stages.insert(quoted, Stage { name, columns, guess: tries.then(Guess::default) });
        Ok(())
    }

    /// Whether upserts into the table ever try going straight in.
    pub(super) fn may_go_straight_in(&self, info: &TableInfo) -> bool {
        self.stages.get(&info.quoted).is_some_and(|s| s.guess.is_some())
    }

    /// Whether the next upsert into the table tries going straight in, as
    /// its [`Guess`] says: each call is one upsert's turn.
    pub(super) fn tries_straight_in(&mut self, info: &TableInfo) -> bool {
        self.stages.get_mut(&info.quoted).and_then(|s| s.guess.as_mut()).is_some_and(Guess::tries)
    }

    /// Upserts `rows` with one `COPY` straight into the table, as `try_in`
    /// says, when the key has a unique index `ON CONFLICT` takes. `false`
    /// when it did not, or a key was already in the table (what it wrote is
    /// rolled back).
    async fn straight_in(
        &mut self,
        info: &TableInfo,
        columns: &[String],
        key: &[String],
        rows: Rows<'_>,
        try_in: StraightIn,
    ) -> Result<bool, sqlx::Error> {
        let arbiter = match try_in {
            StraightIn::No => return Ok(false),
            StraightIn::Looked(arbiter) => arbiter,
            StraightIn::Maybe if !self.tries_straight_in(info) => return Ok(false),
            StraightIn::Maybe => {
                // The index is looked up at each try, under the lock `COPY`
                // takes anyway, so that none is dropped or made deferrable
                // between the look and the `COPY`: without it, `ON CONFLICT`
                // refuses the upsert, and rows taken straight in would be
                // duplicates.
                let conn = self.conn.as_mut().expect("connected");
                conn.raw(&format!("SAVEPOINT flowgate_new; LOCK TABLE {} IN ROW EXCLUSIVE MODE", info.quoted)).await?;
                let sql = format!("SELECT {}", Dialect::Postgres.arbiter_sql("$1", "$2"));
                let arbiter = match conn.texts(&sql, &[&info.quoted, &arbiter_key(key)]).await {
                    Ok(rows) => rows.first().and_then(|r| r.first()).is_some_and(|t| t == "true"),
                    // A catalog this query does not fit: no more tries on this
                    // connection.
                    Err(sqlx::Error::Database(e)) => {
                        tracing::debug!(table = %info.quoted, error = %e, "cannot look up the key's index; upserts take the staging table");
                        if let Some(stage) = self.stages.get_mut(&info.quoted) {
                            stage.guess = None;
                        }
                        false
                    }
                    Err(e) => return Err(e),
                };
                if !arbiter {
                    self.conn.as_mut().expect("connected").raw("ROLLBACK TO SAVEPOINT flowgate_new").await?;
                }
                arbiter
            }
        };
        if !arbiter {
            return Ok(false);
        }
        let hit = match self.copy_rows(&info.quoted, info, columns, rows).await {
            Ok(()) => true,
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                self.conn.as_mut().expect("connected").raw("ROLLBACK TO SAVEPOINT flowgate_new").await?;
                false
            }
            Err(e) => return Err(e),
        };
        if let Some(guess) = self.stages.get_mut(&info.quoted).and_then(|s| s.guess.as_mut()) {
            guess.learn(hit);
        }
        Ok(hit)
    }

    /// Upserts `rows` through the table's staging table `stage`: `COPY`
    /// into it, then one `INSERT ... ON CONFLICT` from it. Or straight in
    /// first, as `try_in` says, when no key is there yet.
    pub(super) async fn upsert_copied(
        &mut self,
        info: &TableInfo,
        stage: &str,
        columns: &[String],
        key: &[String],
        rows: Rows<'_>,
        try_in: StraightIn,
    ) -> Result<(), sqlx::Error> {
        if self.straight_in(info, columns, key, rows, try_in).await? {
            return Ok(());
        }
        self.copy_rows(stage, info, columns, rows).await?;
        // `ON CONFLICT` probes the key's index per row; a `MERGE` measured
        // 1.4x slower here, its join planned over the whole table for a
        // staging table without statistics.
        let d = Dialect::Postgres;
        let names: Vec<String> = columns.iter().map(|c| d.quote(c)).collect();
        let names = names.join(", ");
        let suffix = d.upsert(key, columns);
        let sql =
            format!("INSERT INTO {} ({names}) SELECT {names} FROM {stage}{suffix}; TRUNCATE {stage}", info.quoted);
        self.conn.as_mut().expect("connected").raw(&sql).await
    }

    /// Deletes the rows with the keys in `rows` (the `key` columns) through
    /// the table's staging table `stage`: `COPY` into it, then one `DELETE
    /// ... USING` it.
    pub(super) async fn delete_copied(
        &mut self,
        info: &TableInfo,
        stage: &str,
        key: &[String],
        rows: Rows<'_>,
    ) -> Result<(), sqlx::Error> {
        self.copy_rows(stage, info, key, rows).await?;
        let d = Dialect::Postgres;
        let on: Vec<String> = key.iter().map(|k| format!("t.{0} = s.{0}", d.quote(k))).collect();
        let sql =
            format!("DELETE FROM {} AS t USING {stage} AS s WHERE {}; TRUNCATE {stage}", info.quoted, on.join(" AND "));
        self.conn.as_mut().expect("connected").raw(&sql).await
    }

    /// `rows` into `target`'s `columns` with one `COPY`. Parsed rows are sent
    /// in chunks as they are encoded, so Postgres parses one while the next
    /// is encoded.
    pub(super) async fn copy_rows(
        &mut self,
        target: &str,
        info: &TableInfo,
        columns: &[String],
        rows: Rows<'_>,
    ) -> Result<(), sqlx::Error> {
        let names: Vec<String> = columns.iter().map(|c| Dialect::Postgres.quote(c)).collect();
        let format = if matches!(rows, Rows::Binary(_)) { " (FORMAT binary)" } else { "" };
        let statement = format!("COPY {target} ({}) FROM STDIN{format}", names.join(", "));
        let conn = self.conn.as_mut().and_then(|c| c.postgres()).expect("COPY is taken into Postgres only");
        let mut copy = conn.copy_in_raw(&statement).await?;
        match rows {
            Rows::Text(data) | Rows::Binary(data) => {
                for chunk in data.chunks(COPY_CHUNK) {
                    copy.send(chunk).await?;
                }
            }
            Rows::Parsed(rows) => {
                let types: Vec<&str> = columns.iter().map(|c| info.ty(c).unwrap_or("text")).collect();
                let mut data = Vec::with_capacity(COPY_CHUNK + COPY_CHUNK / 4);
                for row in rows {
                    for (n, (c, ty)) in columns.iter().zip(&types).enumerate() {
                        if n > 0 {
                            data.push(b'\t');
                        }
                        copy_cell(&mut data, Dialect::Postgres.typed_cell(row.get(c), ty));
                    }
                    data.push(b'\n');
                    if data.len() >= COPY_CHUNK {
                        copy.send(&data[..]).await?;
                        data.clear();
                    }
                }
                copy.send(data).await?;
            }
        }
        let copied = copy.finish().await?;
        self.metrics.copied.increment(copied);
        Ok(())
    }
}

/// One value in `COPY`'s text format: `\N` for NULL; a backslash, tab, newline
/// or carriage return escaped. Numbers and booleans as [`Dialect::cell`]
/// writes them for the statements.
pub(super) fn copy_cell(out: &mut Vec<u8>, cell: Cell<'_>) {
    use std::io::Write as _;
    let text = match cell {
        Cell::Null => return out.extend_from_slice(b"\\N"),
        Cell::Text(s) => s,
        // Writing into a Vec cannot fail.
        Cell::Bool(b) => return drop(write!(out, "{b}")),
        Cell::Int(i) => return drop(write!(out, "{i}")),
        Cell::Real(f) => return drop(write!(out, "{f}")),
    };
    if !text.bytes().any(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r')) {
        return out.extend_from_slice(text.as_bytes());
    }
    for b in text.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missed_guess_skips_the_tries_after_it_twice_as_long_each_time() {
        let mut guess = Guess::default();
        let mut tries = Vec::new();
        // Hits, then a miss at every try until batch 140, then hits: 64
        // batches at most go without one.
        for batch in 0..202 {
            let tried = guess.tries();
            if tried {
                guess.learn(!(2..140).contains(&batch));
                tries.push(batch);
            }
        }
        assert_eq!(tries, [0, 1, 2, 5, 10, 19, 36, 69, 134, 199, 200, 201]);
    }

    #[test]
    fn values_escaped_for_copy_text() {
        let mut out = Vec::new();
        copy_cell(&mut out, Cell::Text("a\tb\\c\nd\re".into()));
        out.push(b'|');
        copy_cell(&mut out, Cell::Null);
        out.push(b'|');
        copy_cell(&mut out, Cell::Text("\\N".into()));
        out.push(b'|');
        copy_cell(&mut out, Cell::Text("plain é".into()));
        out.push(b'|');
        copy_cell(&mut out, Cell::Real(0.1 + 0.2));
        out.push(b'|');
        copy_cell(&mut out, Cell::Int(-7));
        out.push(b'|');
        copy_cell(&mut out, Cell::Bool(true));
        assert_eq!(String::from_utf8(out).unwrap(), "a\\tb\\\\c\\nd\\re|\\N|\\\\N|plain é|0.30000000000000004|-7|true");
    }
}
