//! The checks of Avro settings: offline (a sink has a schema to encode with)
//! and against the registry (`validate --check`).

use std::sync::Arc;

use flowgate_avro::{AvroSinkConfig, RegistryClient};
use flowgate_sdk::{OpenContext, Problem, Role, Stage};

/// Whether a sink has a schema to encode with, and its schema settings are sound.
pub fn problems(avro: Option<&AvroSinkConfig>, stage: &Stage<'_>) -> Vec<Problem> {
    let mut problems = Vec::new();
    match avro.and_then(|a| a.schema.as_ref()) {
        Some(s) => {
            problems.extend(s.problems().into_iter().map(|m| Problem::new(["avro", "schema"], m)));
            if let Some(file) = &s.file
                && let Err(message) = flowgate_avro::load_file(file)
            {
                problems.push(Problem::new(["avro", "schema", "file"], message));
            }
        }
        None if stage.role == Role::Sink && !stage.pipeline.records_carry_schema() => {
            problems.push(Problem::new(["format"], "`format: avro` needs a schema").with_help(
                "set `avro: {schema: {file: x.avsc}}` (or `{subject: s}`), or add an `avro` step before the sink",
            ))
        }
        None => {}
    }
    problems
}

/// `validate --check` of a sink: the subject it names exists, and a local
/// schema it would register is accepted by its subject's compatibility level
/// (or, without `auto_register`, is registered). `destination` is the fixed
/// name subjects are derived from, when there is one.
pub async fn check(
    avro: Option<&AvroSinkConfig>,
    destination: Option<&str>,
    ctx: &OpenContext,
    stage: &Stage<'_>,
) -> Vec<Problem> {
    let Some(client) = ctx.resources.get::<Arc<RegistryClient>>() else { return Vec::new() };
    let mut problems = Vec::new();
    let avro = avro.cloned().unwrap_or_default();
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
    let (Some(file), Some(destination)) = (file, destination) else { return problems };
    let Ok(loaded) = flowgate_avro::load_file(&file) else { return problems };
    let subject = match avro.subject(destination, loaded.schema.name.as_deref()) {
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
                    format!("the schema in {} is incompatible with subject `{subject}` in the registry", file.display()),
                )
                .with_help(format!(
                    "change the schema so that it stays compatible, or the subject's compatibility level (PUT {}/config/{subject})",
                    client.url()
                )),
            ),
            Err(e) => problems.push(Problem::new(["format"], format!("cannot check subject `{subject}`: {}", e.message))),
        }
    } else if let Err(e) = client.id_of(&subject, &loaded.schema.avro, false).await {
        problems.push(
            Problem::new(
                ["format"],
                format!("the schema in {} is not registered under subject `{subject}`: {}", file.display(), e.message),
            )
            .with_help("register it, or set `avro.auto_register: true`"),
        );
    }
    problems
}
