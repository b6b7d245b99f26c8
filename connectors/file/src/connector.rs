//! The file crate's connectors, as the runtime sees them.

use flowgate_sdk::{ConnectorError, OpenContext, Registry, Sink, SinkConnector, Source, SourceConnector, async_trait};

use crate::{
    FileSink, FileSinkConfig, FileSource, FileSourceConfig, NullSink, NullSinkConfig, StdinConfig, StdinSource,
    StdoutSink, StdoutSinkConfig,
};

/// Registers `file` and `stdin` sources and `file`, `stdout` and `null` sinks.
pub fn register(registry: &mut Registry) {
    registry.source::<FileSourceConfig>("file");
    registry.source::<StdinConfig>("stdin");
    registry.sink::<FileSinkConfig>("file");
    registry.sink::<StdoutSinkConfig>("stdout");
    registry.sink::<NullSinkConfig>("null");
}

#[async_trait]
impl SourceConnector for FileSourceConfig {
    fn metadata(&self) -> &'static [&'static str] {
        &["path", "line", "offset"]
    }

    async fn open(&self, ctx: &OpenContext) -> Result<Box<dyn Source>, ConnectorError> {
        Ok(Box::new(FileSource::open(self.clone(), ctx).await?))
    }
}

#[async_trait]
impl SourceConnector for StdinConfig {
    async fn open(&self, ctx: &OpenContext) -> Result<Box<dyn Source>, ConnectorError> {
        Ok(Box::new(StdinSource::new(self.clone(), ctx)))
    }
}

#[async_trait]
impl SinkConnector for FileSinkConfig {
    async fn open(&self, _: &OpenContext) -> Result<Box<dyn Sink>, ConnectorError> {
        Ok(Box::new(FileSink::open(self.clone()).await?))
    }
}

#[async_trait]
impl SinkConnector for StdoutSinkConfig {
    async fn open(&self, _: &OpenContext) -> Result<Box<dyn Sink>, ConnectorError> {
        Ok(Box::new(StdoutSink::new(self.clone())))
    }
}

#[async_trait]
impl SinkConnector for NullSinkConfig {
    async fn open(&self, _: &OpenContext) -> Result<Box<dyn Sink>, ConnectorError> {
        Ok(Box::new(NullSink::new(self.clone())))
    }
}
