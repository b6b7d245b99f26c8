//! The Kafka source and sink, as the runtime sees them: their settings'
//! problems (with the exactly-once and Avro pairings), the checks of
//! `validate --check`, and opening.

use std::sync::Arc;

use flowgate_avro::RegistryClient;
use flowgate_sdk::{
    ConnectorError, OpenContext, Problem, Registry, Role, Sink, SinkConnector, Source, SourceConnector, Stage,
    async_trait,
};

use crate::config::{Delivery, Format};
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

    fn uses_registry(&self) -> bool {
        self.format == Format::Avro
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
        problems.extend(self.avro_problems(stage));
        problems
    }

    async fn check(&self, ctx: &OpenContext, stage: &Stage<'_>) -> Vec<Problem> {
        let (config, pipeline) = (self.clone(), ctx.pipeline.clone());
        let mut problems = blocking_check(move || check::check_sink(&config, &pipeline)).await;
        if let (Some(registry), Role::Sink) = (ctx.resources.get::<Arc<RegistryClient>>(), stage.role) {
            problems.extend(self.check_registry(&registry, stage).await);
        }
        problems
    }

    async fn open(&self, ctx: &OpenContext) -> Result<Box<dyn Sink>, ConnectorError> {
        Ok(Box::new(KafkaSink::open(self.clone(), ctx)?))
    }

    fn uses_registry(&self) -> bool {
        self.format == Format::Avro
    }
}

impl KafkaSinkConfig {
    /// Problems of the Avro settings: whether the sink has a schema to encode with.
    fn avro_problems(&self, stage: &Stage<'_>) -> Vec<Problem> {
        if stage.role == Role::DeadLetter && self.format == Format::Avro {
            return vec![
                Problem::new(["format"], "a dead-letter sink cannot be `format: avro`")
                    .with_help("dead letters are JSON envelopes around any record; remove `format`"),
            ];
        }
        let mut problems = Vec::new();
        match (self.format, &self.avro) {
            (Format::Bytes, Some(_)) => problems.push(
                Problem::new(["avro"], "`avro` settings are set, but `format` is not `avro`")
                    .with_help("set `format: avro`, or remove `avro`"),
            ),
            (Format::Avro, avro) => match avro.as_ref().and_then(|a| a.schema.as_ref()) {
                Some(s) => {
                    problems.extend(s.problems().into_iter().map(|m| Problem::new(["avro", "schema"], m)));
                    if let Some(file) = &s.file
                        && let Err(message) = flowgate_avro::load_file(file)
                    {
                        problems.push(Problem::new(["avro", "schema", "file"], message));
                    }
                }
                None if stage.role == Role::Sink && !stage.pipeline.records_carry_schema() => problems.push(
                    Problem::new(["format"], "`format: avro` needs a schema").with_help(
                        "set `avro: {schema: {file: x.avsc}}` (or `{subject: s}`), or add an `avro` step before the sink",
                    ),
                ),
                None => {}
            },
            (Format::Bytes, None) => {}
        }
        problems
    }

    /// `validate --check` with `format: avro`: the subject the sink names
    /// exists, and a local schema it would register is accepted by its
    /// subject's compatibility level (or, without `auto_register`, is registered).
    async fn check_registry(&self, client: &RegistryClient, stage: &Stage<'_>) -> Vec<Problem> {
        if self.format != Format::Avro {
            return Vec::new();
        }
        let mut problems = Vec::new();
        let avro = self.avro.clone().unwrap_or_default();
        // The schema the sink encodes with: its own, else a step's file.
        let file = match &avro.schema {
            Some(s) if s.subject.is_some() => {
                let subject = s.subject.as_deref().unwrap_or_default();
                if let Err(e) = client.version(subject, s.version.number()).await {
                    problems.push(Problem::new(
                        ["avro", "schema", "subject"],
                        format!("cannot read subject `{subject}` from the registry: {}", e.message),
                    ));
                }
                None
            }
            Some(s) => s.file.clone(),
            None => stage.pipeline.step_schema_file(),
        };
        let (Some(file), Some(topic)) = (file, self.topic.fixed()) else { return problems };
        let Ok(loaded) = flowgate_avro::load_file(&file) else { return problems };
        let subject = match avro.subject(topic, loaded.schema.name.as_deref()) {
            Ok(s) => s,
            Err(message) => {
                problems.push(Problem::new(["avro", "subject_name"], message));
                return problems;
            }
        };
        if avro.auto_register {
            match client.compatible(&subject, &loaded.schema.avro).await {
                Ok(true) => {}
                Ok(false) => problems.push(
                    Problem::new(
                        ["format"],
                        format!(
                            "the schema in {} is incompatible with subject `{subject}` in the registry",
                            file.display()
                        ),
                    )
                    .with_help(format!(
                        "change the schema so that it stays compatible, or the subject's compatibility level (PUT {}/config/{subject})",
                        client.url()
                    )),
                ),
                Err(e) => {
                    problems.push(Problem::new(["format"], format!("cannot check subject `{subject}`: {}", e.message)))
                }
            }
        } else if let Err(e) = client.id_of(&subject, &loaded.schema.avro, false).await {
            problems.push(
                Problem::new(
                    ["format"],
                    format!(
                        "the schema in {} is not registered under subject `{subject}`: {}",
                        file.display(),
                        e.message
                    ),
                )
                .with_help("register it, or set `avro.auto_register: true`"),
            );
        }
        problems
    }
}
