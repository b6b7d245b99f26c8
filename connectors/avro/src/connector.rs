//! The `avro` step, as the runtime sees it.

use std::path::PathBuf;
use std::sync::Arc;

use flowgate_sdk::{
    ConnectorError, OpenContext, Problem, Registry, Role, Stage, Transform, TransformConnector, async_trait,
};

use crate::{AvroStep, AvroStepConfig, RegistryClient};

pub fn register(registry: &mut Registry) {
    registry.transform::<AvroStepConfig>("avro");
}

#[async_trait]
impl TransformConnector for AvroStepConfig {
    fn stage_name(&self, kind: &str, index: usize) -> String {
        match (&self.schema.file, &self.schema.subject) {
            (Some(f), _) => format!("transform[{index}]:{kind}({})", f.display()),
            (None, Some(s)) => format!("transform[{index}]:{kind}({s})"),
            (None, None) => format!("transform[{index}]:{kind}"),
        }
    }

    fn problems(&self, stage: &Stage<'_>) -> Vec<Problem> {
        let found: Vec<Problem> = self.schema.problems().into_iter().map(|m| Problem::new(["schema"], m)).collect();
        if !found.is_empty() {
            return found;
        }
        // Opening reads and compiles a schema file.
        let index = match stage.role {
            Role::Transform(i) => i,
            _ => 0,
        };
        match AvroStep::new(self.clone(), None, &self.stage_name(stage.kind, index)) {
            Ok(_) => Vec::new(),
            Err(e) => vec![Problem::new(["schema"], e.chain())],
        }
    }

    async fn check(&self, ctx: &OpenContext, _: &Stage<'_>) -> Vec<Problem> {
        let (Some(registry), Some(subject)) = (ctx.resources.get::<Arc<RegistryClient>>(), &self.schema.subject) else {
            return Vec::new();
        };
        match registry.version(subject, self.schema.version.number()).await {
            Ok(_) => Vec::new(),
            Err(e) => vec![Problem::new(
                ["schema", "subject"],
                format!("cannot read subject `{subject}` from the registry: {}", e.message),
            )],
        }
    }

    async fn open(&self, ctx: &OpenContext, stage: &str) -> Result<Box<dyn Transform>, ConnectorError> {
        Ok(Box::new(AvroStep::new(self.clone(), ctx.resources.get::<Arc<RegistryClient>>(), stage)?))
    }

    /// Records that fit carry the schema on, for an Avro sink to encode with.
    fn sets_schema(&self) -> bool {
        true
    }

    fn schema_file(&self) -> Option<PathBuf> {
        self.schema.file.clone()
    }

    fn uses_registry(&self) -> bool {
        self.schema.subject.is_some()
    }
}
