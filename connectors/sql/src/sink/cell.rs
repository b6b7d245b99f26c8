//! JSON values as the cells bound to a statement's parameters, in the form
//! each database takes them.

use std::borrow::Cow;

use serde_json::Value;

use crate::dialect::{Dialect, mysql_datetime, pg_array};

/// The value bound for one column; text borrowed from the record where it
/// can be, so that `COPY` writes it without a copy.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Cell<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Real(f64),
    Text(Cow<'a, str>),
}

impl Dialect {
    /// A JSON value as the cell for a column of type `ty`. Postgres gets text
    /// only (each parameter is cast to its column's type): a prepared statement
    /// keeps the parameter types of its first execution, and an integer bound
    /// where a float was is misread rather than refused.
    pub(super) fn cell<'a>(self, value: Option<&'a Value>, ty: &str) -> Cell<'a> {
        match self.typed_cell(value, ty) {
            Cell::Bool(b) if self == Dialect::Postgres => Cell::Text(b.to_string().into()),
            Cell::Int(i) if self == Dialect::Postgres => Cell::Text(i.to_string().into()),
            Cell::Real(f) if self == Dialect::Postgres => Cell::Text(f.to_string().into()),
            cell => cell,
        }
    }

    /// The cell as the value's own type; [`Dialect::cell`] turns it into what the
    /// database is sent, `COPY` writes it as text.
    pub(super) fn typed_cell<'a>(self, value: Option<&'a Value>, ty: &str) -> Cell<'a> {
        match value {
            None | Some(Value::Null) => Cell::Null,
            // A JSON column takes any value as JSON text.
            Some(v) if is_json(ty) => Cell::Text(v.to_string().into()),
            Some(Value::Bool(b)) => Cell::Bool(*b),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => Cell::Int(i),
                // Beyond i64 (or a decimal) stays exact as text.
                None if n.is_u64() => Cell::Text(n.to_string().into()),
                None => Cell::Real(n.as_f64().unwrap_or(f64::NAN)),
            },
            Some(Value::String(s)) => match self {
                Dialect::MySql => Cell::Text(mysql_datetime(ty, s).map_or(Cow::Borrowed(s.as_str()), Cow::Owned)),
                _ => Cell::Text(Cow::Borrowed(s)),
            },
            Some(v @ Value::Array(_)) if self == Dialect::Postgres && ty.ends_with("[]") => {
                Cell::Text(pg_array(v).into())
            }
            Some(v) => Cell::Text(v.to_string().into()),
        }
    }
}

/// Whether a column of type `ty` holds JSON: it takes any value as JSON text.
pub(super) fn is_json(ty: &str) -> bool {
    ty.eq_ignore_ascii_case("json") || ty.eq_ignore_ascii_case("jsonb")
}
