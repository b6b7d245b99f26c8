//! Operations as multi-row statements: a truncate, then deletes, then upserts
//! and inserts grouped by the columns they fill, each in as few statements as
//! the parameter limit allows; into Postgres, groups of some size by `COPY`.

use serde_json::{Map, Value};

use super::cell::Cell;
use super::conn::Conn;
use super::copy::{COPY_MIN_ROWS, Rows, StraightIn};
use super::{SqlSink, TableInfo};
use crate::change::Op;
use crate::config::Mode;
use crate::dialect::Dialect;

/// How a group of rows is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    Insert,
    /// `new`: the keys are most likely not in the table yet, so the rows may
    /// first try going straight in (see `copy::Guess`).
    Upsert {
        new: bool,
    },
}

/// Rows per statement; beyond a few hundred nothing is gained (2,000 and
/// 8,000 measured the same into MariaDB and SQLite).
const MAX_ROWS_PER_STATEMENT: usize = 500;

impl SqlSink {
    /// Truncate, then deletes, then upserts and inserts, each as multi-row statements.
    pub(super) async fn apply_grouped(
        &mut self,
        info: &TableInfo,
        truncate: Option<usize>,
        ops: &[(usize, Op)],
        key: &[String],
    ) -> Result<(), sqlx::Error> {
        let d = self.dialect;
        if truncate.is_some() {
            let conn = self.conn.as_mut().expect("connected");
            conn.raw(&format!("DELETE FROM {}", info.quoted)).await?;
        }
        let deletes: Vec<&Map<String, Value>> =
            ops.iter().filter_map(|(_, op)| if let Op::Delete(r) = op { Some(r) } else { None }).collect();
        let stage = self.stages.get(&info.quoted).and_then(|s| s.name.clone());
        let copies = |rows: usize| d == Dialect::Postgres && rows >= COPY_MIN_ROWS && info.copies();
        if copies(deletes.len())
            && let Some(stage) = &stage
        {
            self.delete_copied(info, stage, key, Rows::Parsed(&deletes)).await?;
        } else if !deletes.is_empty() {
            let mut cells = Vec::with_capacity(deletes.len() * key.len());
            for row in &deletes {
                cells.extend(key.iter().map(|k| d.cell(row.get(k), info.ty(k).unwrap_or("text"))));
            }
            let cols: Vec<String> = key.iter().map(|k| d.quote(k)).collect();
            let target = if key.len() == 1 { cols[0].clone() } else { format!("({})", cols.join(", ")) };
            let sql = |n: usize| {
                format!("DELETE FROM {} WHERE {target} IN ({})", info.quoted, value_list(d, info, key, n, true))
            };
            let conn = self.conn.as_mut().expect("connected");
            run(conn, d, sql, cells, key.len()).await?;
        }
        // Rows with the same columns go together: (how they are written, which
        // of the table's columns the rows have, rows). Rows nearly always share
        // one shape, so a row is first compared with the last group without
        // allocating.
        type Group<'a> = (Write, Vec<bool>, Vec<&'a Map<String, Value>>);
        let mut groups: Vec<Group<'_>> = Vec::new();
        let fits = |row: &Map<String, Value>, mask: &[bool]| {
            info.columns.iter().zip(mask).all(|((c, _), &has)| row.contains_key(c) == has)
        };
        // Upserts in upsert mode may well be new rows (a first load); change
        // events' updates are of rows already there, their creates of rows not.
        let upserts_new = self.config.mode == Mode::Upsert;
        for (_, op) in ops {
            let (upsert, row) = match op {
                Op::Upsert(r) => (Write::Upsert { new: upserts_new }, r),
                Op::Create(r) => (Write::Upsert { new: true }, r),
                Op::Insert(r) => (Write::Insert, r),
                _ => continue,
            };
            if let Some((u, mask, rows)) = groups.last_mut()
                && *u == upsert
                && fits(row, mask)
            {
                rows.push(row);
                continue;
            }
            match groups.iter_mut().find(|(u, mask, _)| *u == upsert && fits(row, mask)) {
                Some((_, _, rows)) => rows.push(row),
                None => {
                    let mask = info.columns.iter().map(|(c, _)| row.contains_key(c)).collect();
                    groups.push((upsert, mask, vec![row]));
                }
            }
        }
        for (upsert, mask, rows) in groups {
            let (columns, types): (Vec<String>, Vec<&str>) = info
                .columns
                .iter()
                .zip(&mask)
                .filter(|(_, has)| **has)
                .map(|((c, t), _)| (c.clone(), t.as_str()))
                .unzip();
            if columns.is_empty() {
                continue;
            }
            let names: Vec<String> = columns.iter().map(|c| d.quote(c)).collect();
            let suffix = match upsert {
                Write::Upsert { .. } => d.upsert(key, &columns),
                Write::Insert => String::new(),
            };
            if copies(rows.len()) {
                match (upsert, &stage) {
                    (Write::Insert, _) if info.copy_in => {
                        self.copy_rows(&info.quoted, info, &columns, Rows::Parsed(&rows)).await?;
                        continue;
                    }
                    (Write::Upsert { new }, Some(stage)) => {
                        self.upsert_copied(info, stage, &columns, key, Rows::Parsed(&rows), StraightIn::when(new))
                            .await?;
                        continue;
                    }
                    _ => {}
                }
            }
            let mut cells = Vec::with_capacity(rows.len() * columns.len());
            for row in &rows {
                cells.extend(columns.iter().zip(&types).map(|(c, ty)| d.cell(row.get(c), ty)));
            }
            let sql = |n: usize| {
                let values = value_list(d, info, &columns, n, false);
                format!("INSERT INTO {} ({}) VALUES {values}{suffix}", info.quoted, names.join(", "))
            };
            let conn = self.conn.as_mut().expect("connected");
            run(conn, d, sql, cells, columns.len()).await?;
        }
        Ok(())
    }
}

/// Executes one statement shape over `cells` (`per_row` a row) in as few
/// statements as the parameter limit allows; `Err` carries the database's message.
async fn run(
    conn: &mut Conn,
    dialect: Dialect,
    sql_for: impl Fn(usize) -> String,
    cells: Vec<Cell<'_>>,
    per_row: usize,
) -> Result<(), sqlx::Error> {
    if per_row == 0 {
        return Ok(());
    }
    let rows = cells.len() / per_row;
    let chunk = (dialect.max_params() / per_row).clamp(1, MAX_ROWS_PER_STATEMENT);
    let mut cells = cells.into_iter();
    let mut done = 0;
    while done < rows {
        let n = chunk.min(rows - done);
        conn.execute(&sql_for(n), cells.by_ref().take(n * per_row)).await?;
        done += n;
    }
    Ok(())
}

/// `(p1, p2), (p3, p4)`: `rows` rows of parameters for `columns`, each cast
/// (where the dialect needs it) to its column's type. `bare` leaves out the
/// parentheses around a single column, for `k IN (p1, p2)`.
fn value_list(dialect: Dialect, info: &TableInfo, columns: &[String], rows: usize, bare: bool) -> String {
    let mut n = 0;
    let mut out = Vec::with_capacity(rows);
    for _ in 0..rows {
        let vals: Vec<String> = columns
            .iter()
            .map(|c| {
                n += 1;
                dialect.param(n, info.ty(c).unwrap_or("text"))
            })
            .collect();
        out.push(if bare && columns.len() == 1 { vals.join(", ") } else { format!("({})", vals.join(", ")) });
    }
    out.join(", ")
}
