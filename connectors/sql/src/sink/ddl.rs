//! Target tables: described from the database's catalog, created from the
//! first record when `create_table` is on, and records checked against their
//! columns.

use flowgate_sdk::ConnectorError;
use serde_json::{Map, Value};

use super::{SqlSink, TableInfo, TableOps};
use crate::dialect::Dialect;
use crate::error::SqlError;
use crate::names::unknown_fields;

impl SqlSink {
    /// Runs a `CREATE TABLE IF NOT EXISTS`. In Postgres that can still fail when
    /// another session creates the same table at the same moment (23505 on the
    /// catalog's type names, or 42P07); the table is then there, as wanted.
    pub(super) async fn create(&mut self, sql: &str, table: &str) -> Result<(), SqlError> {
        match self.raw(sql, table).await {
            Err(SqlError::Write { source: sqlx::Error::Database(d), .. })
                if self.dialect == Dialect::Postgres && matches!(d.code().as_deref(), Some("23505" | "42P07")) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// The table's columns, or `None` when it does not exist.
    pub(super) async fn describe(&mut self, table: &str) -> Result<Option<TableInfo>, SqlError> {
        let dialect = self.dialect;
        let conn = self.conn().await?;
        // Postgres resolves `schema.table` itself; MySQL and SQLite look the name
        // up as given, in the connection's database.
        let name = if dialect == Dialect::Postgres { dialect.quote_table(table) } else { table.to_string() };
        let rows = conn.texts(dialect.columns_query(), &[&name]).await.map_err(SqlError::write(table))?;
        let columns: Vec<(String, String)> =
            rows.into_iter().map(|mut r| (r.swap_remove(0), r.swap_remove(0))).collect();
        if columns.is_empty() {
            return Ok(None);
        }
        let links = conn.texts(dialect.linked_query(), &[&name, &name]).await.map_err(SqlError::write(table))?;
        let linked = links.first().and_then(|r| r.first()).is_none_or(|n| n != "0");
        let (copy_in, lockable) = match dialect {
            Dialect::Postgres => {
                let like = conn.texts(dialect.copies_like_insert_query(), &[&name]).await;
                let like = like.map_err(SqlError::write(table))?;
                let said = |i: usize| like.first().and_then(|r| r.get(i)).is_some_and(|t| t == "true");
                (said(0), said(1))
            }
            _ => (false, false),
        };
        Ok(Some(TableInfo { quoted: dialect.quote_table(table), columns, linked, copy_in, lockable }))
    }

    /// The table's description, creating the table from `sample` when it is
    /// missing and `create_table` is on. Runs outside the batch's transaction:
    /// MySQL commits an open transaction at any DDL.
    pub(super) async fn table(
        &mut self,
        table: &str,
        sample: &Map<String, Value>,
        order: &[String],
        key: &[String],
    ) -> Result<TableInfo, ConnectorError> {
        if let Some(info) = self.tables.get(table)
            && sample.keys().all(|f| info.ty(f).is_some())
        {
            return Ok(info.clone());
        }
        if let Some(info) = self.describe(table).await? {
            // Refreshed when a field shows up that it lacked (the table may have
            // been altered since); fields the table does not have are left out.
            self.tables.insert(table.to_string(), info.clone());
            return Ok(info);
        }
        if !self.config.create_table {
            return Err(ConnectorError::fatal(format!(
                "table {table} does not exist; create it or set `create_table: true`"
            )));
        }
        let d = self.dialect;
        // In the order the fields were written (top-level fields in insert and
        // upsert modes); the rest, such as a change event's row, by name.
        let mut names: Vec<&String> = order.iter().filter(|n| sample.contains_key(*n)).collect();
        names.extend(sample.keys().filter(|k| !order.contains(k)));
        let mut defs: Vec<String> = names
            .into_iter()
            .map(|name| {
                let v = &sample[name];
                let ty = match d.key_text_type() {
                    Some(t) if key.contains(name) && !v.is_number() && !v.is_boolean() => t,
                    _ => d.column_type(v),
                };
                format!("{} {ty}", d.quote(name))
            })
            .collect();
        if !key.is_empty() {
            let keys: Vec<String> = key.iter().map(|k| d.quote(k)).collect();
            defs.push(format!("PRIMARY KEY ({})", keys.join(", ")));
        }
        let sql = format!("CREATE TABLE IF NOT EXISTS {} ({})", d.quote_table(table), defs.join(", "));
        self.create(&sql, table).await?;
        tracing::info!(table, "created the table from the first record");
        let info = self.describe(table).await?.ok_or_else(|| SqlError::NoColumns { table: table.to_string() })?;
        self.tables.insert(table.to_string(), info.clone());
        Ok(info)
    }

    /// The records among `ops` with fields that `table` has no column for,
    /// each once, with the reason.
    pub(super) fn unknown_in(&self, table: &str, ops: &TableOps) -> Vec<(usize, String)> {
        let Some(info) = self.tables.get(table) else { return Vec::new() };
        let mut bad: Vec<(usize, String)> = Vec::new();
        for (i, op) in &ops.ops {
            if bad.last().is_some_and(|(b, _)| b == i) {
                continue;
            }
            let unknown = op.row().map(|r| unknown_fields(r, &info.columns)).unwrap_or_default();
            if !unknown.is_empty() {
                bad.push((*i, format!("fields without a column in table {table}: {}", unknown.join(", "))));
            }
        }
        bad
    }
}
