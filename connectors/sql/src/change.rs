//! Records to row operations: a new row (insert), the row with a key (upsert,
//! and `c`/`r`/`u` change events), a key to delete, or an emptied table.

use serde_json::{Map, Value};

use crate::config::{Columns, Mode};

/// What Debezium (and Flowgate's CDC source) writes for a TOASTed value that an
/// update left unchanged: the column keeps its value.
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Insert(Map<String, Value>),
    /// The whole row; columns it lacks are unchanged TOAST values when it came
    /// from a change event.
    Upsert(Map<String, Value>),
    /// The key columns of the row to delete.
    Delete(Map<String, Value>),
    /// A row whose key changed while some of its (TOASTed) values were not sent:
    /// updated in place, so that those keep their values.
    Move {
        from: Map<String, Value>,
        row: Map<String, Value>,
    },
    Truncate,
}

impl Op {
    /// The columns it writes or matches on, if any.
    pub fn row(&self) -> Option<&Map<String, Value>> {
        match self {
            Op::Insert(r) | Op::Upsert(r) | Op::Delete(r) | Op::Move { row: r, .. } => Some(r),
            Op::Truncate => None,
        }
    }
}

/// The operations one record asks for, or why it cannot be applied.
pub fn ops(
    value: &[u8],
    record_key: Option<&[u8]>,
    mode: Mode,
    columns: Option<&Columns>,
    key: &[String],
) -> Result<Vec<Op>, String> {
    if mode == Mode::Cdc && value.is_empty() {
        return Ok(Vec::new()); // A tombstone: only for log compaction.
    }
    let object = match serde_json::from_slice::<Value>(value) {
        Ok(Value::Object(m)) => m,
        Ok(other) => return Err(format!("value is not a JSON object but {}", kind(&other))),
        Err(e) => return Err(format!("value is not JSON: {e}")),
    };
    match mode {
        Mode::Insert => Ok(vec![Op::Insert(mapped(object, columns))]),
        Mode::Upsert => {
            let row = mapped(object, columns);
            has_key(&row, key)?;
            Ok(vec![Op::Upsert(row)])
        }
        Mode::Cdc => change_ops(object, record_key, columns, key),
    }
}

fn change_ops(
    mut event: Map<String, Value>,
    record_key: Option<&[u8]>,
    columns: Option<&Columns>,
    key: &[String],
) -> Result<Vec<Op>, String> {
    let op = match event.get("op") {
        Some(Value::String(op)) => op.clone(),
        _ => return Err("not a change event: no `op` (expected `c`, `r`, `u`, `d` or `t`)".into()),
    };
    let row = |event: &mut Map<String, Value>, side: &str| -> Result<Map<String, Value>, String> {
        match event.remove(side) {
            Some(Value::Object(m)) => Ok(mapped(m, columns)),
            _ => Err(format!("a change event with op `{op}` needs `{side}` to be an object")),
        }
    };
    let key = key_columns(key, record_key)?;
    match op.as_str() {
        "c" | "r" => {
            let after = row(&mut event, "after")?;
            has_key(&after, &key)?;
            Ok(vec![Op::Upsert(without_unavailable(after))])
        }
        "u" => {
            let after = row(&mut event, "after")?;
            has_key(&after, &key)?;
            // A changed key moves the row: delete it under the old key, then
            // write the new one; in place when some values were not sent.
            if let Ok(before) = row(&mut event, "before")
                && key.iter().all(|k| before.get(k).is_some_and(|v| !v.is_null()))
                && key.iter().any(|k| before.get(k) != after.get(k))
            {
                let from = only(&before, &key);
                let complete = after.values().all(|v| v.as_str() != Some(UNAVAILABLE));
                return Ok(if complete {
                    vec![Op::Delete(from), Op::Upsert(after)]
                } else {
                    vec![Op::Move { from, row: without_unavailable(after) }]
                });
            }
            Ok(vec![Op::Upsert(without_unavailable(after))])
        }
        "d" => {
            let before = row(&mut event, "before")?;
            has_key(&before, &key)?;
            Ok(vec![Op::Delete(only(&before, &key))])
        }
        "t" => Ok(vec![Op::Truncate]),
        other => Err(format!("unknown change event op `{other}` (expected `c`, `r`, `u`, `d` or `t`)")),
    }
}

/// The key columns: configured, or the fields of the record key (`{"id": 1}`).
fn key_columns(key: &[String], record_key: Option<&[u8]>) -> Result<Vec<String>, String> {
    if !key.is_empty() {
        return Ok(key.to_vec());
    }
    match record_key.map(serde_json::from_slice::<Value>) {
        Some(Ok(Value::Object(m))) if !m.is_empty() => Ok(m.keys().cloned().collect()),
        _ => Err("no key columns: set `key`, or send records keyed by a JSON object of the key columns".into()),
    }
}

