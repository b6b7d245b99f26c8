//! What differs between Postgres, MySQL/MariaDB and SQLite: quoting, parameters,
//! upserts, catalog queries, and the types `create_table` picks.

use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

impl Dialect {
    pub fn quote(self, ident: &str) -> String {
        match self {
            Dialect::MySql => format!("`{}`", ident.replace('`', "``")),
            _ => format!("\"{}\"", ident.replace('"', "\"\"")),
        }
    }

    /// Postgres: `text` as a string literal, read the same whatever
    /// `standard_conforming_strings` says (an escape string with its
    /// backslashes doubled, as `quote_literal` writes one).
    pub fn pg_literal(text: &str) -> String {
        format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
    }

    /// A table name, which may be `schema.table`.
    pub fn quote_table(self, name: &str) -> String {
        name.split('.').map(|p| self.quote(p)).collect::<Vec<_>>().join(".")
    }

    /// The `n`th (1-based) parameter as a value for a column of type `ty`.
    /// Postgres does not convert a text parameter to the column's type on its
    /// own, so every value is cast; binary columns take base64.
    pub fn param(self, n: usize, ty: &str) -> String {
        match self {
            Dialect::Postgres if ty == "bytea" => format!("decode(CAST(${n} AS text), 'base64')"),
            // An explicit cast to `varchar(10)` (or `char(n)`, `bit(n)`, and
            // their arrays) cuts a longer value silently, and `bit` alone means
            // `bit(1)`; cast to the unbounded type so that the column's own
            // check refuses what does not fit, as `COPY` does.
            Dialect::Postgres if ty.starts_with("character") || ty.starts_with("bit") => {
                let array = if ty.ends_with("[]") { "[]" } else { "" };
                let base = ty.trim_end_matches("[]").split('(').next().unwrap_or(ty).trim_end();
                let base = match base {
                    "character" => "text",
                    "bit" => "bit varying",
                    base => base,
                };
                format!("CAST(${n} AS {base}{array})")
            }
            Dialect::Postgres => format!("CAST(${n} AS {ty})"),
            Dialect::MySql if is_mysql_binary(ty) => "FROM_BASE64(?)".into(),
            _ => "?".into(),
        }
    }

    /// Bound parameters one statement may carry.
    pub fn max_params(self) -> usize {
        match self {
            Dialect::Postgres | Dialect::MySql => 65_535,
            Dialect::Sqlite => 32_766,
        }
    }

    /// The clause that turns an INSERT into an upsert on `key`.
    pub fn upsert(self, key: &[String], columns: &[String]) -> String {
        let rest: Vec<&String> = columns.iter().filter(|c| !key.contains(c)).collect();
        match self {
            Dialect::MySql => {
                let sets: Vec<String> = if rest.is_empty() {
                    key.iter().map(|k| format!("{0} = {0}", self.quote(k))).collect()
                } else {
                    rest.iter().map(|c| format!("{0} = VALUES({0})", self.quote(c))).collect()
                };
                format!(" ON DUPLICATE KEY UPDATE {}", sets.join(", "))
            }
            _ => {
                let keys: Vec<String> = key.iter().map(|k| self.quote(k)).collect();
                if rest.is_empty() {
                    format!(" ON CONFLICT ({}) DO NOTHING", keys.join(", "))
                } else {
                    let sets: Vec<String> = rest.iter().map(|c| format!("{0} = EXCLUDED.{0}", self.quote(c))).collect();
                    format!(" ON CONFLICT ({}) DO UPDATE SET {}", keys.join(", "), sets.join(", "))
                }
            }
        }
    }

