//! Opening a checked pipeline's connectors.

use std::path::Path;
use std::sync::Arc;

use flowgate_avro::RegistryClient;
use flowgate_sdk::{ConnectorError, OpenContext, Resources, Role, StateStore};

use crate::config::PipelineConfig;
use crate::engine::{Chain, ErrorHandler, Pipeline, Stats};

/// A connector that could not be opened, with the stage it belongs to. The
/// connector's error is shown with its causes in the message.
#[derive(Debug, thiserror::Error)]
#[error("pipeline {pipeline}: cannot open the {stage}: {}", cause.chain())]
pub struct OpenError {
    pub pipeline: String,
    pub stage: &'static str,
    pub cause: ConnectorError,
}

impl OpenError {
    /// The service may be back later (refused connection, timeout); an
    /// authentication failure or a missing table is not.
    pub fn is_retryable(&self) -> bool {
        self.cause.is_retryable()
    }
}

pub async fn open(config: &PipelineConfig, state_dir: &Path) -> Result<Pipeline, OpenError> {
    let name: Arc<str> = config.name.as_str().into();
    let fail = |stage: &'static str| {
        let pipeline = config.name.clone();
        move |cause: ConnectorError| OpenError { pipeline, stage, cause }
    };
    let resources = Resources::default();
    if config.uses_registry() {
        let client = RegistryClient::new(&config.registry()).map_err(|e| fail("registry")(e.into()))?;
        resources.insert(Arc::new(client));
    }
    let context = |kind: &'static str, role: Role| {
        let mut ctx = OpenContext::new(Arc::clone(&name), kind, role, StateStore::new(state_dir))
            .with_batch(config.batch.size, config.batch.linger.0);
        ctx.resources = resources.clone();
        ctx
    };
    // One copy of the chain per worker, each transform opened for each.
    let workers =
        if config.transforms.is_empty() && config.source.connector.format().is_none() { 1 } else { config.workers() };
    let mut chains: Vec<Chain> = (0..workers).map(|_| Vec::with_capacity(config.transforms.len() + 1)).collect();
    for chain in &mut chains {
        for (i, t) in config.transforms.iter().enumerate() {
            let stage = t.stage(i);
            let ctx = context(t.kind, Role::Transform(i));
            let opened = t.connector.open(&ctx, &stage).await.map_err(fail("transform"))?;
            chain.push((Arc::from(stage), opened));
        }
    }
    // The sink opens first: a position it stored with its data
    // (effectively-once) is where the source resumes, and a sink may leave
    // something in the resources for the source (the Kafka exactly-once pairing).
    let (late_tx, late) = tokio::sync::mpsc::unbounded_channel();
    let mut sink_ctx = context(config.sink.kind, Role::Sink);
    sink_ctx.late = Some(late_tx);
    let mut sink = config.sink.connector.open(&sink_ctx).await.map_err(fail("sink"))?;
    let mut source_ctx = context(config.source.kind, Role::Source);
    source_ctx.resume = sink.stored_position().await.map_err(fail("sink"))?;
    if let Some(p) = &source_ctx.resume {
        tracing::info!(pipeline = %name, position = ?p, "resuming from the position stored with the sink's data");
    }
    let source = config.source.connector.open(&source_ctx).await.map_err(fail("source"))?;
    // The source's values are decoded by a stage of their own, before any step.
    if let Some(format) = config.source.connector.format() {
        let stage = format!("decode:{}", format.name());
        for chain in &mut chains {
            if let Some(decode) = format.decoder(&source_ctx, &stage).map_err(fail("source"))? {
                chain.insert(0, (Arc::from(stage.as_str()), decode));
            }
        }
    }
    let dead_letter = match &config.errors.dead_letter {
        Some(d) => Some(d.connector.open(&context(d.kind, Role::DeadLetter)).await.map_err(fail("dead-letter sink"))?),
        None => None,
    };
    Ok(Pipeline {
        stats: Arc::new(Stats::new(&name)),
        errors: ErrorHandler::new(config.errors.policy, dead_letter, Arc::clone(&name)),
        transforms: chains,
        name,
        source,
        sink,
        late,
        batch: config.batch.clone(),
    })
}
