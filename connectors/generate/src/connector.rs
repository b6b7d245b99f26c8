//! The `generate` source, as the runtime sees it.

use flowgate_sdk::{ConnectorError, OpenContext, Registry, Source, SourceConnector, async_trait};

use crate::{GenerateConfig, GenerateSource};

pub fn register(registry: &mut Registry) {
    registry.source::<GenerateConfig>("generate");
}

#[async_trait]
impl SourceConnector for GenerateConfig {
    async fn open(&self, ctx: &OpenContext) -> Result<Box<dyn Source>, ConnectorError> {
        Ok(Box::new(GenerateSource::new(self.clone(), ctx)))
    }

    fn metadata(&self) -> &'static [&'static str] {
        &["seq"]
    }
}
