//! From a checked configuration to a runnable pipeline: opens the connectors.

use std::path::Path;
use std::sync::Arc;

use flowgate_file::{FileSink, FileSource, NullSink, StdinSource, StdoutSink};
use flowgate_generate::GenerateSource;
use flowgate_sdk::{ConnectorError, Sink, Source, SourceContext, StateStore};
use flowgate_sql::SqliteSink;
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
}

async fn open_source(config: &SourceConfig, ctx: &SourceContext) -> Result<Box<dyn Source>, ConnectorError> {
    Ok(match config {
        SourceConfig::Generate(c) => Box::new(GenerateSource::new(c.clone(), ctx)),
        SourceConfig::File(c) => Box::new(FileSource::open(c.clone(), ctx).await?),
        SourceConfig::Stdin(c) => Box::new(StdinSource::new(c.clone(), ctx)),
    })
}

async fn open_sink(config: &SinkConfig) -> Result<Box<dyn Sink>, ConnectorError> {
    Ok(match config {
        SinkConfig::File(c) => Box::new(FileSink::open(c.clone()).await?),
        SinkConfig::Stdout(c) => Box::new(StdoutSink::new(c.clone())),
        SinkConfig::Null(c) => Box::new(NullSink::new(c.clone())),
        SinkConfig::Sqlite(c) => Box::new(SqliteSink::open(c.clone()).await?),
    })
}

fn open_transform(
    config: &TransformConfig,
    pipeline: &str,
    stage: &str,
) -> Result<Box<dyn flowgate_sdk::Transform>, ConnectorError> {
    Ok(match config {
        TransformConfig::Wasm(c) => Box::new(WasmTransform::new(c.clone(), pipeline, stage)?),
    })
}

/// Checks that need more than the file: each plugin loads, fits the contract
/// and accepts its config. Run by `validate` and before `run` starts anything.
pub fn check(config: &PipelineConfig) -> Vec<PathProblem> {
    let mut problems = Vec::new();
    for (i, t) in config.transforms.iter().enumerate() {
        let (kind, field) = match t {
            TransformConfig::Wasm(_) => ("wasm", "path"),
        };
        if let Err(e) = open_transform(t, &config.name, &t.stage(i)) {
            problems.push(PathProblem {
                at: vec!["transforms".into(), i.to_string(), kind.into(), field.into()],
                message: e.chain(),
                help: None,
            });
        }
    }
    problems
}

pub async fn open(config: &PipelineConfig, state_dir: &Path) -> Result<Pipeline, OpenError> {
    let name: Arc<str> = config.name.as_str().into();
    let fail = |stage: &'static str| {
        let pipeline = config.name.clone();
        move |e: ConnectorError| OpenError { pipeline, stage, message: e.chain() }
    };
    let ctx = SourceContext {
        pipeline: Arc::clone(&name),
        batch_size: config.batch.size,
        linger: config.batch.linger.0,
        state: StateStore::new(state_dir),
    };
    let mut transforms = Vec::with_capacity(config.transforms.len());
    for (i, t) in config.transforms.iter().enumerate() {
        let stage = t.stage(i);
        let opened = open_transform(t, &config.name, &stage).map_err(fail("transform"))?;
        transforms.push((Arc::from(stage), opened));
    }
    let source = open_source(&config.source, &ctx).await.map_err(fail("source"))?;
    let sink = open_sink(&config.sink).await.map_err(fail("sink"))?;
    let dead_letter = match &config.errors.dead_letter {
        Some(c) => Some(open_sink(c).await.map_err(fail("dead-letter sink"))?),
        None => None,
    };
    Ok(Pipeline {
        stats: Arc::new(Stats::new(&name)),
        errors: ErrorHandler::new(config.errors.policy, dead_letter, Arc::clone(&name)),
        transforms,
        name,
        source,
        sink,
        batch: config.batch.clone(),
    })
}
