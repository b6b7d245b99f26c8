//! The JSON Schema offered to editors and other validators (`flowgate
//! schema`): the runtime's schema, rewritten to say what a standard JSON
//! Schema 2020-12 validator can check of a file *before* Flowgate reads it.
//!
//! The runtime's own schema stays as it is: its checker (`schema.rs`) expands
//! `${VAR}` first, reads bare kinds, and checks Flowgate's named formats with
//! the parsers themselves. An editor does none of that, so here:
//! - `${VAR}` / `${VAR:-default}` is accepted wherever a scalar goes;
//! - Flowgate's own formats (`duration` in humantime's syntax, `byte-size`,
//!   templates...) are dropped: the connectors give patterns beside them, and
//!   JSON Schema's standard `duration` means ISO 8601;
//! - a bare kind (`sink: stdout`, `sink: null`) is accepted where every
//!   setting of that kind has a default, as is an empty mapping written `key:`;
//! - union types (`["string", "integer"]`) are split into `anyOf`, which
//!   strict validators (ajv) ask for.

use serde_json::{Map, Value, json};

/// `format`s that mean the same to every 2020-12 validator; any other one is
/// Flowgate's (or a `schemars` type hint such as `uint64`) and is dropped.
const STANDARD_FORMATS: &[&str] =
    &["date-time", "date", "time", "email", "hostname", "ipv4", "ipv6", "uri", "uri-reference", "uuid", "regex"];

const ENV_VAR: &str = "#/$defs/EnvVar";

/// The editors' schema, derived from [`super::json_schema`].
pub fn editor_schema() -> Value {
    let mut schema = super::json_schema().clone();
    let kinds = ["SourceConfig", "SinkConfig", "TransformConfig"];
    let bare: Vec<(&str, Vec<String>)> = kinds.iter().map(|k| (*k, bare_kinds(&schema, k))).collect();
    walk(&mut schema, false);
    let Some(defs) = schema.get_mut("$defs").and_then(Value::as_object_mut) else { return schema };
    defs.insert(
        "EnvVar".into(),
        json!({
            "type": "string",
            "pattern": r"\$\{[A-Z_][A-Z0-9_]*(:-[^}]*)?\}",
            "description": "`${VAR}` or `${VAR:-default}`, replaced from the environment before the file is checked.",
        }),
    );
    for (name, bare) in bare {
        let Some(alternatives) = defs.get_mut(name).and_then(|d| d.get_mut("oneOf")).and_then(Value::as_array_mut)
        else {
            continue;
        };
        if bare.is_empty() {
            continue;
        }
        if bare.iter().any(|k| k == "null") {
            // YAML's `null` after `sink:` names the null sink.
            alternatives.push(json!({"type": "null", "description": "The `null` sink."}));
        }
        alternatives.push(json!({
            "type": "string",
            "enum": bare,
            "description": "A kind with all its settings at their defaults.",
        }));
    }
    schema
}

/// The kinds of `name`'s alternatives whose settings all have defaults.
fn bare_kinds(schema: &Value, name: &str) -> Vec<String> {
    let defs = &schema["$defs"];
    let Some(alternatives) = defs[name]["oneOf"].as_array() else { return Vec::new() };
    alternatives
        .iter()
        .filter_map(|alt| alt["properties"].as_object()?.iter().next())
        .filter(|(_, content)| {
            let target = match content["$ref"].as_str().and_then(|r| r.strip_prefix("#/$defs/")) {
                Some(def) => &defs[def],
                None => content,
            };
            target["required"].as_array().is_none_or(Vec::is_empty)
        })
        .map(|(kind, _)| kind.clone())
        .collect()
}

/// Whether `o` is a choice between constants (a unit-only enum).
fn const_choice(o: &Map<String, Value>) -> bool {
    let alternatives = o.get("oneOf").or_else(|| o.get("anyOf")).and_then(Value::as_array);
    alternatives.is_some_and(|a| !a.is_empty() && a.iter().all(|x| x.get("const").is_some() || x.get("enum").is_some()))
}

