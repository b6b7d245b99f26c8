//! Names that records choose: columns (a record's fields, which `create_table`
//! turns into columns) and tables (a `table:` template). A database truncates,
//! folds or refuses some names, and a refusal in DDL is not a row error, so each
//! name is checked here first and a record with a bad one is refused on its own
//! with the reason, instead of losing a value to a shortened column or stopping
//! the pipeline on a statement that can never succeed.

use serde_json::{Map, Value};

use crate::dialect::Dialect;

impl Dialect {
    /// Why `name` cannot be a column or table name as it is, if it cannot.
    pub fn check_name(self, name: &str) -> Result<(), String> {
        if name.is_empty() {
            return Err("an empty name".into());
        }
        // Past any database's own limit, and long enough to cost something to
        // match against patterns.
        if name.len() > 1024 {
            return Err(format!("the name is {} bytes long; at most 1024", name.len()));
        }
        if let Some(c) = name.chars().find(|c| c.is_control()) {
            return Err(format!("the name holds a control character ({})", c.escape_unicode()));
        }
        match self {
            // NAMEDATALEN - 1: a longer name is cut silently, and two long
            // names can become the same column.
            Dialect::Postgres if name.len() > 63 => {
                Err(format!("the name is {} bytes long; Postgres keeps only 63 (it would cut it)", name.len()))
            }
            Dialect::MySql if name.chars().count() > 64 => {
                Err(format!("the name is {} characters long; MySQL allows 64", name.chars().count()))
            }
            Dialect::MySql if name.ends_with(' ') => Err("MySQL names cannot end with a space".into()),
            Dialect::MySql if name.chars().any(|c| c > '\u{FFFF}') => {
                Err("MySQL names cannot hold characters beyond U+FFFF".into())
            }
            _ => Ok(()),
        }
    }

    /// Whether column names differing only in case are one column: always in
    /// MySQL and SQLite; Postgres keeps the case of a quoted name.
    pub fn folds_case(self) -> bool {
        self != Dialect::Postgres
    }
}

/// Why a record's fields cannot be columns, if they cannot: a bad name, or two
/// names the database would take for one column.
pub fn check_fields(dialect: Dialect, row: &Map<String, Value>) -> Result<(), String> {
    for name in row.keys() {
        dialect
            .check_name(name)
            .map_err(|reason| format!("field `{}` cannot be a column: {reason}", name.escape_debug()))?;
    }
    if dialect.folds_case() && row.len() > 1 {
        let names: Vec<&String> = row.keys().collect();
        for (i, a) in names.iter().enumerate() {
            if let Some(b) = names[i + 1..].iter().find(|b| b.to_lowercase() == a.to_lowercase()) {
                return Err(format!(
                    "fields `{}` and `{}` would be one column: {dialect:?} column names ignore case",
                    a.escape_debug(),
                    b.escape_debug()
                ));
            }
        }
    }
    Ok(())
}

/// Tables no record may write to: Flowgate's own (the effectively-once
/// positions) and the databases' catalogs.
fn reserved(dialect: Dialect, schema: Option<&str>, table: &str) -> Option<&'static str> {
    let table = table.to_lowercase();
    if table.starts_with("flowgate_") {
        return Some("tables named flowgate_* are Flowgate's own");
    }
    match dialect {
        Dialect::Postgres if table.starts_with("pg_") => return Some("pg_* names are Postgres's catalogs"),
        Dialect::Sqlite if table.starts_with("sqlite_") => return Some("sqlite_* tables are SQLite's own"),
        _ => {}
    }
    let schema = schema?.to_lowercase();
    let system = match dialect {
        Dialect::Postgres => schema == "information_schema" || schema.starts_with("pg_"),
        Dialect::MySql => ["information_schema", "mysql", "performance_schema", "sys"].contains(&schema.as_str()),
        Dialect::Sqlite => true,
    };
    system.then_some("a system schema is never a target")
}

/// Why `name` cannot be a table, if it cannot: `table` or `schema.table`
/// (SQLite: `table` only), each part a valid name, not reserved.
pub fn check_table(dialect: Dialect, name: &str) -> Result<(), String> {
    let parts: Vec<&str> = name.split('.').collect();
    let (schema, table) = match parts.as_slice() {
        [table] => (None, *table),
        [_, _] if dialect == Dialect::Sqlite => return Err("SQLite table names have no schema part".into()),
        [schema, table] => (Some(*schema), *table),
        _ => return Err("a table name is `table` or `schema.table`".into()),
    };
    for part in schema.iter().chain([&table]) {
        dialect.check_name(part)?;
    }
    match reserved(dialect, schema, table) {
        Some(why) => Err(why.into()),
        None => Ok(()),
    }
}

/// The names a `table:` template may fill in.
#[derive(Clone, Debug)]
pub struct TableFilter {
    patterns: Vec<String>,
}

impl TableFilter {
    pub fn new(patterns: Vec<String>) -> Self {
        TableFilter { patterns }
    }

    /// Why the rendered table `name` is refused, if it is.
    pub fn check(&self, dialect: Dialect, name: &str) -> Result<(), String> {
        check_table(dialect, name)?;
        if self.patterns.iter().any(|p| wildcard(p.as_bytes(), name.as_bytes())) {
            Ok(())
        } else {
            Err(format!("not among the tables allowed ({}; see `tables_allowed`)", self.patterns.join(", ")))
        }
    }
}

