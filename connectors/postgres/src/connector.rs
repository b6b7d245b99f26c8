//! The `postgres_cdc` source, as the runtime sees it.

use flowgate_sdk::{ConnectorError, OpenContext, Problem, Registry, Source, SourceConnector, Stage, async_trait};

use crate::{PostgresCdcConfig, PostgresCdcSource, check};

pub fn register(registry: &mut Registry) {
    registry.source::<PostgresCdcConfig>("postgres_cdc");
}

#[async_trait]
impl SourceConnector for PostgresCdcConfig {
    fn problems(&self, _: &Stage<'_>) -> Vec<Problem> {
        PostgresCdcConfig::problems(self).into_iter().map(|m| Problem::new([] as [&str; 0], m)).collect()
    }

    async fn check(&self, ctx: &OpenContext, _: &Stage<'_>) -> Vec<Problem> {
        check::check_source(self, &ctx.pipeline, &ctx.state).await
    }

    async fn open(&self, ctx: &OpenContext) -> Result<Box<dyn Source>, ConnectorError> {
        Ok(Box::new(PostgresCdcSource::open(self.clone(), ctx).await?))
    }

    fn resumable(&self) -> bool {
        true
    }

    /// Each table's change events carry a schema built from its columns.
    fn carries_schema(&self) -> bool {
        true
    }

    fn metadata(&self) -> &'static [&'static str] {
        &["schema", "table", "lsn"]
    }

    /// Writes the request into the WAL, where the running pipeline reads it in
    /// its stream (whichever process runs the slot) and snapshots the tables
    /// incrementally.
    async fn request_snapshot(&self, ctx: &OpenContext, tables: &[String]) -> Option<Result<String, ConnectorError>> {
        Some(crate::source::request_snapshot(self, &ctx.pipeline, tables).await.map_err(Into::into))
    }
}
