//! The `wasm` step, as the runtime sees it.

use flowgate_sdk::{
    ConnectorError, OpenContext, Problem, Registry, Role, Stage, Transform, TransformConnector, async_trait,
};

use std::sync::Mutex;

use crate::{WasmConfig, WasmTransform, plugin_name};

/// Instances the check started, by pipeline and stage, for `open` to take:
/// `run` checks a pipeline (which starts each plugin, so that one refusing
/// its config is found before anything is read) and then opens it, and a
/// plugin's `init` runs once per instance, not once for each.
static CHECKED: Mutex<Vec<((String, String), WasmTransform)>> = Mutex::new(Vec::new());

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
        let name = self.stage_name(stage.kind, index);
        match WasmTransform::new(self.clone(), stage.pipeline.name, &name) {
            Ok(t) => {
                let mut checked = CHECKED.lock().unwrap_or_else(|p| p.into_inner());
                let key = (stage.pipeline.name.to_string(), name);
                checked.retain(|(k, _)| *k != key);
                checked.push((key, t));
                Vec::new()
            }
            Err(e) => vec![Problem::new(["path"], ConnectorError::from(e).chain())],
        }
    }

    async fn open(&self, ctx: &OpenContext, stage: &str) -> Result<Box<dyn Transform>, ConnectorError> {
        let taken = {
            let mut checked = CHECKED.lock().unwrap_or_else(|p| p.into_inner());
            let at = checked.iter().position(|((p, s), t)| **p == *ctx.pipeline && s == stage && t.config() == self);
            at.map(|i| checked.swap_remove(i).1)
        };
        match taken {
            Some(t) => Ok(Box::new(t)),
            None => Ok(Box::new(WasmTransform::new(self.clone(), &ctx.pipeline, stage)?)),
        }
    }
}
