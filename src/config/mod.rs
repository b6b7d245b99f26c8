//! Pipeline files: the YAML contract, and loading it into a checked configuration
//! with a diagnostic for every problem.

mod diag;
mod editor;
mod interp;
mod kinds;
mod schema;
mod yaml;

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use flowgate_avro::RegistryConfig;
use flowgate_generate::Template;
use flowgate_sdk::{
    ByteSize, Configured, HumanDuration, PipelineView, RecordTemplate, SinkConnector, SourceConnector,
    TransformConnector,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::connectors::registry;

pub use diag::MessageFormat;
pub use editor::editor_schema;
pub use interp::{ExpandError, expand};

/// A pipeline file: one mapping with `name`, `source`, `sink`, and optionally
/// `transforms`, `errors` and `batch`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Names the pipeline in logs and metrics, and keys its stored positions;
    /// letters, digits, `-`, `_` and `.`.
    pub name: String,
    /// Where records come from; exactly one kind.
    pub source: SourceConfig,
    /// Steps applied to every record, in order.
    #[serde(default)]
    pub transforms: Vec<TransformConfig>,
    /// Where records go; exactly one kind.
    pub sink: SinkConfig,
    /// What happens to a record that a step refuses.
    #[serde(default)]
    pub errors: ErrorsConfig,
    /// How records are grouped on their way through.
    #[serde(default)]
    pub batch: BatchConfig,
    /// The Schema Registry for Avro (`avro` steps with a `subject`, Kafka
    /// `format: avro`). Without `url`, Flowgate serves its own registry inside
    /// the run (see `serve`).
    #[serde(default)]
    pub registry: Option<RegistryConfig>,
    /// When the pipeline counts as degraded for falling behind its source.
    #[serde(default)]
    pub health: HealthConfig,
    /// Copies of the transforms run side by side, each on a batch of its
    /// own (default: the machine's cores, at most 8). Batches go on to the
    /// sink in the order they were read, whatever the number.
    #[serde(default)]
    #[schemars(range(min = 1, max = 64))]
    pub workers: Option<usize>,
}

impl PipelineConfig {
    /// The transform workers in effect.
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8))).max(1)
    }
}

/// Bounds on how far behind its source a running pipeline may fall before
/// it counts as degraded (`/health`, `/health/ready`, the progress line);
/// none by default. Each applies where the source measures it.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Records behind (Kafka: the high watermark minus the committed
    /// offset, over the partitions held).
    pub max_lag_records: Option<u64>,
    /// Bytes behind (Postgres: the WAL the server keeps for the slot).
    pub max_lag_bytes: Option<ByteSize>,
    /// Time behind (Postgres: now minus the commit time of the last change read).
    pub max_lag_seconds: Option<HumanDuration>,
}

impl PipelineConfig {
    /// Whether anything in the pipeline talks to the registry.
    pub fn uses_registry(&self) -> bool {
        self.source.connector.uses_registry()
            || self.sink.connector.uses_registry()
            || self.errors.dead_letter.as_ref().is_some_and(|d| d.connector.uses_registry())
            || self.transforms.iter().any(|t| t.connector.uses_registry())
    }

    /// The registry settings in effect (the embedded registry by default).
    pub fn registry(&self) -> RegistryConfig {
        self.registry.clone().unwrap_or_default()
    }

    /// The pipeline as its connectors see it while their settings are checked.
    pub fn view(&self) -> PipelineView<'_> {
        PipelineView {
            name: &self.name,
            source: &self.source,
            transforms: self.transforms.iter().map(|t| &t.0).collect(),
            sink: &self.sink,
            dead_letter: self.errors.dead_letter.as_deref(),
        }
    }
}

/// A connector of one role, chosen by its kind from the [`registry`]: the
/// YAML `kind: {settings}` (or a bare `kind` when every setting has a default).
macro_rules! configured {
    ($name:ident, $connector:ident, $entries:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Debug)]
        #[repr(transparent)]
        pub struct $name(pub Configured<dyn $connector>);

        impl std::ops::Deref for $name {
            type Target = Configured<dyn $connector>;

            fn deref(&self) -> &Self::Target {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                kinds::deserialize(d, stringify!($name), registry().$entries()).map($name)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
                kinds::schema(generator, $doc, registry().$entries())
            }
        }
    };
}