/// `*` matches any run of bytes but `.` (so it never crosses into another
/// schema), `?` any one byte but `.`; anything else matches itself. Each
/// `.`-separated part is matched on its own, in time linear in the name for
/// each star (no backtracking blow-up on a hostile name).
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    let mut patterns = pattern.split(|&b| b == b'.');
    let mut names = name.split(|&b| b == b'.');
    loop {
        match (patterns.next(), names.next()) {
            (None, None) => return true,
            (Some(p), Some(n)) if glob(p, n) => {}
            _ => return false,
        }
    }
}

/// The classic matcher: on a mismatch, go back to the last `*` and let it
/// take one more byte.
fn glob(p: &[u8], n: &[u8]) -> bool {
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((s, mark)) = star {
            star = Some((s, mark + 1));
            pi = s + 1;
            ni = mark + 1;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// The fields of `row` that have no column in `columns`, in record order, each
/// with the column it may have meant (one differing only in case).
pub fn unknown_fields(row: &Map<String, Value>, columns: &[(String, String)]) -> Vec<String> {
    row.keys()
        .filter(|f| !columns.iter().any(|(c, _)| c == *f))
        .map(|f| match columns.iter().find(|(c, _)| c.to_lowercase() == f.to_lowercase()) {
            Some((c, _)) => format!("`{}` (the column is `{c}`)", f.escape_debug()),
            None => format!("`{}`", f.escape_debug()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn names_the_database_would_cut_fold_or_refuse() {
        let long = "顧客の配送先住所の郵便番号と都道府県名と市区町村"; // 72 bytes, 24 characters
        assert!(Dialect::Postgres.check_name(long).unwrap_err().contains("72 bytes"));
        assert!(Dialect::MySql.check_name(long).is_ok());
        assert!(Dialect::Sqlite.check_name(long).is_ok());
        for d in [Dialect::Postgres, Dialect::MySql, Dialect::Sqlite] {
            assert!(d.check_name("").is_err());
            assert!(d.check_name("nul\0col").unwrap_err().contains("control character"));
            assert!(d.check_name("a\nb").is_err());
            assert!(d.check_name("Straße \"quoted\"").is_ok());
        }
        assert!(Dialect::MySql.check_name(&"x".repeat(65)).is_err());
        assert!(Dialect::MySql.check_name("trailing ").is_err());
        assert!(Dialect::MySql.check_name("🦀").is_err());
    }

    #[test]
    fn fields_that_would_be_one_column() {
        let row = obj(json!({"id": 1, "Name": "a", "name": "b"}));
        assert!(check_fields(Dialect::Sqlite, &row).unwrap_err().contains("would be one column"));
        assert!(check_fields(Dialect::MySql, &row).is_err());
        assert!(check_fields(Dialect::Postgres, &row).is_ok());
        assert!(check_fields(Dialect::Postgres, &obj(json!({"": 1}))).unwrap_err().contains("empty"));
    }

    #[test]
    fn tables_records_may_not_pick() {
        let any = TableFilter::new(vec!["*".into()]);
        for bad in ["flowgate_positions", "FLOWGATE_positions", "../../etc", "main.orders", "", "a.b.c", "x\ny"] {
            assert!(any.check(Dialect::Sqlite, bad).is_err(), "{bad}");
        }
        assert!(any.check(Dialect::Postgres, "information_schema.t").is_err());
        assert!(any.check(Dialect::Postgres, "pg_class").is_err());
        let qualified = TableFilter::new(vec!["*.*".into()]);
        assert!(qualified.check(Dialect::Postgres, "information_schema.t").unwrap_err().contains("system"));
        assert!(qualified.check(Dialect::Postgres, "pg_catalog.t").is_err());
        assert!(qualified.check(Dialect::MySql, "mysql.user").is_err());
        assert!(qualified.check(Dialect::Postgres, "shop.orders").is_ok());
        let orders = TableFilter::new(vec!["orders_*".into(), "audit_??".into()]);
        assert!(orders.check(Dialect::Postgres, "orders_eu").is_ok());
        assert!(orders.check(Dialect::Postgres, "audit_01").is_ok());
        assert!(orders.check(Dialect::Postgres, "customers").unwrap_err().contains("not among"));
        assert!(orders.check(Dialect::Postgres, "orders_eu.x").is_err());
        assert!(any.check(Dialect::Postgres, "public.orders").is_err());
        let many = TableFilter::new(vec!["*_*_*_orders".into()]);
        assert!(many.check(Dialect::Sqlite, "a_b_c_orders").is_ok());
        assert!(many.check(Dialect::Sqlite, &format!("{}x", "_".repeat(1000))).is_err());
        assert!(Dialect::Sqlite.check_name(&"_".repeat(2000)).unwrap_err().contains("at most 1024"));
    }

    #[test]
    fn unknown_fields_name_what_they_may_have_meant() {
        let cols = vec![("id".to_string(), "integer".to_string()), ("name".to_string(), "text".to_string())];
        assert_eq!(unknown_fields(&obj(json!({"ID2": 2})), &cols), ["`ID2`"]);
        assert_eq!(unknown_fields(&obj(json!({"id": 1, "Name": "a"})), &cols), ["`Name` (the column is `name`)"]);
        assert!(unknown_fields(&obj(json!({"id": 1, "name": "a"})), &cols).is_empty());
    }
}
