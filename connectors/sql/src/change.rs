//! Records to row operations: a new row (insert), the row with a key (upsert,
//! and `c`/`r`/`u` change events), a key to delete, or an emptied table.

use std::borrow::Cow;

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
    /// A change event's new row (`c`, or `r` from a snapshot): an upsert whose
    /// key is most likely not in the table yet, so it may go straight in.
    Create(Map<String, Value>),
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
            Op::Insert(r) | Op::Upsert(r) | Op::Create(r) | Op::Delete(r) | Op::Move { row: r, .. } => Some(r),
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
    // Inserts and upserts restricted to named columns build only those.
    let only = match (mode, columns) {
        (Mode::Insert | Mode::Upsert, Some(Columns::Names(names))) => Some(names.as_slice()),
        _ => None,
    };
    let object = object_of(value, only)?;
    let row = |object| if only.is_some() { object } else { mapped(object, columns) };
    match mode {
        Mode::Insert => Ok(vec![Op::Insert(row(object))]),
        Mode::Upsert => {
            let row = row(object);
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
            Ok(vec![Op::Create(without_unavailable(after))])
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

/// A field name, borrowed from the input unless it holds escapes (serde's
/// own `Cow<str>` always copies).
pub(crate) struct FieldName;

impl<'de> serde::de::DeserializeSeed<'de> for FieldName {
    type Value = Cow<'de, str>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FieldName {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a field name")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_string()))
    }
}

/// A record's value as an object, with only the fields in `only` when given:
/// the others are checked as JSON syntax and skipped rather than built, so a
/// row costs what its columns hold (a skipped number beyond `f64` or a lone
/// surrogate in a skipped string passes: neither is written). `Err` names
/// what else it was.
fn object_of(value: &[u8], only: Option<&[String]>) -> Result<Map<String, Value>, String> {
    use serde::Deserializer as _;
    use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};

    /// The object, or what the value is instead.
    struct Object<'a>(Option<&'a [String]>);
    type Parsed = Result<Map<String, Value>, &'static str>;
    impl<'de> Visitor<'de> for Object<'_> {
        type Value = Parsed;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed, A::Error> {
            let mut row = Map::new();
            while let Some(name) = map.next_key_seed(FieldName)? {
                if self.0.is_none_or(|only| only.iter().any(|n| *n == name)) {
                    // A repeated field keeps its last value, as a parsed `Value` does.
                    row.insert(name.into_owned(), map.next_value::<Value>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(Ok(row))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parsed, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Err("an array"))
        }
        fn visit_unit<E>(self) -> Result<Parsed, E> {
            Ok(Err("null"))
        }
        fn visit_bool<E>(self, _: bool) -> Result<Parsed, E> {
            Ok(Err("a boolean"))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Parsed, E> {
            Ok(Err("a number"))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Parsed, E> {
            Ok(Err("a number"))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Parsed, E> {
            Ok(Err("a number"))
        }
        fn visit_str<E>(self, _: &str) -> Result<Parsed, E> {
            Ok(Err("a string"))
        }
    }

    // Checked whole (skipped strings are not checked on their own), which
    // spares the parser checking the strings it keeps.
    let text = std::str::from_utf8(value).map_err(|e| format!("value is not JSON: not UTF-8 ({e})"))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = de.deserialize_any(Object(only)).and_then(|p| de.end().map(|()| p));
    match parsed {
        Ok(Ok(row)) => Ok(row),
        Ok(Err(kind)) => Err(format!("value is not a JSON object but {kind}")),
        Err(e) => Err(format!("value is not JSON: {e}")),
    }
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
            [Op::Create(obj(json!({"id": 1, "n": 2})))]
        );
        assert_eq!(
            cdc(json!({"op": "r", "after": {"id": 1, "n": 2}})).unwrap(),
            [Op::Create(obj(json!({"id": 1, "n": 2})))]
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
    fn only_the_named_columns_are_built_and_the_rest_is_still_checked() {
        let names = Columns::Names(vec!["id".into(), "idx".into()]);
        let insert = |v: &str| ops(v.as_bytes(), None, Mode::Insert, Some(&names), &[]);
        assert_eq!(
            insert(r#"{"id":1,"skip":{"deep":[1,"\u00e9",null]},"i\u0064x":2,"id":3}"#).unwrap(),
            [Op::Insert(obj(json!({"id": 3, "idx": 2})))]
        );
        for (value, kind) in
            [("[1]", "an array"), ("\"s\"", "a string"), ("-1.5", "a number"), ("null", "null"), ("true", "a boolean")]
        {
            assert_eq!(insert(value).unwrap_err(), format!("value is not a JSON object but {kind}"));
            assert_eq!(
                ops(value.as_bytes(), None, Mode::Insert, None, &[]).unwrap_err(),
                format!("value is not a JSON object but {kind}")
            );
        }
        for bad in [r#"{"id":1,"skip":[1,}"#, r#"{"id":1} x"#, r#"{"id":1,"skip":"\q"}"#, ""] {
            assert!(insert(bad).unwrap_err().starts_with("value is not JSON: "), "{bad}");
        }
        let not_utf8 = ops(b"{\"id\":1,\"skip\":\"\xff\"}", None, Mode::Insert, Some(&names), &[]);
        assert!(not_utf8.unwrap_err().starts_with("value is not JSON: not UTF-8"));
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