    /// The column type `create_table` gives a field, from its first value.
    pub fn column_type(self, sample: &Value) -> &'static str {
        match (self, sample) {
            (Dialect::Postgres, Value::Bool(_)) => "boolean",
            (Dialect::Postgres, Value::Number(n)) if n.is_i64() => "bigint",
            (Dialect::Postgres, Value::Number(_)) => "double precision",
            (Dialect::Postgres, Value::Object(_) | Value::Array(_)) => "jsonb",
            (Dialect::Postgres, _) => "text",
            (Dialect::MySql, Value::Bool(_)) => "BOOLEAN",
            (Dialect::MySql, Value::Number(n)) if n.is_i64() => "BIGINT",
            (Dialect::MySql, Value::Number(_)) => "DOUBLE",
            (Dialect::MySql, Value::Object(_) | Value::Array(_)) => "JSON",
            // Keys must have a length in MySQL; other text is unbounded.
            (Dialect::MySql, _) => "LONGTEXT",
            (Dialect::Sqlite, Value::Bool(_) | Value::Number(_)) if sample.is_i64() || sample.is_boolean() => "INTEGER",
            (Dialect::Sqlite, Value::Number(_)) => "REAL",
            (Dialect::Sqlite, _) => "TEXT",
        }
    }

    /// The type of a text key column in MySQL, which cannot index LONGTEXT.
    pub fn key_text_type(self) -> Option<&'static str> {
        (self == Dialect::MySql).then_some("VARCHAR(255)")
    }

    /// A query listing the table's columns and their types, in order; its one
    /// parameter is the table name.
    pub fn columns_query(self) -> &'static str {
        match self {
            Dialect::Postgres => {
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
                   FROM pg_attribute a
                  WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
                  ORDER BY a.attnum"
            }
            Dialect::MySql => {
                "SELECT CAST(COLUMN_NAME AS CHAR), CAST(COLUMN_TYPE AS CHAR) FROM information_schema.COLUMNS
                  WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION"
            }
            Dialect::Sqlite => "SELECT name, type FROM pragma_table_info(?) ORDER BY cid",
        }
    }

    /// A query saying (`1` or `0`) whether the table takes part in a foreign
    /// key, as the child or the parent; its parameters are the table name,
    /// twice.
    pub fn linked_query(self) -> &'static str {
        match self {
            Dialect::Postgres => {
                "SELECT CAST(count(*) AS text) FROM pg_constraint
                  WHERE contype = 'f' AND (conrelid = to_regclass($1) OR confrelid = to_regclass($2))"
            }
            Dialect::MySql => {
                "SELECT CAST(count(*) AS CHAR) FROM information_schema.KEY_COLUMN_USAGE
                  WHERE TABLE_SCHEMA = DATABASE() AND REFERENCED_TABLE_NAME IS NOT NULL
                    AND (TABLE_NAME = ? OR REFERENCED_TABLE_NAME = ?)"
            }
            Dialect::Sqlite => {
                "SELECT CAST(count(*) AS TEXT) FROM sqlite_master m, pragma_foreign_key_list(m.name) f
                  WHERE m.type = 'table' AND (m.name = ? COLLATE NOCASE OR f.\"table\" = ? COLLATE NOCASE)"
            }
        }
    }

    /// Postgres: a query saying (`true` or `false`) whether `COPY` into the
    /// table does what an `INSERT` does, and whether the session may `LOCK`
    /// it in `ROW EXCLUSIVE` mode: a table-wide `INSERT`, `UPDATE`, `DELETE`,
    /// `TRUNCATE` (or, from Postgres 17, `MAINTAIN`) privilege, column grants
    /// not counting; before Postgres 13 `LOCK` also checked every child table,
    /// so a table with any counts as not. Not for views (refused),
    /// tables with row-level security (refused) or rules (which `COPY`
    /// skips), nor `GENERATED ALWAYS` identity columns (which `COPY` fills
    /// where `INSERT` refuses); its parameter is the table name.
    pub fn copies_like_insert_query(self) -> &'static str {
        "SELECT CAST(c.relkind IN ('r', 'p') AND NOT c.relrowsecurity AND NOT c.relhasrules
                AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                                 AND NOT a.attisdropped AND a.attidentity = 'a') AS text),
                CAST(has_table_privilege(c.oid, CASE WHEN current_setting('server_version_num')::int >= 170000
                                                     THEN 'INSERT, UPDATE, DELETE, TRUNCATE, MAINTAIN'
                                                     ELSE 'INSERT, UPDATE, DELETE, TRUNCATE' END)
                     AND (current_setting('server_version_num')::int >= 130000 OR NOT c.relhassubclass) AS text)
           FROM pg_class c WHERE c.oid = to_regclass($1)"
    }

    /// Postgres: an expression saying (`true` or `false`, as text) whether
    /// the table has a unique index that `ON CONFLICT (<key>)` takes as its
    /// arbiter: on exactly the key's columns, valid, neither partial, on
    /// expressions nor deferrable. `table` and `key` are SQL text
    /// expressions (parameters or literals): the table's name, and the key's
    /// column names sorted bytewise, joined by U+001F. Needs Postgres 11
    /// (`indnkeyatts`).
    pub fn arbiter_sql(self, table: &str, key: &str) -> String {
        format!(
            "CAST(EXISTS (
               SELECT 1 FROM pg_index i
                WHERE i.indrelid = to_regclass({table}) AND i.indisunique AND i.indimmediate AND i.indisvalid
                  AND i.indpred IS NULL AND i.indexprs IS NULL
                  AND (SELECT string_agg(a.attname::text, chr(31) ORDER BY a.attname::text COLLATE \"C\")
                         FROM pg_attribute a
                        WHERE a.attrelid = i.indrelid
                          AND a.attnum = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1])) = {key}) AS text)"
        )
    }

    /// Creates `flowgate_source_positions`, where effectively-once sinks keep
    /// the source's position with the rows: its parts, opaque text keyed by
    /// what each covers (see `flowgate_sdk::Position`). MySQL keys are sized
    /// to fit InnoDB's 3072-byte index limit in utf8mb4.
    pub fn positions_table(self) -> &'static str {
        match self {
            Dialect::MySql => {
                "CREATE TABLE IF NOT EXISTS flowgate_source_positions (pipeline VARCHAR(255) NOT NULL, \
                 source VARCHAR(512) NOT NULL, position TEXT NOT NULL, PRIMARY KEY (pipeline, source))"
            }
            _ => {
                "CREATE TABLE IF NOT EXISTS flowgate_source_positions (pipeline TEXT NOT NULL, source TEXT NOT NULL, \
                 position TEXT NOT NULL, PRIMARY KEY (pipeline, source))"
            }
        }
    }

    pub fn save_position(self) -> &'static str {
        match self {
            // With the transaction's id, to ask after its outcome should the
            // answer to its `COMMIT` be lost.
            Dialect::Postgres => {
                "INSERT INTO flowgate_source_positions (pipeline, source, position) VALUES ($1, $2, $3) \
                 ON CONFLICT (pipeline, source) DO UPDATE SET position = EXCLUDED.position \
                 RETURNING txid_current()::text"
            }
            Dialect::MySql => {
                "INSERT INTO flowgate_source_positions (pipeline, source, position) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE position = VALUES(position)"
            }
            Dialect::Sqlite => {
                "INSERT INTO flowgate_source_positions (pipeline, source, position) VALUES (?, ?, ?) \
                 ON CONFLICT (pipeline, source) DO UPDATE SET position = excluded.position"
            }
        }
    }

    pub fn load_positions(self) -> &'static str {
        match self {
            Dialect::Postgres => "SELECT source, position FROM flowgate_source_positions WHERE pipeline = $1",
            _ => "SELECT source, position FROM flowgate_source_positions WHERE pipeline = ?",
        }
    }

    /// [`load_positions`](Self::load_positions), waiting for a transaction
    /// still writing them (MySQL; Postgres asks after the transaction).
    pub fn load_positions_settled(self) -> &'static str {
        match self {
            Dialect::MySql => {
                "SELECT source, position FROM flowgate_source_positions WHERE pipeline = ? LOCK IN SHARE MODE"
            }
            _ => self.load_positions(),
        }
    }

    /// Positions as 0.1 stored them (`flowgate_positions`, a BIGINT per part,
    /// read as text), read when a pipeline has none in
    /// `flowgate_source_positions` yet.
    pub fn load_legacy_positions(self) -> &'static str {
        match self {
            Dialect::Postgres => "SELECT source, CAST(position AS text) FROM flowgate_positions WHERE pipeline = $1",
            Dialect::MySql => "SELECT source, CAST(position AS CHAR) FROM flowgate_positions WHERE pipeline = ?",
            Dialect::Sqlite => "SELECT source, CAST(position AS TEXT) FROM flowgate_positions WHERE pipeline = ?",
        }
    }
}

