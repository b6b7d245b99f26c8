//! Record templates: text with `${...}` fields filled from each record, for sink
//! settings that vary per record (a Kafka topic per source table, a key taken from
//! a JSON field, a table name).
//!
//! Fields: `${key}`, `${value.a.b}` (a field of the JSON value; `value.items.0`
//! indexes an array), `${header.NAME}`, `${meta.NAME}` (a metadata field of
//! the pipeline's source, such as `${meta.topic}` or `${meta.table}`; checked
//! against the fields the source declares when the file is). Upper-case
//! `${VAR}` is taken by environment variables when the file is loaded, so
//! fields are lower-case.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::{Metadata, Record};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Key,
    Value(Vec<String>),
    Header(String),
    Meta(String),
}

/// A parsed record template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordTemplate {
    source: String,
    parts: Vec<Part>,
}

impl RecordTemplate {
    /// The text it was written as.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The fixed text, when the template has no fields.
    pub fn fixed(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Text(t)] => Some(t),
            _ => None,
        }
    }

    /// The template as a wildcard pattern: its text kept, each field a `*`
    /// (`orders_${value.region}` is `orders_*`). What a record can make of it.
    pub fn pattern(&self) -> String {
        self.parts.iter().map(|p| if let Part::Text(t) = p { t.as_str() } else { "*" }).collect()
    }

    /// The `${meta.NAME}` fields it reads, by name.
    pub fn meta_fields(&self) -> impl Iterator<Item = &str> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Meta(field) => Some(field.as_str()),
            _ => None,
        })
    }

    /// Fills the template from `record`. `parsed` caches the record's value parsed
    /// as JSON, so several templates over one record parse it once.
    pub fn render(&self, record: &Record, parsed: &mut Option<Value>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Key => match &record.key {
                    Some(k) => out.push_str(std::str::from_utf8(k).map_err(|_| "the key is not UTF-8 text")?),
                    None => return Err("the record has no key".into()),
                },
                Part::Header(name) => {
                    let v = record.header(name).ok_or_else(|| format!("the record has no header `{name}`"))?;
                    out.push_str(std::str::from_utf8(v).map_err(|_| format!("header `{name}` is not UTF-8 text"))?);
                }
                Part::Meta(field) => push_meta(&mut out, field, &record.meta)?,
                Part::Value(path) => {
                    if parsed.is_none() {
                        let v = serde_json::from_slice(&record.value)
                            .map_err(|e| format!("the value is not JSON ({e}), so `${{value.…}}` cannot be filled"))?;
                        *parsed = Some(v);
                    }
                    let mut v = parsed.as_ref().expect("parsed above");
                    for seg in path {
                        v = match v {
                            Value::Object(m) => m.get(seg),
                            Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
                            _ => None,
                        }
                        .ok_or_else(|| format!("the value has no field `{}`", path.join(".")))?;
                    }
                    match v {
                        Value::String(s) => out.push_str(s),
                        Value::Number(n) => out.push_str(&n.to_string()),
                        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                        Value::Null => return Err(format!("field `{}` is null", path.join("."))),
                        _ => return Err(format!("field `{}` is not a string, number or boolean", path.join("."))),
                    }
                }
            }
        }
        Ok(out)
    }
}

fn push_meta(out: &mut String, field: &str, meta: &Metadata) -> Result<(), String> {
    match meta.get(field) {
        Some(v) => {
            use std::fmt::Write;
            let _ = write!(out, "{v}"); // Writing to a String cannot fail.
            Ok(())
        }
        None => Err(format!("the record's source has no `meta.{field}`")),
    }
}

const FIELDS_HELP: &str = "fields are `key`, `value.FIELD`, `header.NAME` and `meta.NAME` (a field the source sets)";

