//! Postgres's bulk path: rows streamed with `COPY ... FROM STDIN` in text
//! format. Inserts go straight into the table; upserts and deletes go through
//! a temporary staging table and are applied from it with one `INSERT ...
//! ON CONFLICT` or `DELETE ... USING`, as PeerDB does, since `COPY` itself
//! can neither update nor delete.
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
        self.stages.insert(quoted, Stage { name, columns });
        Ok(())
    }

    /// Streams `rows` into `target`'s `columns` with one `COPY`, in chunks
    /// sent as they fill, so Postgres parses one while the next is encoded.
    pub(super) async fn copy_rows(
        &mut self,
        target: &str,
        info: &TableInfo,
        columns: &[String],
        rows: &[&Map<String, Value>],
    ) -> Result<(), sqlx::Error> {
        let names: Vec<String> = columns.iter().map(|c| Dialect::Postgres.quote(c)).collect();
        let statement = format!("COPY {target} ({}) FROM STDIN", names.join(", "));
        let types: Vec<&str> = columns.iter().map(|c| info.ty(c).unwrap_or("text")).collect();
        let conn = self.conn.as_mut().and_then(|c| c.postgres()).expect("COPY is taken into Postgres only");
        let mut copy = conn.copy_in_raw(&statement).await?;
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
        let copied = copy.finish().await?;
        self.metrics.copied.increment(copied);
        Ok(())
    }
}

impl SqlSink {
    /// Sends `data`, rows already in `COPY`'s text format, with `statement`.
    pub(super) async fn copy_text(&mut self, statement: &str, data: &[u8]) -> Result<(), sqlx::Error> {
        let conn = self.conn.as_mut().and_then(|c| c.postgres()).expect("COPY is taken into Postgres only");
        let mut copy = conn.copy_in_raw(statement).await?;
        for chunk in data.chunks(COPY_CHUNK) {
            copy.send(chunk).await?;
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
