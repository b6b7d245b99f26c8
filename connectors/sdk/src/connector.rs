//! The connector interface: what a connector crate implements so that the
//! runtime can check, describe and open it without knowing it.
//!
//! A connector's configuration type *is* the connector: it implements
//! [`SourceConnector`], [`SinkConnector`] or [`TransformConnector`] and is
//! registered under its kind name in a [`Registry`] by the crate's `register`
//! function. The runtime builds the JSON Schema of pipeline files from the
//! registry, deserializes each `source:`/`sink:`/`transforms:` entry through it,
//! and then only talks to the traits: static problems, the connected check of
//! `validate --check`, and `open`. (The shape follows Vector's `SinkConfig::build`
//! and Arroyo's single connector map.)

use std::any::Any;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;

use crate::{ConnectorError, LateRejects, Position, Sink, Source, StateStore, Transform, ValueFormat};

/// One thing wrong with a connector's settings, located by the path of the
/// value it concerns, relative to the connector's own settings (`["topic"]`,
/// `["avro", "schema", "file"]`; empty for the settings as a whole). The
/// runtime prefixes the stage's path and reports it at that place in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub at: Vec<String>,
    pub message: String,
    pub help: Option<String>,
}

impl Problem {
    pub fn new<S: AsRef<str>>(at: impl IntoIterator<Item = S>, message: impl Into<String>) -> Self {
        Problem { at: at.into_iter().map(|s| s.as_ref().to_string()).collect(), message: message.into(), help: None }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// The same problem, located below `prefix`.
    pub fn under<S: AsRef<str>>(mut self, prefix: impl IntoIterator<Item = S>) -> Self {
        let mut at: Vec<String> = prefix.into_iter().map(|s| s.as_ref().to_string()).collect();
        at.append(&mut self.at);
        self.at = at;
        self
    }
}

/// The place a connector fills in its pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Source,
    Transform(usize),
    Sink,
    /// The sink of `errors.dead_letter`: it receives JSON envelopes of refused
    /// records, and must be durable when `write` returns.
    DeadLetter,
}

/// A configured connector together with the kind it was registered under.
pub struct Configured<T: ?Sized> {
    pub kind: &'static str,
    pub connector: Arc<T>,
}

impl<T: ?Sized> Clone for Configured<T> {
    fn clone(&self) -> Self {
        Configured { kind: self.kind, connector: Arc::clone(&self.connector) }
    }
}

impl<T: ?Sized + Debug> Debug for Configured<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entry(&self.kind, &self.connector).finish()
    }
}

impl<T: ?Sized + Any> Configured<T> {
    /// The connector's configuration as its own type, when it is one.
    pub fn downcast<C: Any>(&self) -> Option<&C>
    where
        T: AsAny,
    {
        // Through the trait object: the `Arc` is `Any` itself.
        AsAny::as_any(&*self.connector).downcast_ref()
    }
}

/// Access to a connector's concrete type (for the Kafka source and sink that
/// pair up for exactly-once delivery, and for tests).
pub trait AsAny {
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any> AsAny for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The whole pipeline, as a connector sees it while its settings are checked:
/// what it is paired with matters to some (an exactly-once sink needs a source
/// it can commit through; an Avro sink needs a schema from somewhere).
pub struct PipelineView<'a> {
    pub name: &'a str,
    pub source: &'a Configured<dyn SourceConnector>,
    pub transforms: Vec<&'a Configured<dyn TransformConnector>>,
    pub sink: &'a Configured<dyn SinkConnector>,
    pub dead_letter: Option<&'a Configured<dyn SinkConnector>>,
}

impl PipelineView<'_> {
    /// Whether records reach the sink with a schema attached (by the source or a step).
    pub fn records_carry_schema(&self) -> bool {
        self.source.connector.carries_schema() || self.transforms.iter().any(|t| t.connector.sets_schema())
    }

    /// The schema file of the first step that validates against one, if any.
    pub fn step_schema_file(&self) -> Option<std::path::PathBuf> {
        self.transforms.iter().find_map(|t| t.connector.schema_file())
    }
}

/// The stage whose settings are being checked, within its pipeline.
pub struct Stage<'a> {
    pub kind: &'static str,
    pub role: Role,
    pub pipeline: &'a PipelineView<'a>,
}

impl Stage<'_> {
    /// A problem at `at` when `template` reads `${meta.NAME}` fields that the
    /// pipeline's source does not set: the template could fill for no record.
    /// (Dead letters keep the metadata of the record they wrap.)
    pub fn template_problem<S: AsRef<str>>(
        &self,
        at: impl IntoIterator<Item = S>,
        template: &crate::RecordTemplate,
    ) -> Option<Problem> {
        let source = self.pipeline.source;
        let declared = source.connector.metadata();
        let first = template.meta_fields().find(|f| !declared.contains(f))?;
        let has = match declared {
            [] => format!("the `{}` source sets no `meta` fields", source.kind),
            fields => format!(
                "the `{}` source sets {}",
                source.kind,
                fields.iter().map(|f| format!("`meta.{f}`")).collect::<Vec<_>>().join(", ")
            ),
        };
        Some(
            Problem::new(at, format!("`${{meta.{first}}}` can never be filled: {has}"))
                .with_help("use a field the source sets, a `value.FIELD` or a `header.NAME`"),
        )
    }
}

