//! The Kafka source and sink, as the runtime sees them: their settings'
//! problems (with the exactly-once pairing), the checks of `validate
//! --check`, their value format, and opening.

use flowgate_formats::Formatting;
use flowgate_sdk::{
    ConnectorError, OpenContext, Problem, Registry, Role, Sink, SinkConnector, Source, SourceConnector, Stage,
    ValueFormat, async_trait,
};

use crate::config::Delivery;
use crate::{KafkaSink, KafkaSinkConfig, KafkaSource, KafkaSourceConfig, check};

pub fn register(registry: &mut Registry) {
    registry.source::<KafkaSourceConfig>("kafka");
    registry.sink::<KafkaSinkConfig>("kafka");
}

/// Runs a blocking librdkafka check off the runtime's worker threads.
async fn blocking_check(f: impl FnOnce() -> Vec<Problem> + Send + 'static) -> Vec<Problem> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| vec![Problem::new([] as [&str; 0], format!("the check did not finish: {e}"))])
}

#[async_trait]
impl SourceConnector for KafkaSourceConfig {
    fn problems(&self, _: &Stage<'_>) -> Vec<Problem> {
        check::check_source_settings(self)
    }

    async fn check(&self, _: &OpenContext, _: &Stage<'_>) -> Vec<Problem> {
        let config = self.clone();
        blocking_check(move || check::check_source(&config)).await
    }

    async fn open(&self, ctx: &OpenContext) -> Result<Box<dyn Source>, ConnectorError> {
        Ok(Box::new(KafkaSource::open(self.clone(), ctx)?))
    }

    fn resumable(&self) -> bool {
        true
    }

    fn metadata(&self) -> &'static [&'static str] {
        &["topic", "partition", "offset"]
    }

    fn format(&self) -> Option<Box<dyn ValueFormat + '_>> {
        Formatting::source(self.format).boxed()
    }
}

#[async_trait]
impl SinkConnector for KafkaSinkConfig {
    fn problems(&self, stage: &Stage<'_>) -> Vec<Problem> {
        let mut problems = check::check_sink_settings(self);
        if self.delivery == Delivery::ExactlyOnce {
            if stage.role == Role::DeadLetter {
                problems.push(
                    Problem::new(["delivery"], "a dead-letter sink cannot be `exactly_once`")
                        .with_help("dead letters are written at-least-once; remove `delivery`"),
                );
            } else if stage.pipeline.source.kind != "kafka" {
                problems
                    .push(Problem::new(["delivery"], "`delivery: exactly_once` needs a `kafka` source").with_help(
                        "the consumer offsets are committed in the sink's transaction; use `at_least_once`",
                    ));
            }
        }
        problems.extend(stage.template_problem(["topic"], &self.topic));
        if let Some(key) = &self.key {
            problems.extend(stage.template_problem(["key"], key));
        }
        problems
    }

    async fn check(&self, ctx: &OpenContext, _: &Stage<'_>) -> Vec<Problem> {
        let (config, pipeline) = (self.clone(), ctx.pipeline.clone());
        blocking_check(move || check::check_sink(&config, &pipeline)).await
    }

    async fn open(&self, ctx: &OpenContext) -> Result<Box<dyn Sink>, ConnectorError> {
        Ok(Box::new(KafkaSink::open(self.clone(), ctx)?))
    }

    /// Subjects are named after the topic.
    fn format(&self) -> Option<Box<dyn ValueFormat + '_>> {
        Formatting::sink(self.format, self.avro.as_ref(), self.topic.fixed()).boxed()
    }
}
