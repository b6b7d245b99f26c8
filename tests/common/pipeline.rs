//! Pipeline files for the tests, built as data and written as YAML, so that a
//! test states what its pipeline is and this module alone knows the file's shape:
//!
//! ```ignore
//! Pipeline::new("p").source(source::file("in.jsonl")).sink(sink::null()).write(dir, "p.yaml");
//! ```
//!
//! writes
//!
//! ```yaml
//! name: p
//! source:
//!   file:
//!     path: in.jsonl
//! sink:
//!   'null': {}
//! ```
//!
//! Settings are JSON values (`serde_json::json!`). Text such as `${seq}` or
//! `${value.id}` is written as it is, quoted where YAML needs it, and so is text
//! that YAML would read as something else (`'6000'`, `'null'`).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use serde_yaml::{Mapping, Value as Yaml};

/// A connector in any role: `kind: {settings}`, or the bare `kind` (every
/// setting at its default, as in `sink: stdout`).
#[derive(Clone, Debug)]
pub struct Part {
    kind: &'static str,
    settings: Option<Value>,
}

impl Part {
    /// `kind` with `settings`, a JSON object.
    pub fn new(kind: &'static str, settings: Value) -> Part {
        assert!(settings.is_object(), "the settings of `{kind}` must be an object, not {settings}");
        Part { kind, settings: Some(settings) }
    }

    /// The bare `kind`.
    pub fn bare(kind: &'static str) -> Part {
        Part { kind, settings: None }
    }

    /// With one more setting, or with `key` set to `value` instead.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Part {
        let settings = self.settings.get_or_insert_with(|| json!({}));
        settings.as_object_mut().expect("settings are an object").insert(key.to_string(), value.into());
        self
    }

    /// With every setting of `extra`, a JSON object (possibly empty).
    pub fn extend(self, extra: Value) -> Part {
        match extra {
            Value::Object(settings) => settings.into_iter().fold(self, |part, (key, value)| part.with(&key, value)),
            other => panic!("extra settings of `{}` must be an object, not {other}", self.kind),
        }
    }

    fn to_yaml(&self) -> Yaml {
        match &self.settings {
            None => Yaml::from(self.kind),
            Some(settings) => {
                let mut part = Mapping::new();
                part.insert(Yaml::from(self.kind), yaml(settings));
                Yaml::Mapping(part)
            }
        }
    }
}

/// A pipeline file: `name`, `source`, `transforms`, `sink`, `errors`, `batch`
/// and `registry`, in that order, the optional ones only when set.
#[derive(Clone, Debug)]
pub struct Pipeline {
    name: String,
    source: Option<Part>,
    transforms: Vec<Part>,
    sink: Option<Part>,
    policy: Option<String>,
    dead_letter: Option<Part>,
    batch: Option<Value>,
    registry: Option<Value>,
    health: Option<Value>,
}

impl Pipeline {
    pub fn new(name: &str) -> Pipeline {
        Pipeline {
            name: name.to_string(),
            source: None,
            transforms: Vec::new(),
            sink: None,
            policy: None,
            dead_letter: None,
            batch: None,
            registry: None,
            health: None,
        }
    }

    /// The source (replacing one set before).
    pub fn source(mut self, source: Part) -> Pipeline {
        self.source = Some(source);
        self
    }

    /// One more transform, after those added before.
    pub fn transform(mut self, transform: Part) -> Pipeline {
        self.transforms.push(transform);
        self
    }

    /// More transforms, in order, after those added before.
    pub fn transforms(mut self, transforms: impl IntoIterator<Item = Part>) -> Pipeline {
        self.transforms.extend(transforms);
        self
    }

    /// The sink (replacing one set before).
    pub fn sink(mut self, sink: Part) -> Pipeline {
        self.sink = Some(sink);
        self
    }

    /// `errors: {policy}`: `fail`, `skip` or `dead_letter`.
    pub fn policy(mut self, policy: &str) -> Pipeline {
        self.policy = Some(policy.to_string());
        self
    }

    /// `errors: {policy: dead_letter, dead_letter: sink}`.
    pub fn dead_letter(mut self, sink: Part) -> Pipeline {
        self.policy = Some("dead_letter".to_string());
        self.dead_letter = Some(sink);
        self
    }

    /// The `batch` settings, such as `json!({"size": 500, "linger": "10ms"})`.
    pub fn batch(mut self, batch: Value) -> Pipeline {
        self.batch = Some(batch);
        self
    }

    /// The `registry` settings, such as `json!({"url": registry.url()})`.
    pub fn registry(mut self, registry: Value) -> Pipeline {
        self.registry = Some(registry);
        self
    }

    /// The `health` settings, such as `json!({"max_lag_records": 100})`.
    pub fn health(mut self, health: Value) -> Pipeline {
        self.health = Some(health);
        self
    }