/// Things the stages of one pipeline share, by type: the schema registry
/// client, or a handle one connector leaves for its partner (the Kafka sink's
/// exactly-once pairing with the Kafka source).
#[derive(Clone, Default)]
pub struct Resources(Arc<Mutex<http::Extensions>>);

impl Resources {
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get::<T>().cloned()
    }

    pub fn insert<T: Clone + Send + Sync + 'static>(&self, value: T) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(value);
    }
}

impl Debug for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resources")
    }
}

/// Everything a connector is opened (or checked) with.
#[derive(Clone, Debug)]
pub struct OpenContext {
    pub pipeline: Arc<str>,
    /// The kind the connector was registered under (`postgres`, `sqlite`...).
    pub kind: &'static str,
    pub role: Role,
    /// Largest number of records to put in one batch.
    pub batch_size: usize,
    /// How long to wait for a batch to fill once it has its first record.
    pub linger: Duration,
    pub state: StateStore,
    /// Where a source resumes, when the sink stored the position with its data
    /// (effectively-once): it overrides the source's own.
    pub resume: Option<Position>,
    /// Where an asynchronous sink sends records that fail after `write`
    /// returned; `None` for a dead-letter sink, which must finish in `write`.
    pub late: Option<LateRejects>,
    pub resources: Resources,
}

impl OpenContext {
    /// A context with the default batch settings (1000 records, 100 ms), no
    /// resume position, no late-reject channel and nothing shared.
    pub fn new(pipeline: impl Into<Arc<str>>, kind: &'static str, role: Role, state: StateStore) -> Self {
        OpenContext {
            pipeline: pipeline.into(),
            kind,
            role,
            batch_size: 1000,
            linger: Duration::from_millis(100),
            state,
            resume: None,
            late: None,
            resources: Resources::default(),
        }
    }

    /// The same context with another batch size and linger.
    pub fn with_batch(mut self, batch_size: usize, linger: Duration) -> Self {
        self.batch_size = batch_size;
        self.linger = linger;
        self
    }
}

/// A source connector: its settings, checked and opened.
#[async_trait]
pub trait SourceConnector: Debug + Send + Sync + AsAny {
    /// Problems found without connecting to anything, relative to the settings.
    fn problems(&self, _stage: &Stage<'_>) -> Vec<Problem> {
        Vec::new()
    }

    /// `validate --check`: connects, and reports what would stop `open`.
    async fn check(&self, _ctx: &OpenContext, _stage: &Stage<'_>) -> Vec<Problem> {
        Vec::new()
    }

    async fn open(&self, ctx: &OpenContext) -> Result<Box<dyn Source>, ConnectorError>;

    /// Whether the source resumes from a position a sink stored with its data
    /// (`OpenContext::resume`), which effectively-once sinks need.
    fn resumable(&self) -> bool {
        false
    }

    /// Whether its records carry a schema (`Record::schema`).
    fn carries_schema(&self) -> bool {
        false
    }

    /// The `${meta.NAME}` fields its records have, for templates of the
    /// stages after it (`orders.${meta.table}`), checked when the file is.
    fn metadata(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether it needs the schema registry client in [`Resources`] (by
    /// default: whether its format does).
    fn uses_registry(&self) -> bool {
        self.format().is_some_and(|f| f.uses_registry())
    }

    /// The format its values are decoded from, when its settings name one:
    /// the runtime places the decoding stage right after it.
    fn format(&self) -> Option<Box<dyn ValueFormat + '_>> {
        None
    }

    /// `flowgate snapshot FILE --table T`: asks the running pipeline's source
    /// to read `tables` again while it runs. `None`: it takes no snapshots on
    /// demand.
    async fn request_snapshot(&self, _ctx: &OpenContext, _tables: &[String]) -> Option<Result<String, ConnectorError>> {
        None
    }
}

/// A sink connector: its settings, checked and opened.
#[async_trait]
pub trait SinkConnector: Debug + Send + Sync + AsAny {
    fn problems(&self, _stage: &Stage<'_>) -> Vec<Problem> {
        Vec::new()
    }

    async fn check(&self, _ctx: &OpenContext, _stage: &Stage<'_>) -> Vec<Problem> {
        Vec::new()
    }

    async fn open(&self, ctx: &OpenContext) -> Result<Box<dyn Sink>, ConnectorError>;

    /// Whether it needs the schema registry client (by default: whether its
    /// format does).
    fn uses_registry(&self) -> bool {
        self.format().is_some_and(|f| f.uses_registry())
    }

    /// The format its values are encoded to, when its settings name one; the
    /// sink opens its encoder itself ([`ValueFormat::encoder`]), and the
    /// runtime checks the format's settings and services with the sink's.
    fn format(&self) -> Option<Box<dyn ValueFormat + '_>> {
        None
    }
}

