//! From a checked configuration to a runnable pipeline: opens the connectors.

use std::path::Path;
use std::sync::Arc;

use flowgate_avro::{AvroStep, RegistryClient};
use flowgate_file::{FileSink, FileSource, NullSink, StdinSource, StdoutSink};
use flowgate_generate::GenerateSource;
use flowgate_kafka::config::Delivery;
use flowgate_kafka::config::Format as KafkaFormat;
use flowgate_kafka::{KafkaConsumer, KafkaSink, KafkaSource};
use flowgate_postgres::PostgresCdcSource;
use flowgate_sdk::{ConnectorError, LateRejects, Sink, Source, SourceContext, StateStore};
use flowgate_sql::SqlSink;
use flowgate_wasm::WasmTransform;

use crate::config::{PathProblem, PipelineConfig, SinkConfig, SourceConfig, TransformConfig};
use crate::engine::{ErrorHandler, Pipeline, Stats};

/// A connector that could not be opened, with the stage it belongs to.
#[derive(Debug, thiserror::Error)]
#[error("pipeline {pipeline}: cannot open the {stage}: {message}")]
pub struct OpenError {
    pub pipeline: String,
    pub stage: &'static str,
    pub message: String,
    /// The service may be back later (refused connection, timeout); an
    /// authentication failure or a missing table is not.
    pub retryable: bool,
}

fn exactly_once(sink: &SinkConfig) -> bool {
    matches!(sink, SinkConfig::Kafka(k) if k.delivery == Delivery::ExactlyOnce)
}

/// Opens the source; a Kafka source also hands out its consumer, which an
/// exactly-once Kafka sink commits offsets through.
async fn open_source(
    config: &PipelineConfig,
    ctx: &SourceContext,
    registry: Option<&Arc<RegistryClient>>,
) -> Result<(Box<dyn Source>, Option<Arc<KafkaConsumer>>), ConnectorError> {
    Ok(match &config.source {
        SourceConfig::Generate(c) => (Box::new(GenerateSource::new(c.clone(), ctx)), None),
        SourceConfig::File(c) => (Box::new(FileSource::open(c.clone(), ctx).await?), None),
        SourceConfig::Stdin(c) => (Box::new(StdinSource::new(c.clone(), ctx)), None),
        SourceConfig::Kafka(c) => {
            let source = KafkaSource::open(c.clone(), ctx, exactly_once(&config.sink), registry.cloned())?;
            let consumer = source.consumer();
            (Box::new(source), Some(consumer))
        }
        SourceConfig::PostgresCdc(c) => (Box::new(PostgresCdcSource::open(c.clone(), ctx).await?), None),
    })
}

async fn open_sink(
    config: &SinkConfig,
    pipeline: &str,
    late: Option<LateRejects>,
    consumer: Option<Arc<KafkaConsumer>>,
    registry: Option<&Arc<RegistryClient>>,
) -> Result<Box<dyn Sink>, ConnectorError> {
    Ok(match config {
        SinkConfig::File(c) => Box::new(FileSink::open(c.clone()).await?),
        SinkConfig::Stdout(c) => Box::new(StdoutSink::new(c.clone())),
        SinkConfig::Null(c) => Box::new(NullSink::new(c.clone())),
        SinkConfig::Sqlite(c) | SinkConfig::Postgres(c) | SinkConfig::Mysql(c) => {
            Box::new(SqlSink::open(c.clone(), pipeline).await?)
        }
        SinkConfig::Kafka(c) => Box::new(KafkaSink::open(c.clone(), pipeline, late, consumer, registry.cloned())?),
    })
}

fn open_transform(
    config: &TransformConfig,
    pipeline: &str,
    stage: &str,
    registry: Option<&Arc<RegistryClient>>,
) -> Result<Box<dyn flowgate_sdk::Transform>, ConnectorError> {
    Ok(match config {
        TransformConfig::Wasm(c) => Box::new(WasmTransform::new(c.clone(), pipeline, stage)?),
        TransformConfig::Avro(c) => Box::new(AvroStep::new(c.clone(), registry.cloned(), stage)?),
    })
}

