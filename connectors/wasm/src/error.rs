use std::path::PathBuf;

use flowgate_sdk::ConnectorError;

/// Problems with a plugin as a whole. None is retryable: a plugin that cannot be
/// loaded or started will not start on a second try. Failures on single records
/// are not errors of this kind; they go to the pipeline's error policy.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    #[error("cannot read plugin {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is a core WebAssembly module, not a component: {hint}")]
    NotAComponent { path: PathBuf, hint: &'static str },
    #[error("cannot compile plugin {path}")]
    Compile {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("plugin {path} does not fit the contract flowgate:transform@0.1.0: {message}")]
    Contract { path: PathBuf, message: String },
    #[error("plugin {plugin} failed to start: {message}")]
    Start { plugin: String, message: String },
    #[error("plugin {plugin} refused its config: {message}")]
    Init { plugin: String, message: String },
    #[error("the WebAssembly engine could not be set up: {0}")]
    Engine(String),
}

impl WasmError {
    pub fn is_retryable(&self) -> bool {
        false
    }
}

impl From<WasmError> for ConnectorError {
    fn from(e: WasmError) -> Self {
        ConnectorError::fatal_from("WebAssembly plugin", e)
    }
}
