//! The database sinks, as the runtime sees them: one configuration type
//! registered as `postgres`, `mysql` and `sqlite`.

use flowgate_sdk::{ConnectorError, OpenContext, Problem, Registry, Sink, SinkConnector, Stage, async_trait};

use crate::config::Delivery;
use crate::{SqlSink, SqlSinkConfig, check_sink};

pub fn register(registry: &mut Registry) {
    for kind in ["postgres", "mysql", "sqlite"] {
        registry.sink::<SqlSinkConfig>(kind);
    }
}

#[async_trait]
impl SinkConnector for SqlSinkConfig {
    fn problems(&self, stage: &Stage<'_>) -> Vec<Problem> {
        let mut problems = SqlSinkConfig::problems(self, stage.kind);
        problems.extend(stage.template_problem(["table"], &self.table));
        if self.delivery == Delivery::EffectivelyOnce && !stage.pipeline.source.connector.resumable() {
            problems.push(
                Problem::new(["delivery"], "`delivery: effectively_once` needs a `kafka` or `postgres_cdc` source")
                    .with_help("only those sources can resume from a stored position; use `at_least_once`"),
            );
        }
        problems
    }

    async fn check(&self, ctx: &OpenContext, _: &Stage<'_>) -> Vec<Problem> {
        check_sink(self, &ctx.pipeline).await
    }

    async fn open(&self, ctx: &OpenContext) -> Result<Box<dyn Sink>, ConnectorError> {
        Ok(Box::new(SqlSink::open(self.clone(), &ctx.pipeline).await?))
    }
}