pub(crate) fn dialect_of(url: &str) -> Dialect {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Dialect::Postgres
    } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        Dialect::MySql
    } else {
        Dialect::Sqlite
    }
}

/// The database file of a SQLite URL; `None` for other databases and memory.
pub(crate) fn sqlite_path(url: &str) -> Option<&std::path::Path> {
    if dialect_of(url) != Dialect::Sqlite {
        return None;
    }
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
    let path = path.split('?').next().unwrap_or(path);
    (!path.is_empty() && path != ":memory:").then(|| std::path::Path::new(path))
}

fn is_mysql_binary(ty: &str) -> bool {
    let ty = ty.to_ascii_lowercase();
    ty.contains("blob") || ty.starts_with("binary") || ty.starts_with("varbinary")
}

/// MySQL's DATETIME and TIMESTAMP take `2024-05-01 12:00:00.5`, not ISO 8601's
/// `2024-05-01T12:00:00.5Z`; UTC values are rewritten so.
pub fn mysql_datetime(ty: &str, text: &str) -> Option<String> {
    let ty = ty.to_ascii_lowercase();
    if !(ty.starts_with("datetime") || ty.starts_with("timestamp")) {
        return None;
    }
    let body = text.strip_suffix('Z').or_else(|| text.strip_suffix("+00:00")).unwrap_or(text);
    (body.len() >= 19 && body.as_bytes()[10] == b'T').then(|| body.replacen('T', " ", 1))
}