/// A step applied to every record.
#[async_trait]
pub trait TransformConnector: Debug + Send + Sync + AsAny {
    /// The step's name in logs, metrics and dead letters: `transform[0]:wasm(mask)`.
    fn stage_name(&self, kind: &str, index: usize) -> String {
        format!("transform[{index}]:{kind}")
    }

    fn problems(&self, _stage: &Stage<'_>) -> Vec<Problem> {
        Vec::new()
    }

    async fn check(&self, _ctx: &OpenContext, _stage: &Stage<'_>) -> Vec<Problem> {
        Vec::new()
    }

    /// Opens the step; `stage` is its [`stage_name`](Self::stage_name).
    async fn open(&self, ctx: &OpenContext, stage: &str) -> Result<Box<dyn Transform>, ConnectorError>;

    /// Whether it attaches a schema to the records it passes on.
    fn sets_schema(&self) -> bool {
        false
    }

    /// The schema file it validates against, if any.
    fn schema_file(&self) -> Option<std::path::PathBuf> {
        None
    }

    fn uses_registry(&self) -> bool {
        false
    }
}

type Parse<T> = fn(&mut dyn erased_serde::Deserializer<'_>) -> Result<Arc<T>, erased_serde::Error>;

/// How to describe and read one kind of connector.
pub struct Entry<T: ?Sized> {
    pub kind: &'static str,
    schema: fn(&mut SchemaGenerator) -> Schema,
    parse: Parse<T>,
}

impl<T: ?Sized> Entry<T> {
    /// The JSON Schema of its settings (a `$ref` into the generator's definitions).
    pub fn schema(&self, generator: &mut SchemaGenerator) -> Schema {
        (self.schema)(generator)
    }

    pub fn parse(&self, d: &mut dyn erased_serde::Deserializer<'_>) -> Result<Configured<T>, erased_serde::Error> {
        Ok(Configured { kind: self.kind, connector: (self.parse)(d)? })
    }
}

fn schema_of<C: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<C>()
}

/// Every connector kind the runtime knows, by role, in the order registered
/// (which is the order they are listed in messages and the JSON Schema).
#[derive(Default)]
pub struct Registry {
    sources: Vec<Entry<dyn SourceConnector>>,
    sinks: Vec<Entry<dyn SinkConnector>>,
    transforms: Vec<Entry<dyn TransformConnector>>,
}

fn add<T: ?Sized>(entries: &mut Vec<Entry<T>>, entry: Entry<T>, role: &str) {
    assert!(!entries.iter().any(|e| e.kind == entry.kind), "{role} `{}` is registered twice", entry.kind);
    entries.push(entry);
}

impl Registry {
    /// Registers the source `C` as `kind`.
    pub fn source<C: SourceConnector + DeserializeOwned + JsonSchema + 'static>(&mut self, kind: &'static str) {
        fn parse<C: SourceConnector + DeserializeOwned + 'static>(
            d: &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<Arc<dyn SourceConnector>, erased_serde::Error> {
            Ok(Arc::new(erased_serde::deserialize::<C>(d)?))
        }
        let entry = Entry { kind, schema: schema_of::<C>, parse: parse::<C> };
        add(&mut self.sources, entry, "source");
    }

    /// Registers the sink `C` as `kind`.
    pub fn sink<C: SinkConnector + DeserializeOwned + JsonSchema + 'static>(&mut self, kind: &'static str) {
        fn parse<C: SinkConnector + DeserializeOwned + 'static>(
            d: &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<Arc<dyn SinkConnector>, erased_serde::Error> {
            Ok(Arc::new(erased_serde::deserialize::<C>(d)?))
        }
        let entry = Entry { kind, schema: schema_of::<C>, parse: parse::<C> };
        add(&mut self.sinks, entry, "sink");
    }

    /// Registers the transform `C` as `kind`.
    pub fn transform<C: TransformConnector + DeserializeOwned + JsonSchema + 'static>(&mut self, kind: &'static str) {
        fn parse<C: TransformConnector + DeserializeOwned + 'static>(
            d: &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<Arc<dyn TransformConnector>, erased_serde::Error> {
            Ok(Arc::new(erased_serde::deserialize::<C>(d)?))
        }
        let entry = Entry { kind, schema: schema_of::<C>, parse: parse::<C> };
        add(&mut self.transforms, entry, "transform");
    }

    pub fn sources(&self) -> &[Entry<dyn SourceConnector>] {
        &self.sources
    }

    pub fn sinks(&self) -> &[Entry<dyn SinkConnector>] {
        &self.sinks
    }

    pub fn transforms(&self) -> &[Entry<dyn TransformConnector>] {
        &self.transforms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_located_below_their_stage() {
        let p = Problem::new(["topic"], "missing").with_help("set it").under(["sink", "kafka"]);
        assert_eq!(p.at, ["sink", "kafka", "topic"]);
        assert_eq!(p.help.as_deref(), Some("set it"));
    }

    #[test]
    fn resources_are_found_by_type() {
        let r = Resources::default();
        assert_eq!(r.get::<Arc<str>>(), None);
        r.insert::<Arc<str>>("x".into());
        assert_eq!(r.clone().get::<Arc<str>>().as_deref(), Some("x"));
    }
}