fn has_key(row: &Map<String, Value>, key: &[String]) -> Result<(), String> {
    match key.iter().find(|k| row.get(*k).is_none_or(Value::is_null)) {
        Some(k) => Err(format!("key column `{k}` is missing or null")),
        None => Ok(()),
    }
}

fn only(row: &Map<String, Value>, key: &[String]) -> Map<String, Value> {
    key.iter().filter_map(|k| row.get(k).map(|v| (k.clone(), v.clone()))).collect()
}

fn without_unavailable(mut row: Map<String, Value>) -> Map<String, Value> {
    row.retain(|_, v| v.as_str() != Some(UNAVAILABLE));
    row
}

/// The row under its column names: as it is, restricted to `Names`, or built
/// from `Map`'s dotted field paths.
fn mapped(object: Map<String, Value>, columns: Option<&Columns>) -> Map<String, Value> {
    match columns {
        None => object,
        Some(Columns::Names(names)) => {
            let mut object = object;
            names.iter().filter_map(|n| object.remove(n).map(|v| (n.clone(), v))).collect()
        }
        Some(Columns::Map(map)) => {
            let root = Value::Object(object);
            map.iter()
                .filter_map(|(column, path)| {
                    let mut v = &root;
                    for part in path.split('.') {
                        v = v.get(part)?;
                    }
                    Some((column.clone(), v.clone()))
                })
                .collect()
        }
    }
}

/// The key's values as one string, to find a row's earlier operations in a batch.
pub fn key_text(row: &Map<String, Value>, key: &[String]) -> String {
    let values: Vec<&Value> = key.iter().map(|k| row.get(k).unwrap_or(&Value::Null)).collect();
    serde_json::to_string(&values).unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cdc(event: Value) -> Result<Vec<Op>, String> {
        ops(event.to_string().as_bytes(), Some(br#"{"id":1}"#), Mode::Cdc, None, &[])
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn change_events_become_upserts_and_deletes() {
        assert_eq!(
            cdc(json!({"op": "c", "after": {"id": 1, "n": 2}})).unwrap(),
            [Op::Upsert(obj(json!({"id": 1, "n": 2})))]
        );
        assert_eq!(
            cdc(json!({"op": "u", "before": {"id": 1, "n": null}, "after": {"id": 1, "n": 3, "doc": UNAVAILABLE}}))
                .unwrap(),
            [Op::Upsert(obj(json!({"id": 1, "n": 3})))]
        );
        assert_eq!(
            cdc(json!({"op": "u", "before": {"id": 1, "n": null}, "after": {"id": 2, "n": 3}})).unwrap(),
            [Op::Delete(obj(json!({"id": 1}))), Op::Upsert(obj(json!({"id": 2, "n": 3})))]
        );
        assert_eq!(
            cdc(json!({"op": "d", "before": {"id": 1, "n": null}, "after": null})).unwrap(),
            [Op::Delete(obj(json!({"id": 1})))]
        );
        assert_eq!(cdc(json!({"op": "t"})).unwrap(), [Op::Truncate]);
        assert_eq!(
            cdc(json!({"op": "u", "before": {"id": 1, "n": null}, "after": {"id": 2, "n": 3, "doc": UNAVAILABLE}}))
                .unwrap(),
            [Op::Move { from: obj(json!({"id": 1})), row: obj(json!({"id": 2, "n": 3})) }]
        );
        assert!(cdc(json!({"op": "d", "before": null})).unwrap_err().contains("needs `before`"));
        assert!(cdc(json!({"op": "c", "after": {"n": 1}})).unwrap_err().contains("key column `id`"));
        assert!(cdc(json!({"after": {}})).unwrap_err().contains("no `op`"));
        assert_eq!(ops(b"", None, Mode::Cdc, None, &[]).unwrap(), []);
    }

    #[test]
    fn columns_are_mapped_by_name_or_path() {
        let value = br#"{"id": 7, "customer": {"name": "Ada"}, "extra": 1}"#;
        let names = Columns::Names(vec!["id".into(), "missing".into()]);
        assert_eq!(ops(value, None, Mode::Insert, Some(&names), &[]).unwrap(), [Op::Insert(obj(json!({"id": 7})))]);
        let map = Columns::Map([("cid".to_string(), "id".to_string()), ("who".into(), "customer.name".into())].into());
        assert_eq!(
            ops(value, None, Mode::Upsert, Some(&map), &["cid".into()]).unwrap(),
            [Op::Upsert(obj(json!({"cid": 7, "who": "Ada"})))]
        );
        assert!(ops(b"[1]", None, Mode::Insert, None, &[]).unwrap_err().contains("an array"));
        assert_eq!(key_text(&obj(json!({"a": 1, "b": "x"})), &["b".into(), "a".into()]), r#"["x",1]"#);
    }
}