    /// The file's text.
    pub fn yaml(&self) -> String {
        let mut doc = Mapping::new();
        doc.insert("name".into(), Yaml::String(self.name.clone()));
        let source = self.source.as_ref().unwrap_or_else(|| panic!("pipeline {} has no source", self.name));
        doc.insert("source".into(), source.to_yaml());
        if !self.transforms.is_empty() {
            doc.insert("transforms".into(), Yaml::Sequence(self.transforms.iter().map(Part::to_yaml).collect()));
        }
        let sink = self.sink.as_ref().unwrap_or_else(|| panic!("pipeline {} has no sink", self.name));
        doc.insert("sink".into(), sink.to_yaml());
        if self.policy.is_some() || self.dead_letter.is_some() {
            let mut errors = Mapping::new();
            if let Some(policy) = &self.policy {
                errors.insert("policy".into(), Yaml::String(policy.clone()));
            }
            if let Some(dead_letter) = &self.dead_letter {
                errors.insert("dead_letter".into(), dead_letter.to_yaml());
            }
            doc.insert("errors".into(), Yaml::Mapping(errors));
        }
        if let Some(batch) = &self.batch {
            doc.insert("batch".into(), yaml(batch));
        }
        if let Some(registry) = &self.registry {
            doc.insert("registry".into(), yaml(registry));
        }
        if let Some(health) = &self.health {
            doc.insert("health".into(), yaml(health));
        }
        serde_yaml::to_string(&Yaml::Mapping(doc)).expect("a pipeline serializes")
    }

    /// Writes the file as `dir/file`; its path.
    pub fn write(&self, dir: &Path, file: &str) -> PathBuf {
        super::write_file(dir, file, &self.yaml())
    }
}

/// A JSON value as YAML, its keys in the same order.
fn yaml(value: &Value) -> Yaml {
    match value {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Bool(*b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Yaml::from(u)
            } else if let Some(i) = n.as_i64() {
                Yaml::from(i)
            } else {
                Yaml::from(n.as_f64().expect("a JSON number is an f64"))
            }
        }
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Sequence(items.iter().map(yaml).collect()),
        Value::Object(map) => Yaml::Mapping(map.iter().map(|(k, v)| (Yaml::String(k.clone()), yaml(v))).collect()),
    }
}

/// A path as the text of a setting.
fn text(path: impl AsRef<Path>) -> String {
    path.as_ref().display().to_string()
}

/// Sources; further settings with [`Part::with`].
pub mod source {
    use std::fmt::Display;
    use std::path::Path;

    use serde_json::json;

    use super::{Part, text};

    /// `file: {path}`.
    pub fn file(path: impl AsRef<Path>) -> Part {
        Part::new("file", json!({"path": text(path)}))
    }

    /// The bare `stdin`.
    pub fn stdin() -> Part {
        Part::bare("stdin")
    }

    /// `generate: {template}`, endless unless given a `count`.
    pub fn generate(template: &str) -> Part {
        Part::new("generate", json!({"template": template}))
    }

    /// `kafka: {brokers, topics, group}`.
    pub fn kafka(brokers: &str, topics: &[&str], group: &str) -> Part {
        Part::new("kafka", json!({"brokers": brokers, "topics": topics, "group": group}))
    }

    /// [`kafka`] with the tests' short group timeouts (`session_timeout: 2s`,
    /// `max.poll.interval.ms: "6000"`), so that joins and rebalances are quick.
    pub fn kafka_quick_group(brokers: &str, topics: &[&str], group: &str) -> Part {
        kafka(brokers, topics, group)
            .with("session_timeout", "2s")
            .with("properties", json!({"max.poll.interval.ms": "6000"}))
    }

    /// `postgres_cdc: {url, tables}`.
    pub fn postgres_cdc(url: impl Display, tables: &[&str]) -> Part {
        Part::new("postgres_cdc", json!({"url": url.to_string(), "tables": tables}))
    }
}

/// Transforms; further settings with [`Part::with`].
pub mod transform {
    use std::path::Path;

    use serde_json::{Value, json};

    use super::{Part, text};

    /// `avro: {schema}`, such as `json!({"subject": "s-value"})`.
    pub fn avro(schema: Value) -> Part {
        Part::new("avro", json!({"schema": schema}))
    }

    /// `wasm: {path}`.
    pub fn wasm(path: impl AsRef<Path>) -> Part {
        Part::new("wasm", json!({"path": text(path)}))
    }
}

/// Sinks; further settings with [`Part::with`].
pub mod sink {
    use std::fmt::Display;
    use std::path::Path;

    use serde_json::json;

    use super::{Part, text};

    /// `file: {path}`.
    pub fn file(path: impl AsRef<Path>) -> Part {
        Part::new("file", json!({"path": text(path)}))
    }

    /// The bare `stdout`.
    pub fn stdout() -> Part {
        Part::bare("stdout")
    }

    /// `'null': {}`, which takes every record and keeps none.
    pub fn null() -> Part {
        Part::new("null", json!({}))
    }

    /// `kafka: {brokers, topic}`.
    pub fn kafka(brokers: &str, topic: &str) -> Part {
        Part::new("kafka", json!({"brokers": brokers, "topic": topic}))
    }

    /// `postgres: {url, table}`.
    pub fn postgres(url: impl Display, table: &str) -> Part {
        Part::new("postgres", json!({"url": url.to_string(), "table": table}))
    }

    /// `mysql: {url, table}`.
    pub fn mysql(url: impl Display, table: &str) -> Part {
        Part::new("mysql", json!({"url": url.to_string(), "table": table}))
    }

    /// `sqlite: {url, table}`; the url may be a path.
    pub fn sqlite(url: impl Display, table: &str) -> Part {
        Part::new("sqlite", json!({"url": url.to_string(), "table": table}))
    }
}