configured!(SourceConfig, SourceConnector, sources, "Where records come from; exactly one kind.");
configured!(SinkConfig, SinkConnector, sinks, "Where records go; exactly one kind.");
configured!(TransformConfig, TransformConnector, transforms, "A step applied to every record.");

impl TransformConfig {
    /// The stage name used in logs, metrics and dead-letter records.
    pub fn stage(&self, index: usize) -> String {
        self.connector.stage_name(self.kind, index)
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorPolicy {
    /// Stop the pipeline; positions stay before the refused record.
    #[default]
    Fail,
    /// Log the record with the reason, count it, and go on.
    Skip,
    /// Write the record with the reason to the `dead_letter` sink, then go on.
    DeadLetter,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorsConfig {
    /// `fail` (default), `skip` or `dead_letter`.
    #[serde(default)]
    pub policy: ErrorPolicy,
    /// The sink for refused records, with `policy: dead_letter`. Each is written as
    /// a JSON envelope: the reason, the stage, and the original record.
    #[serde(default)]
    pub dead_letter: Option<SinkConfig>,
}

fn default_batch_size() -> usize {
    1000
}

fn default_linger() -> HumanDuration {
    HumanDuration::from_millis(100)
}

fn default_buffer() -> usize {
    4
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most records per batch (default 1000).
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub size: usize,
    /// Longest wait for a batch to fill once it has a record (default 100ms).
    #[serde(default = "default_linger")]
    pub linger: HumanDuration,
    /// Batches queued between two stages (default 4). With `size` it bounds the
    /// records a pipeline holds in memory: a slow sink slows the source.
    #[serde(default = "default_buffer")]
    #[schemars(range(min = 1, max = 1024))]
    pub buffer: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { size: default_batch_size(), linger: default_linger(), buffer: default_buffer() }
    }
}

/// One thing wrong with a pipeline file, with where it is in the text.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub span: Range<usize>,
    pub message: String,
    pub label: String,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(span: Range<usize>, message: impl Into<String>, label: impl Into<String>) -> Self {
        Diagnostic { span, message: message.into(), label: label.into(), help: None }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Every problem found in one file.
#[derive(Clone, Debug)]
pub struct ConfigError {
    pub path: String,
    pub text: Arc<String>,
    pub problems: Vec<Diagnostic>,
}

impl ConfigError {
    fn single(path: &str, text: &str, problem: Diagnostic) -> Self {
        ConfigError { path: path.to_string(), text: Arc::new(text.to_string()), problems: vec![problem] }
    }
}

/// The JSON Schema of pipeline files as the runtime checks them (after `${VAR}`
/// expansion); editors get [`editor_schema`].
pub fn json_schema() -> &'static serde_json::Value {
    static SCHEMA: OnceLock<serde_json::Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
        generator.into_root_schema_for::<PipelineConfig>().to_value()
    })
}

fn formats() -> &'static HashMap<&'static str, schema::FormatCheck> {
    static FORMATS: OnceLock<HashMap<&'static str, schema::FormatCheck>> = OnceLock::new();
    FORMATS.get_or_init(|| {
        let mut m: HashMap<&'static str, schema::FormatCheck> = HashMap::new();
        m.insert("duration", |s| s.parse::<HumanDuration>().map(drop));
        m.insert("byte-size", |s| s.parse::<ByteSize>().map(drop));
        m.insert("generate-template", |s| s.parse::<Template>().map(drop));
        m.insert("record-template", |s| s.parse::<RecordTemplate>().map(drop));
        m.insert("postgres-url", flowgate_postgres::config::check_url);
        m.insert("postgres-slot", flowgate_postgres::config::check_slot);
        m.insert("postgres-table", flowgate_postgres::config::check_table);
        m.insert("kafka-start", |s| {
            serde_json::from_value::<flowgate_kafka::config::Start>(serde_json::Value::String(s.to_string()))
                .map(drop)
                .map_err(|e| e.to_string())
        });
        m
    })
}

