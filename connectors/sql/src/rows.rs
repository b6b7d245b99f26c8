//! JSON records to row values.

use serde::Deserializer as _;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

/// One column value, owned so it can be bound to a statement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl Cell {
    fn from_json(v: Value) -> Cell {
        match v {
            Value::Null => Cell::Null,
            Value::Bool(b) => Cell::Int(b.into()),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Cell::Int(i),
                // Integers beyond i64 stay exact as text rather than lose digits as a float.
                None if n.is_u64() => Cell::Text(n.to_string()),
                None => Cell::Real(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Cell::Text(s),
            // Nested values are kept as JSON text (SQLite's json functions read it).
            v @ (Value::Array(_) | Value::Object(_)) => Cell::Text(v.to_string()),
        }
    }
}

/// Parses a record value as a JSON object.
pub(crate) fn parse_object(value: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(value) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(format!("value is not a JSON object but {}", kind(&other))),
        Err(e) => Err(format!("value is not JSON: {e}")),
    }
}

/// The top-level field names of a JSON object, in the order they are written
/// (a parsed `Map` would sort them).
pub(crate) fn field_names(value: &[u8]) -> Vec<String> {
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
            let mut keys = Vec::new();
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                // A repeated key is one column (the parsed value keeps the last).
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
            Ok(keys)
        }
    }
    serde_json::Deserializer::from_slice(value).deserialize_map(Keys).unwrap_or_default()
}

/// The cells of `columns`, in order, taken out of `object`.
pub(crate) fn cells(mut object: Map<String, Value>, columns: &[String], out: &mut Vec<Cell>) {
    out.extend(columns.iter().map(|c| object.remove(c).map_or(Cell::Null, Cell::from_json)));
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_json_types_to_cells() {
        let obj = parse_object(br#"{"a":1,"b":2.5,"c":"x","d":true,"e":null,"f":{"g":[1]},"h":18446744073709551615}"#)
            .unwrap();
        let cols: Vec<String> = ["a", "b", "c", "d", "e", "f", "h", "missing"].map(String::from).to_vec();
        let mut out = Vec::new();
        cells(obj, &cols, &mut out);
        assert_eq!(
            out,
            [
                Cell::Int(1),
                Cell::Real(2.5),
                Cell::Text("x".into()),
                Cell::Int(1),
                Cell::Null,
                Cell::Text(r#"{"g":[1]}"#.into()),
                Cell::Text("18446744073709551615".into()),
                Cell::Null
            ]
        );
        assert!(parse_object(b"[1]").unwrap_err().contains("an array"));
        assert!(parse_object(b"{").unwrap_err().contains("not JSON"));
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(field_names(br#"{"z":1,"a":{"n":2},"m":[3]}"#), ["z", "a", "m"]);
        assert_eq!(field_names(br#"{"a":1,"a":2,"b":3}"#), ["a", "b"]);
    }
}
