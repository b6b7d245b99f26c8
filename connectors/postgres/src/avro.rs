//! The Avro schema of a table's change events, from its relation description:
//! Debezium's shape (`Envelope` with `before`/`after` of record `Value`, a
//! `source` block, `op`, `ts_ms`), so that Avro consumers written for Debezium
//! read it. A new schema is made whenever Postgres describes the table anew
//! (after ALTER TABLE); the Avro sink registers it as the subject's next version.
//!
//! Column types: bool → boolean; int2/int4 → int; int8/oid → long; float4 →
//! float; float8 → double; numeric(p,s) → decimal(p,s) (unconstrained numeric →
//! string); date → date; time → time-micros; timestamp → local-timestamp-micros;
//! timestamptz → timestamp-micros; uuid → uuid; bytea → bytes; json/jsonb →
//! string holding the document; one-dimensional arrays → arrays of nullable
//! elements; anything else → string. Key columns are required, the others
//! nullable with a null default (so that adding a column stays compatible).

use std::sync::Arc;

use flowgate_sdk::ValueSchema;
use serde_json::{Value, json};

use crate::table::{Column, Table};

/// The change-event schema of `table`; `None` when a name is not a valid Avro
/// name (the events then carry no schema, and an Avro sink refuses them).
pub fn envelope_schema(table: &Table) -> Option<Arc<ValueSchema>> {
    if !is_avro_name(&table.schema) || !is_avro_name(&table.name) {
        return None;
    }
    let namespace = format!("{}.{}", table.schema, table.name);
    let mut fields = Vec::with_capacity(table.columns.len());
    for c in &table.columns {
        if !is_avro_name(&c.name) {
            tracing::warn!(
                table = %format!("{}.{}", table.schema, table.name),
                column = %c.name,
                "the column name is not a valid Avro name; this table's events carry no Avro schema"
            );
            return None;
        }
        fields.push(column_field(c));
    }
    let value = json!({"type": "record", "name": "Value", "fields": fields});
    let source = json!({
        "type": "record", "name": "Source", "namespace": "io.flowgate.postgres",
        "fields": [
            {"name": "version", "type": "string"},
            {"name": "connector", "type": "string"},
            {"name": "name", "type": "string"},
            {"name": "ts_ms", "type": "long"},
            {"name": "snapshot", "type": "string"},
            {"name": "db", "type": "string"},
            {"name": "schema", "type": "string"},
            {"name": "table", "type": "string"},
            {"name": "txId", "type": ["null", "long"], "default": null},
            {"name": "lsn", "type": "long"},
        ],
    });
    let envelope = json!({
        "type": "record", "name": "Envelope", "namespace": namespace,
        "fields": [
            {"name": "before", "type": ["null", value], "default": null},
            {"name": "after", "type": ["null", "Value"], "default": null},
            {"name": "source", "type": source},
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": "long"},
        ],
    });
    Some(ValueSchema::new(envelope.to_string(), Some(format!("{namespace}.Envelope").into())))
}

/// `table` with the schema of its change events (see [`envelope_schema`]).
pub fn with_schema(mut table: Table) -> Table {
    table.avro = envelope_schema(&table);
    table
}

fn column_field(c: &Column) -> Value {
    let (ty, json_text) = column_type(c.oid, c.typmod);
    let mut f = if c.key {
        json!({"name": &*c.name, "type": ty})
    } else {
        json!({"name": &*c.name, "type": ["null", ty], "default": null})
    };
    if json_text {
        f["flowgate.json"] = Value::Bool(true);
    }
    f
}

/// The Avro type of a column, and whether it holds a JSON document as text.
fn column_type(oid: u32, typmod: i32) -> (Value, bool) {
    let scalar = |oid: u32| -> Option<Value> {
        Some(match oid {
            16 => json!("boolean"),
            21 | 23 => json!("int"),
            20 | 26 => json!("long"),
            700 => json!("float"),
            701 => json!("double"),
            17 => json!("bytes"),
            1082 => json!({"type": "int", "logicalType": "date"}),
            1083 => json!({"type": "long", "logicalType": "time-micros"}),
            1114 => json!({"type": "long", "logicalType": "local-timestamp-micros"}),
            1184 => json!({"type": "long", "logicalType": "timestamp-micros"}),
            2950 => json!({"type": "string", "logicalType": "uuid"}),
            _ => return None,
        })
    };
    match oid {
        114 | 3802 => (json!("string"), true),
        1700 => match numeric_typmod(typmod) {
            Some((precision, scale)) => {
                (json!({"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}), false)
            }
            None => (json!("string"), false),
        },
        // Arrays: elements as the CDC source writes them (numbers, booleans,
        // base64 for bytea, strings for the rest).
        1005 | 1007 => (json!({"type": "array", "items": ["null", "int"]}), false),
        1016 | 1028 => (json!({"type": "array", "items": ["null", "long"]}), false),
        1021 | 1022 => (json!({"type": "array", "items": ["null", "double"]}), false),
        1000 => (json!({"type": "array", "items": ["null", "boolean"]}), false),
        1001 => (json!({"type": "array", "items": ["null", "bytes"]}), false),
        199 | 3807 => (json!("string"), true),
        1009 | 1015 | 1014 | 1003 | 2951 | 1182 | 1183 | 1270 | 1187 | 1002 | 1231 | 1115 | 1185 => {
            (json!({"type": "array", "items": ["null", "string"]}), false)
        }
        oid => (scalar(oid).unwrap_or_else(|| json!("string")), false),
    }
}

/// `numeric(p,s)` from its type modifier (-1 when unconstrained). A negative
/// scale or one above the precision (allowed since Postgres 15) has no Avro form.
fn numeric_typmod(typmod: i32) -> Option<(i32, i32)> {
    if typmod < 4 {
        return None;
    }
    let t = typmod - 4;
    let precision = (t >> 16) & 0xffff;
    let scale = t & 0x7ff;
    (t & 0xffff < 0x400 && scale <= precision).then_some((precision, scale))
}

/// Whether `s` is a valid Avro name: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_avro_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_modifiers() {
        // numeric(10,2) is stored as ((10 << 16) | 2) + 4.
        assert_eq!(numeric_typmod((10 << 16 | 2) + 4), Some((10, 2)));
        assert_eq!(numeric_typmod(-1), None);
        assert_eq!(numeric_typmod((5 << 16 | 0x7fe) + 4), None, "negative scale");
    }

    #[test]
    fn names_outside_avro_mean_no_schema() {
        let t = Table::new("public".into(), "orders".into(), false, [("order id".into(), 23, -1, true)]);
        assert!(envelope_schema(&t).is_none());
        let t = Table::new("public".into(), "orders".into(), false, [("id".into(), 23, -1, true)]);
        let s = envelope_schema(&t).unwrap();
        assert_eq!(s.name.as_deref(), Some("public.orders.Envelope"));
    }
}