/// A check run on a configuration that has no problems of its own.
pub type Check<'a> = &'a dyn Fn(&PipelineConfig) -> Vec<flowgate_sdk::Problem>;

/// Reads and checks a pipeline file, with variables from the process environment.
pub fn load_file(path: &Path) -> Result<PipelineConfig, ConfigError> {
    load_file_with(path, &|_| Vec::new())
}

/// Like [`load_file`], then runs `check` and reports its problems at their values.
pub fn load_file_with(path: &Path, check: Check<'_>) -> Result<PipelineConfig, ConfigError> {
    let label = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::single(&label, "", Diagnostic::new(0..0, format!("cannot read {label}: {e}"), "here"))
    })?;
    load_str_with(&label, &text, &|name| std::env::var(name).ok(), check)
}

/// Checks pipeline text. `env` looks up variables for `${VAR}`.
pub fn load_str(path: &str, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<PipelineConfig, ConfigError> {
    load_str_with(path, text, env, &|_| Vec::new())
}

fn load_str_with(
    path: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    check: Check<'_>,
) -> Result<PipelineConfig, ConfigError> {
    let fail =
        |problems: Vec<Diagnostic>| ConfigError { path: path.to_string(), text: Arc::new(text.to_string()), problems };
    let mut tree = yaml::parse(text).map_err(|p| fail(vec![p]))?;
    let mut problems = Vec::new();
    interp::expand_tree(&mut tree, env, &mut problems);

    let root = json_schema();
    let defs = root.get("$defs").and_then(|d| d.as_object()).cloned().unwrap_or_default();
    let mut validator = schema::Validator::new(&defs, formats());
    let value = validator.check(&tree, root, &(0..0));
    problems.extend(validator.problems);
    let Some(value) = value.filter(|_| problems.is_empty()) else {
        problems.sort_by_key(|p| p.span.start);
        return Err(fail(problems));
    };

    let config: PipelineConfig = serde_path_to_error::deserialize(value).map_err(|e| {
        let path: Vec<String> = e
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        let span = tree.find(&path).map_or(0..0, |n| n.span.clone());
        fail(vec![Diagnostic::new(span, e.into_inner().to_string(), "here")])
    })?;

    let mut problems = Vec::new();
    let at = |path: &[&str]| {
        let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        tree.find(&path).map_or(0..0, |n| n.span.clone())
    };
    let name_ok = config.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && config.name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !name_ok {
        problems.push(
            Diagnostic::new(at(&["name"]), "invalid pipeline name", "not allowed in a name")
                .with_help("use letters, digits, `-`, `_` and `.`, starting with a letter or digit"),
        );
    }
    match (config.errors.policy, &config.errors.dead_letter) {
        (ErrorPolicy::DeadLetter, None) => problems.push(
            Diagnostic::new(
                at(&["errors", "policy"]),
                "`policy: dead_letter` needs a dead-letter sink",
                "no sink for it",
            )
            .with_help("add `dead_letter: { file: { path: dead-letters.jsonl } }` under `errors`"),
        ),
        (policy, Some(_)) if policy != ErrorPolicy::DeadLetter => problems.push(
            Diagnostic::new(at(&["errors", "dead_letter"]), "a dead-letter sink is set but not used", "unused")
                .with_help("set `policy: dead_letter`, or remove `dead_letter`"),
        ),
        _ => {}
    }
    if problems.is_empty() {
        for p in check(&config) {
            let span = tree.find(&p.at).map_or(0..0, |n| n.span.clone());
            let mut problem = Diagnostic::new(span, p.message, "here");
            problem.help = p.help;
            problems.push(problem);
        }
        // In the order of the file, whichever connector found them.
        problems.sort_by_key(|p| p.span.start);
    }
    if problems.is_empty() { Ok(config) } else { Err(fail(problems)) }
}

#[cfg(test)]
mod tests;
