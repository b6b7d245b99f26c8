//! JSON values as the cells bound to a statement's parameters, in the form
//! each database takes them.

use serde_json::Value;
use sqlx::any::AnyArguments;

use crate::dialect::{Dialect, mysql_datetime, pg_array};

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, AnyArguments>;

/// The value bound for one column.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Real(f64),
    Text(String),
}

pub(super) fn bind(q: Query<'_>, cell: Cell) -> Query<'_> {
    match cell {
        Cell::Null => q.bind(None::<String>),
        Cell::Bool(b) => q.bind(b),
        Cell::Int(i) => q.bind(i),
        Cell::Real(f) => q.bind(f),
        Cell::Text(s) => q.bind(s),
    }
}

impl Dialect {
    /// A JSON value as the cell for a column of type `ty`. Postgres gets text
    /// only (each parameter is cast to its column's type): a prepared statement
    /// keeps the parameter types of its first execution, and an integer bound
    /// where a float was is misread rather than refused.
    pub(super) fn cell(self, value: Option<&Value>, ty: &str) -> Cell {
        match self.typed_cell(value, ty) {
            Cell::Bool(b) if self == Dialect::Postgres => Cell::Text(b.to_string()),
            Cell::Int(i) if self == Dialect::Postgres => Cell::Text(i.to_string()),
            Cell::Real(f) if self == Dialect::Postgres => Cell::Text(f.to_string()),
            cell => cell,
        }
    }

    fn typed_cell(self, value: Option<&Value>, ty: &str) -> Cell {
        let json_column = ty.eq_ignore_ascii_case("json") || ty.eq_ignore_ascii_case("jsonb");
        match value {
            None | Some(Value::Null) => Cell::Null,
            // A JSON column takes any value as JSON text.
            Some(v) if json_column => Cell::Text(v.to_string()),
            Some(Value::Bool(b)) => Cell::Bool(*b),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => Cell::Int(i),
                // Beyond i64 (or a decimal) stays exact as text.
                None if n.is_u64() => Cell::Text(n.to_string()),
                None => Cell::Real(n.as_f64().unwrap_or(f64::NAN)),
            },
            Some(Value::String(s)) => match self {
                Dialect::MySql => Cell::Text(mysql_datetime(ty, s).unwrap_or_else(|| s.clone())),
                _ => Cell::Text(s.clone()),
            },
            Some(v @ Value::Array(_)) if self == Dialect::Postgres && ty.ends_with("[]") => Cell::Text(pg_array(v)),
            Some(v) => Cell::Text(v.to_string()),
        }
    }
}