/// A JSON array as a Postgres array literal, for array columns: `[1,null,"a b"]`
/// becomes `{1,NULL,"a b"}`.
pub fn pg_array(value: &Value) -> String {
    fn element(out: &mut String, v: &Value) {
        match v {
            Value::Null => out.push_str("NULL"),
            Value::Array(items) => list(out, items),
            Value::String(s) => quoted(out, s),
            Value::Bool(b) => out.push_str(if *b { "t" } else { "f" }),
            Value::Number(n) => out.push_str(&n.to_string()),
            Value::Object(_) => quoted(out, &v.to_string()),
        }
    }
    fn quoted(out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    fn list(out: &mut String, items: &[Value]) {
        out.push('{');
        for (i, v) in items.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            element(out, v);
        }
        out.push('}');
    }
    let mut out = String::new();
    element(&mut out, value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quoting_parameters_and_upserts() {
        assert_eq!(Dialect::MySql.quote("a`b"), "`a``b`");
        assert_eq!(Dialect::Postgres.quote_table("shop.orders"), r#""shop"."orders""#);
        assert_eq!(Dialect::pg_literal(r#""o'k\"."t""#), r#"E'"o''k\\"."t"'"#);
        assert_eq!(Dialect::Postgres.param(3, "numeric(10,2)"), "CAST($3 AS numeric(10,2))");
        assert_eq!(Dialect::Postgres.param(1, "bytea"), "decode(CAST($1 AS text), 'base64')");
        assert_eq!(Dialect::Postgres.param(2, "character varying(10)"), "CAST($2 AS character varying)");
        assert_eq!(Dialect::Postgres.param(2, "character(3)"), "CAST($2 AS text)");
        assert_eq!(Dialect::Postgres.param(2, "bit(3)"), "CAST($2 AS bit varying)");
        assert_eq!(Dialect::Postgres.param(2, "character varying(5)[]"), "CAST($2 AS character varying[])");
        assert_eq!(Dialect::Postgres.param(2, "character(2)[]"), "CAST($2 AS text[])");
        assert_eq!(Dialect::MySql.param(1, "blob"), "FROM_BASE64(?)");
        let cols = ["id".to_string(), "n".to_string()];
        let key = ["id".to_string()];
        assert_eq!(Dialect::Postgres.upsert(&key, &cols), r#" ON CONFLICT ("id") DO UPDATE SET "n" = EXCLUDED."n""#);
        assert_eq!(Dialect::MySql.upsert(&key, &cols), " ON DUPLICATE KEY UPDATE `n` = VALUES(`n`)");
        assert_eq!(Dialect::Sqlite.upsert(&key, &key), r#" ON CONFLICT ("id") DO NOTHING"#);
    }

    #[test]
    fn values_adapted_to_the_database() {
        assert_eq!(pg_array(&json!([1, null, "a \"b\"", [true], {"k": 1}])), r#"{1,NULL,"a \"b\"",{t},"{\"k\":1}"}"#);
        assert_eq!(mysql_datetime("datetime(6)", "2024-05-01T12:00:00.5Z").as_deref(), Some("2024-05-01 12:00:00.5"));
        assert_eq!(mysql_datetime("text", "2024-05-01T12:00:00Z"), None);
        assert_eq!(Dialect::Sqlite.column_type(&json!(true)), "INTEGER");
        assert_eq!(Dialect::Postgres.column_type(&json!({"a": 1})), "jsonb");
        assert_eq!(Dialect::MySql.column_type(&json!(1.5)), "DOUBLE");
    }
}
