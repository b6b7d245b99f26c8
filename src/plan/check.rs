//! The checks of `validate` and of `run` before it starts anything.

use std::path::Path;
use std::sync::Arc;

use flowgate_avro::RegistryClient;
use flowgate_sdk::{OpenContext, PipelineView, Problem, Resources, Role, Stage, StateStore, ValueFormat};

use crate::config::PipelineConfig;

/// Each stage of the pipeline: its path in the file, kind and role.
fn stages(config: &PipelineConfig) -> Vec<(Vec<String>, &'static str, Role)> {
    let mut out = vec![(vec!["source".to_string()], config.source.kind, Role::Source)];
    for (i, t) in config.transforms.iter().enumerate() {
        out.push((vec!["transforms".into(), i.to_string()], t.kind, Role::Transform(i)));
    }
    out.push((vec!["sink".into()], config.sink.kind, Role::Sink));
    if let Some(d) = &config.errors.dead_letter {
        out.push((vec!["errors".into(), "dead_letter".into()], d.kind, Role::DeadLetter));
    }
    out
}

/// Problems of one stage's settings, located in the file.
fn stage_problems(
    view: &PipelineView<'_>,
    config: &PipelineConfig,
    at: &[String],
    kind: &'static str,
    role: Role,
) -> Vec<Problem> {
    let stage = Stage { kind, role, pipeline: view };
    let found = match role {
        Role::Source => with_format(config.source.connector.problems(&stage), config.source.connector.format(), |f| {
            f.problems(&stage)
        }),
        Role::Transform(i) => config.transforms[i].connector.problems(&stage),
        Role::Sink => {
            with_format(config.sink.connector.problems(&stage), config.sink.connector.format(), |f| f.problems(&stage))
        }
        Role::DeadLetter => match &config.errors.dead_letter {
            Some(d) => with_format(d.connector.problems(&stage), d.connector.format(), |f| f.problems(&stage)),
            None => Vec::new(),
        },
    };
    let prefix: Vec<&str> = at.iter().map(String::as_str).chain([kind]).collect();
    found.into_iter().map(|p| p.under(&prefix)).collect()
}

/// A connector's problems followed by its value format's.
fn with_format(
    mut problems: Vec<Problem>,
    format: Option<Box<dyn ValueFormat + '_>>,
    of: impl FnOnce(&dyn ValueFormat) -> Vec<Problem>,
) -> Vec<Problem> {
    if let Some(f) = format {
        problems.extend(of(&*f));
    }
    problems
}

/// Checks that need more than the file: each connector's settings, alone and
/// with the rest of the pipeline (a plugin loads and accepts its config; an
/// exactly-once sink has a source to commit through). Run by `validate` and
/// before `run` starts anything.
pub fn check(config: &PipelineConfig) -> Vec<Problem> {
    let view = config.view();
    let mut problems = Vec::new();
    for (at, kind, role) in stages(config) {
        problems.extend(stage_problems(&view, config, &at, kind, role));
    }
    if config.uses_registry()
        && let Some((field, message, hint)) = config.registry().embedded().and_then(|s| s.problem())
    {
        problems.push(Problem::new(["registry", "serve", field], message).with_help(hint));
    }
    problems
}

/// [`check`], then connects to the services the pipeline names (`validate --check`).
pub fn check_connected(config: &PipelineConfig, state_dir: &Path) -> Vec<Problem> {
    let problems = check(config);
    if !problems.is_empty() {
        return problems;
    }
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(connected(config, state_dir)),
        Err(e) => vec![Problem::new([] as [&str; 0], format!("cannot start a runtime: {e}"))],
    }
}

async fn connected(config: &PipelineConfig, state_dir: &Path) -> Vec<Problem> {
    let mut problems = Vec::new();
    let resources = Resources::default();
    if config.uses_registry() {
        match registry_client(config, state_dir).await {
            Ok(client) => resources.insert(client),
            Err(p) => problems.push(p),
        }
    }
    let view = config.view();
    for (at, kind, role) in stages(config) {
        let mut ctx = OpenContext::new(config.name.as_str(), kind, role, StateStore::new(state_dir));
        ctx.resources = resources.clone();
        let stage = Stage { kind, role, pipeline: &view };
        let mut found = match role {
            Role::Source => config.source.connector.check(&ctx, &stage).await,
            Role::Transform(i) => config.transforms[i].connector.check(&ctx, &stage).await,
            Role::Sink => config.sink.connector.check(&ctx, &stage).await,
            Role::DeadLetter => match &config.errors.dead_letter {
                Some(d) => d.connector.check(&ctx, &stage).await,
                None => Vec::new(),
            },
        };
        let format = match role {
            Role::Source => config.source.connector.format(),
            Role::Transform(_) => None,
            Role::Sink => config.sink.connector.format(),
            Role::DeadLetter => config.errors.dead_letter.as_ref().and_then(|d| d.connector.format()),
        };
        if let Some(f) = format {
            found.extend(f.check(&ctx, &stage).await);
        }
        let prefix: Vec<&str> = at.iter().map(String::as_str).chain([kind]).collect();
        problems.extend(found.into_iter().map(|p| p.under(&prefix)));
    }
    problems
}

/// A client of the pipeline's registry, which answers. The embedded registry
/// is started for the check when nothing listens on its address yet.
async fn registry_client(config: &PipelineConfig, state_dir: &Path) -> Result<Arc<RegistryClient>, Problem> {
    let rc = config.registry();
    if let Some(serve) = rc.embedded()
        && tokio::net::TcpStream::connect(serve.listen).await.is_err()
    {
        let started = match crate::registry::embedded_store(serve, state_dir) {
            Ok(store) => crate::registry::serve(serve, &store, Default::default()).await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            return Err(Problem::new(["registry"], format!("cannot start the embedded registry: {e:#}")));
        }
    }
    let client = RegistryClient::new(&rc).map_err(|e| Problem::new(["registry"], e.to_string()))?;
    if let Err(e) = client.ping().await {
        let at: &[&str] = if rc.url.is_some() { &["registry", "url"] } else { &["registry"] };
        return Err(Problem::new(at, format!("cannot reach the schema registry: {e}")));
    }
    Ok(Arc::new(client))
}