/// A metadata name as sources declare them: lower-case letters, digits and `_`.
fn is_meta_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl FromStr for RecordTemplate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            text.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or_else(|| format!("`${{` without a closing `}}` in `{s}`"))?;
            let field = after[..end].trim();
            let part = match field.split_once('.') {
                None if field == "key" => Part::Key,
                Some(("value", path)) if !path.is_empty() => Part::Value(path.split('.').map(str::to_string).collect()),
                Some(("header", name)) if !name.is_empty() => Part::Header(name.to_string()),
                Some(("meta", name)) if is_meta_name(name) => Part::Meta(name.to_string()),
                _ => return Err(format!("unknown field `${{{field}}}`; {FIELDS_HELP}")),
            };
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(part);
            rest = &after[end + 1..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(RecordTemplate { source: s.to_string(), parts })
    }
}

impl fmt::Display for RecordTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for RecordTemplate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for RecordTemplate {
    fn schema_name() -> Cow<'static, str> {
        "RecordTemplate".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "format": "record-template",
            "description": "Text with `${...}` fields from each record: `${key}`, `${value.FIELD}`, \
                            `${header.NAME}`, `${meta.topic}`, `${meta.table}`, ...",
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn rec() -> Record {
        let mut r = Record::from_value(r#"{"region":"eu","id":7,"items":[{"sku":"a"}],"gone":null}"#);
        r.key = Some(Bytes::from_static(b"k1"));
        r.set_header("tenant", "acme");
        r.meta = Metadata::default()
            .with("schema", std::sync::Arc::from("public"))
            .with("table", std::sync::Arc::from("orders"))
            .with("lsn", 1i64);
        r
    }

    fn render(t: &str) -> Result<String, String> {
        t.parse::<RecordTemplate>()?.render(&rec(), &mut None)
    }

    #[test]
    fn fills_every_kind_of_field() {
        assert_eq!(render("orders.${meta.table}").unwrap(), "orders.orders");
        assert_eq!(render("${meta.schema}.${meta.table}-${value.region}").unwrap(), "public.orders-eu");
        assert_eq!(render("${value.id}/${key}/${header.tenant}").unwrap(), "7/k1/acme");
        assert_eq!(render("${value.items.0.sku}").unwrap(), "a");
        assert_eq!("plain".parse::<RecordTemplate>().unwrap().fixed(), Some("plain"));
        assert_eq!("a${key}".parse::<RecordTemplate>().unwrap().fixed(), None);
        assert_eq!("orders_${value.region}".parse::<RecordTemplate>().unwrap().pattern(), "orders_*");
        assert_eq!("${meta.schema}.${meta.table}".parse::<RecordTemplate>().unwrap().pattern(), "*.*");
    }

    #[test]
    fn says_what_is_missing() {
        assert!(render("${value.nope}").unwrap_err().contains("no field `nope`"));
        assert!(render("${value.gone}").unwrap_err().contains("is null"));
        assert!(render("${value.items}").unwrap_err().contains("not a string"));
        assert!(render("${meta.topic}").unwrap_err().contains("meta.topic"));
        assert!(render("${header.x}").unwrap_err().contains("no header `x`"));
        let not_json = Record::from_value("plain");
        let t: RecordTemplate = "${value.a}".parse().unwrap();
        assert!(t.render(&not_json, &mut None).unwrap_err().contains("not JSON"));
    }

    #[test]
    fn refuses_unknown_fields_and_open_braces() {
        assert!("${values.a}".parse::<RecordTemplate>().unwrap_err().contains("unknown field"));
        // Any source's field parses; whether the pipeline's source sets it is
        // checked with the pipeline (`Stage::template_problem`).
        assert_eq!(render("${meta.lsn}").unwrap(), "1");
        assert!("${meta.Topic}".parse::<RecordTemplate>().unwrap_err().contains("unknown field"));
        assert!("${meta.}".parse::<RecordTemplate>().unwrap_err().contains("unknown field"));
        assert!("a.${key".parse::<RecordTemplate>().unwrap_err().contains("closing"));
    }
}