/// Problems of the Avro settings: schema sources, schema files, and whether an
/// Avro sink has a schema to encode with.
fn avro_problems(config: &PipelineConfig) -> Vec<PathProblem> {
    let mut problems = Vec::new();
    let at = |path: &[&str]| path.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for (i, t) in config.transforms.iter().enumerate() {
        if let TransformConfig::Avro(a) = t {
            let i = i.to_string();
            for message in a.schema.problems() {
                problems.push(PathProblem { at: at(&["transforms", &i, "avro", "schema"]), message, help: None });
            }
        }
    }
    let sinks = [
        (vec!["sink", "kafka"], Some(&config.sink)),
        (vec!["errors", "dead_letter", "kafka"], config.errors.dead_letter.as_ref()),
    ];
    for (path, sink) in sinks {
        let Some(SinkConfig::Kafka(k)) = sink else { continue };
        let field = |f: &[&str]| path.iter().chain(f).map(|s| s.to_string()).collect::<Vec<_>>();
        if path[0] == "errors" && k.format == KafkaFormat::Avro {
            problems.push(PathProblem {
                at: field(&["format"]),
                message: "a dead-letter sink cannot be `format: avro`".into(),
                help: Some("dead letters are JSON envelopes around any record; remove `format`".into()),
            });
            continue;
        }
        match (k.format, &k.avro) {
            (KafkaFormat::Bytes, Some(_)) => problems.push(PathProblem {
                at: field(&["avro"]),
                message: "`avro` settings are set, but `format` is not `avro`".into(),
                help: Some("set `format: avro`, or remove `avro`".into()),
            }),
            (KafkaFormat::Avro, avro) => {
                let schema = avro.as_ref().and_then(|a| a.schema.as_ref());
                match schema {
                    Some(s) => {
                        for message in s.problems() {
                            problems.push(PathProblem { at: field(&["avro", "schema"]), message, help: None });
                        }
                        if let Some(file) = &s.file
                            && let Err(message) = flowgate_avro::load_file(file)
                        {
                            problems.push(PathProblem { at: field(&["avro", "schema", "file"]), message, help: None });
                        }
                    }
                    None => {
                        let step = config.transforms.iter().any(|t| matches!(t, TransformConfig::Avro(_)));
                        let cdc = matches!(config.source, SourceConfig::PostgresCdc(_));
                        if !step && !cdc && path[0] == "sink" {
                            problems.push(PathProblem {
                                at: field(&["format"]),
                                message: "`format: avro` needs a schema".into(),
                                help: Some(
                                    "set `avro: {schema: {file: x.avsc}}` (or `{subject: s}`), or add an `avro` step before the sink".into(),
                                ),
                            });
                        }
                    }
                }
            }
            _ => {}
        }
    }
    problems
}

