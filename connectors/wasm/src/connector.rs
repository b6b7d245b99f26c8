//! The `wasm` step, as the runtime sees it.

use flowgate_sdk::{
    ConnectorError, OpenContext, Problem, Registry, Role, Stage, Transform, TransformConnector, async_trait,
};

use crate::{WasmConfig, WasmTransform, plugin_name};

pub fn register(registry: &mut Registry) {
    registry.transform::<WasmConfig>("wasm");
}

#[async_trait]
impl TransformConnector for WasmConfig {
    fn stage_name(&self, kind: &str, index: usize) -> String {
        format!("transform[{index}]:{kind}({})", plugin_name(self))
    }

    /// The plugin loads, fits the contract and accepts its config.
    fn problems(&self, stage: &Stage<'_>) -> Vec<Problem> {
        let index = match stage.role {
            Role::Transform(i) => i,
            _ => 0,
        };
        match WasmTransform::new(self.clone(), stage.pipeline.name, &self.stage_name(stage.kind, index)) {
            Ok(_) => Vec::new(),
            Err(e) => vec![Problem::new(["path"], ConnectorError::from(e).chain())],
        }
    }

    async fn open(&self, ctx: &OpenContext, stage: &str) -> Result<Box<dyn Transform>, ConnectorError> {
        Ok(Box::new(WasmTransform::new(self.clone(), &ctx.pipeline, stage)?))
    }
}