/// A leaf that the text of an unexpanded `${VAR}` would not satisfy.
fn needs_env(o: &Map<String, Value>) -> bool {
    if o.contains_key("enum") || o.contains_key("const") || o.contains_key("pattern") || const_choice(o) {
        return true;
    }
    let types: Vec<&str> = match o.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return false,
    };
    !types.contains(&"string") && types.iter().any(|t| matches!(*t, "integer" | "number" | "boolean"))
}

/// Splits `type: [a, b, ...]` into `anyOf`, each with the keywords for its type.
fn split_union(o: &mut Map<String, Value>) {
    let Some(Value::Array(types)) = o.get("type") else { return };
    let types: Vec<String> = types.iter().filter_map(Value::as_str).map(String::from).collect();
    if types.len() < 2 || types.iter().any(|t| t == "object" || t == "null") {
        return; // `["object", "null"]` and `[x, "null"]` are well understood.
    }
    o.remove("type");
    let string_keys = ["pattern", "minLength", "maxLength"];
    let number_keys = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"];
    let alternatives: Vec<Value> = types
        .iter()
        .map(|t| {
            let mut alt = Map::new();
            alt.insert("type".into(), Value::String(t.clone()));
            let keys: &[&str] = match t.as_str() {
                "string" => &string_keys,
                "integer" | "number" => &number_keys,
                _ => &[],
            };
            for k in keys {
                if let Some(v) = o.get(*k) {
                    alt.insert((*k).into(), v.clone());
                }
            }
            Value::Object(alt)
        })
        .collect();
    for k in string_keys.iter().chain(&number_keys) {
        o.remove(*k);
    }
    o.insert("anyOf".into(), Value::Array(alternatives));
}

fn walk(value: &mut Value, in_choice: bool) {
    let Value::Object(o) = value else { return };
    if let Some(Value::String(f)) = o.get("format")
        && !STANDARD_FORMATS.contains(&f.as_str())
    {
        o.remove("format");
    }
    for key in ["properties", "$defs"] {
        if let Some(Value::Object(children)) = o.get_mut(key) {
            children.values_mut().for_each(|c| walk(c, false));
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child @ Value::Object(_)) = o.get_mut(key) {
            walk(child, false);
        }
    }
    let choice = const_choice(o);
    for key in ["oneOf", "anyOf"] {
        if let Some(Value::Array(alternatives)) = o.get_mut(key) {
            alternatives.iter_mut().for_each(|a| walk(a, choice));
        }
    }
    // Flowgate reads `key:` (YAML null) as `{}` where every setting has a default.
    if o.get("type").and_then(Value::as_str) == Some("object") && o.get("required").is_none() {
        o.insert("type".into(), json!(["object", "null"]));
    }
    let wrap = !in_choice && !o.contains_key("$ref") && needs_env(o);
    split_union(o);
    if wrap {
        let mut outer = Map::new();
        for key in ["description", "default", "title"] {
            if let Some(v) = o.remove(key) {
                outer.insert(key.into(), v);
            }
        }
        let leaf = Value::Object(std::mem::take(o));
        outer.insert("anyOf".into(), json!([leaf, {"$ref": ENV_VAR}]));
        *o = outer;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_take_variables_and_flowgate_formats_become_patterns() {
        let s = editor_schema();
        let text = s.to_string();
        assert!(!text.contains("\"format\":\"duration\""), "ISO 8601 `duration` would refuse `50ms`");
        let batch = &s["$defs"]["BatchConfig"]["properties"];
        assert_eq!(batch["size"]["anyOf"][1]["$ref"], ENV_VAR);
        let duration = &s["$defs"]["Duration"];
        assert!(duration["anyOf"][0]["pattern"].is_string(), "{duration}");
    }

    #[test]
    fn bare_kinds_are_listed() {
        let s = editor_schema();
        let sinks = s["$defs"]["SinkConfig"]["oneOf"].as_array().unwrap();
        let bare = sinks.iter().find(|a| a.get("enum").is_some()).expect("an alternative for bare kinds");
        let names: Vec<&str> = bare["enum"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(names.contains(&"stdout") && names.contains(&"null") && !names.contains(&"kafka"), "{names:?}");
        assert!(sinks.iter().any(|a| a["type"] == "null"));
    }
}