/// Checks that need more than the file: each plugin loads, fits the contract
/// and accepts its config; the source and sink fit together. Run by `validate`
/// and before `run` starts anything.
pub fn check(config: &PipelineConfig) -> Vec<PathProblem> {
    let mut problems = Vec::new();
    if exactly_once(&config.sink) && !matches!(config.source, SourceConfig::Kafka(_)) {
        problems.push(PathProblem {
            at: vec!["sink".into(), "kafka".into(), "delivery".into()],
            message: "`delivery: exactly_once` needs a `kafka` source".into(),
            help: Some("the consumer offsets are committed in the sink's transaction; use `at_least_once`".into()),
        });
    }
    let mut settings = |prefix: &[&str], found: Vec<flowgate_kafka::CheckProblem>| {
        problems.extend(found.into_iter().map(|p| PathProblem {
            at: prefix.iter().map(|s| s.to_string()).chain(p.at).collect(),
            message: p.message,
            help: p.help,
        }))
    };
    if let SourceConfig::Kafka(c) = &config.source {
        settings(&["source", "kafka"], flowgate_kafka::check_source_settings(c));
    }
    if let SinkConfig::Kafka(c) = &config.sink {
        settings(&["sink", "kafka"], flowgate_kafka::check_sink_settings(c));
    }
    if let Some(SinkConfig::Kafka(c)) = &config.errors.dead_letter {
        settings(&["errors", "dead_letter", "kafka"], flowgate_kafka::check_sink_settings(c));
    }
    if config.uses_registry()
        && let Some((field, message, hint)) = config.registry().embedded().and_then(|s| s.problem())
    {
        problems.push(PathProblem {
            at: ["registry", "serve", field].map(String::from).to_vec(),
            message,
            help: Some(hint),
        });
    }
    if let SourceConfig::PostgresCdc(c) = &config.source {
        problems.extend(c.problems().into_iter().map(|message| PathProblem {
            at: vec!["source".into(), "postgres_cdc".into()],
            message,
            help: None,
        }));
    }
    for (at, sink) in [("sink", Some(&config.sink)), ("dead_letter", config.errors.dead_letter.as_ref())] {
        let Some(c) = sink.and_then(SinkConfig::sql) else { continue };
        let kind = sink.map_or("", SinkConfig::kind);
        let path = |field: &str| -> Vec<String> {
            let base: &[&str] = if at == "sink" { &["sink"] } else { &["errors", "dead_letter"] };
            base.iter().map(|s| s.to_string()).chain([kind.to_string(), field.to_string()]).collect()
        };
        for (field, message, help) in c.problems(kind) {
            problems.push(PathProblem { at: path(field), message, help });
        }
        if c.delivery == flowgate_sql::Delivery::EffectivelyOnce
            && !matches!(config.source, SourceConfig::Kafka(_) | SourceConfig::PostgresCdc(_))
        {
            problems.push(PathProblem {
                at: path("delivery"),
                message: "`delivery: effectively_once` needs a `kafka` or `postgres_cdc` source".into(),
                help: Some("only those sources can resume from a stored position; use `at_least_once`".into()),
            });
        }
    }
    if config.errors.dead_letter.as_ref().is_some_and(exactly_once) {
        problems.push(PathProblem {
            at: vec!["errors".into(), "dead_letter".into(), "kafka".into(), "delivery".into()],
            message: "a dead-letter sink cannot be `exactly_once`".into(),
            help: Some("dead letters are written at-least-once; remove `delivery`".into()),
        });
    }
    problems.extend(avro_problems(config));
    for (i, t) in config.transforms.iter().enumerate() {
        let (kind, field) = match t {
            TransformConfig::Wasm(_) => ("wasm", "path"),
            // Reported above.
            TransformConfig::Avro(a) if !a.schema.problems().is_empty() => continue,
            TransformConfig::Avro(_) => ("avro", "schema"),
        };
        if let Err(e) = open_transform(t, &config.name, &t.stage(i), None) {
            problems.push(PathProblem {
                at: vec!["transforms".into(), i.to_string(), kind.into(), field.into()],
                message: e.chain(),
                help: None,
            });
        }
    }
    problems
}

/// The registry checks of `validate --check`: subjects exist, and a local schema
/// that a sink will register is accepted by its subject's compatibility level.
/// The embedded registry is started for the check when nothing listens yet.
fn check_registry(config: &PipelineConfig, state_dir: &Path) -> Vec<PathProblem> {
    let problem = |at: Vec<String>, message: String, help: Option<String>| PathProblem { at, message, help };
    let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return vec![problem(path(&["registry"]), format!("cannot start a runtime: {e}"), None)],
    };
    runtime.block_on(async {
        let rc = config.registry();
        if let Some(serve) = rc.embedded()
            && tokio::net::TcpStream::connect(serve.listen).await.is_err()
        {
            let started = match crate::run::embedded_store(serve, state_dir) {
                Ok(store) => crate::registry::serve(serve, &store, Default::default()).await.map(drop),
                Err(e) => Err(e),
            };
            if let Err(e) = started {
                return vec![problem(path(&["registry"]), format!("cannot start the embedded registry: {e:#}"), None)];
            }
        }
        let client = match RegistryClient::new(&rc) {
            Ok(c) => c,
            Err(e) => return vec![problem(path(&["registry"]), e.to_string(), None)],
        };
        if let Err(e) = client.ping().await {
            let at = if rc.url.is_some() { path(&["registry", "url"]) } else { path(&["registry"]) };
            return vec![problem(at, format!("cannot reach the schema registry: {e}"), None)];
        }
        let mut problems = Vec::new();
        let subject_missing = |e: flowgate_avro::RegistryError, subject: &str| {
            format!("cannot read subject `{subject}` from the registry: {}", e.message)
        };
        for (i, t) in config.transforms.iter().enumerate() {
            if let TransformConfig::Avro(a) = t
                && let Some(subject) = &a.schema.subject
                && let Err(e) = client.version(subject, a.schema.version.number()).await
            {
                let i = i.to_string();
                problems.push(problem(path(&["transforms", &i, "avro", "schema", "subject"]), subject_missing(e, subject), None));
            }
        }
        let SinkConfig::Kafka(k) = &config.sink else { return problems };
        if k.format != KafkaFormat::Avro {
            return problems;
        }
        let avro = k.avro.clone().unwrap_or_default();
        // The schema the sink encodes with: its own, else a single `avro` step's file.
        let step_file = config.transforms.iter().find_map(|t| match t {
            TransformConfig::Avro(a) => a.schema.file.clone(),
            _ => None,
        });
        let file = match &avro.schema {
            Some(s) if s.subject.is_some() => {
                let subject = s.subject.as_deref().unwrap_or_default();
                if let Err(e) = client.version(subject, s.version.number()).await {
                    problems.push(problem(path(&["sink", "kafka", "avro", "schema", "subject"]), subject_missing(e, subject), None));
                }
                None
            }
            Some(s) => s.file.clone(),
            None => step_file,
        };
        let (Some(file), Some(topic)) = (file, k.topic.fixed()) else { return problems };
        let Ok(loaded) = flowgate_avro::load_file(&file) else { return problems };
        let subject = match avro.subject(topic, loaded.schema.name.as_deref()) {
            Ok(s) => s,
            Err(message) => {
                problems.push(problem(path(&["sink", "kafka", "avro", "subject_name"]), message, None));
                return problems;
            }
        };
        let at = path(&["sink", "kafka", "format"]);
        if avro.auto_register {
            match client.compatible(&subject, &loaded.schema.avro).await {
                Ok(true) => {}
                Ok(false) => problems.push(problem(
                    at,
                    format!("the schema in {} is incompatible with subject `{subject}` in the registry", file.display()),
                    Some(format!(
                        "change the schema so that it stays compatible, or the subject's compatibility level (PUT {}/config/{subject})",
                        client.url()
                    )),
                )),
                Err(e) => problems.push(problem(at, format!("cannot check subject `{subject}`: {}", e.message), None)),
            }
        } else if let Err(e) = client.id_of(&subject, &loaded.schema.avro, false).await {
            problems.push(problem(
                at,
                format!("the schema in {} is not registered under subject `{subject}`: {}", file.display(), e.message),
                Some("register it, or set `avro.auto_register: true`".into()),
            ));
        }
        problems
    })
}

/// [`check`], then connects to the services the pipeline names (`validate --check`).
pub fn check_connected(config: &PipelineConfig, state_dir: &Path) -> Vec<PathProblem> {
    let mut problems = check(config);
    if !problems.is_empty() {
        return problems;
    }
    let at = |prefix: &[&str], p: flowgate_kafka::CheckProblem| PathProblem {
        at: prefix.iter().map(|s| s.to_string()).chain(p.at).collect(),
        message: p.message,
        help: p.help,
    };
    if let SourceConfig::Kafka(c) = &config.source {
        problems.extend(flowgate_kafka::check_source(c).into_iter().map(|p| at(&["source", "kafka"], p)));
    }
    if let SourceConfig::PostgresCdc(c) = &config.source {
        problems.extend(flowgate_postgres::check_source(c, &config.name).into_iter().map(|p| PathProblem {
            at: ["source", "postgres_cdc"].into_iter().chain(p.field).map(String::from).collect(),
            message: p.message,
            help: p.help,
        }));
    }
    if let SinkConfig::Kafka(c) = &config.sink {
        problems.extend(flowgate_kafka::check_sink(c, &config.name).into_iter().map(|p| at(&["sink", "kafka"], p)));
    }
    for (prefix, sink) in
        [(vec!["sink"], Some(&config.sink)), (vec!["errors", "dead_letter"], config.errors.dead_letter.as_ref())]
    {
        let (kind, c) = match sink {
            Some(SinkConfig::Postgres(c)) => ("postgres", c),
            Some(SinkConfig::Mysql(c)) => ("mysql", c),
            Some(SinkConfig::Sqlite(c)) => ("sqlite", c),
            _ => continue,
        };
        let found = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(flowgate_sql::check_sink(c, &config.name)),
            Err(e) => vec![(None, format!("cannot start a runtime: {e}"), None)],
        };
        problems.extend(found.into_iter().map(|(field, message, help)| PathProblem {
            at: prefix.iter().copied().chain([kind]).chain(field).map(String::from).collect(),
            message,
            help,
        }));
    }
    if config.uses_registry() {
        problems.extend(check_registry(config, state_dir));
    }
    if let Some(SinkConfig::Kafka(c)) = &config.errors.dead_letter {
        problems.extend(
            flowgate_kafka::check_sink(c, &config.name).into_iter().map(|p| at(&["errors", "dead_letter", "kafka"], p)),
        );
    }
    problems
}

pub async fn open(config: &PipelineConfig, state_dir: &Path) -> Result<Pipeline, OpenError> {
    let name: Arc<str> = config.name.as_str().into();
    let fail = |stage: &'static str| {
        let pipeline = config.name.clone();
        move |e: ConnectorError| OpenError { pipeline, stage, retryable: e.is_retryable(), message: e.chain() }
    };
    let mut ctx = SourceContext {
        pipeline: Arc::clone(&name),
        batch_size: config.batch.size,
        linger: config.batch.linger.0,
        state: StateStore::new(state_dir),
        resume: None,
    };
    let registry = match config.uses_registry() {
        true => Some(Arc::new(RegistryClient::new(&config.registry()).map_err(|e| fail("registry")(e.into()))?)),
        false => None,
    };
    let registry = registry.as_ref();
    let mut transforms = Vec::with_capacity(config.transforms.len());
    for (i, t) in config.transforms.iter().enumerate() {
        let stage = t.stage(i);
        let opened = open_transform(t, &config.name, &stage, registry).map_err(fail("transform"))?;
        transforms.push((Arc::from(stage), opened));
    }
    let (late_tx, late) = tokio::sync::mpsc::unbounded_channel();
    // An exactly-once Kafka sink commits through the source's consumer, so the
    // source opens first; any other sink opens first, so that a position it
    // stored with its data (effectively-once) reaches the source.
    let (source, sink) = if exactly_once(&config.sink) {
        let (source, consumer) = open_source(config, &ctx, registry).await.map_err(fail("source"))?;
        let sink =
            open_sink(&config.sink, &config.name, Some(late_tx), consumer, registry).await.map_err(fail("sink"))?;
        (source, sink)
    } else {
        let mut sink =
            open_sink(&config.sink, &config.name, Some(late_tx), None, registry).await.map_err(fail("sink"))?;
        ctx.resume = sink.stored_position().await.map_err(fail("sink"))?;
        if let Some(p) = &ctx.resume {
            tracing::info!(pipeline = %name, position = ?p, "resuming from the position stored with the sink's data");
        }
        let (source, _) = open_source(config, &ctx, registry).await.map_err(fail("source"))?;
        (source, sink)
    };
    let dead_letter = match &config.errors.dead_letter {
        Some(c) => Some(open_sink(c, &config.name, None, None, registry).await.map_err(fail("dead-letter sink"))?),
        None => None,
    };
    Ok(Pipeline {
        stats: Arc::new(Stats::new(&name)),
        errors: ErrorHandler::new(config.errors.policy, dead_letter, Arc::clone(&name)),
        transforms,
        name,
        source,
        sink,
        late,
        batch: config.batch.clone(),
    })
}
