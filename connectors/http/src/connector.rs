//! The `http` source and sink, as the runtime sees them: their settings'
//! problems, the checks of `validate --check`, the sink's value format, and
//! opening.

use std::path::Path;

use flowgate_formats::{Format, Formatting};
use flowgate_sdk::{
    ConnectorError, OpenContext, Problem, Registry, Sink, SinkConnector, Source, SourceConnector, Stage, ValueFormat,
    async_trait, error_chain, redact_url, scrub, url_secrets,
};
use http::{HeaderName, HeaderValue};

use crate::config::Encoding;
use crate::sink::{client, parse_url};
use crate::{HttpSink, HttpSinkConfig, HttpSource, HttpSourceConfig};

/// Registers the `http` source and sink.
pub fn register(registry: &mut Registry) {
    registry.source::<HttpSourceConfig>("http");
    registry.sink::<HttpSinkConfig>("http");
}

/// A file that must be readable when the connector opens.
fn unreadable(path: &Path, at: &[&str]) -> Option<Problem> {
    std::fs::File::open(path).err().map(|e| Problem::new(at, format!("cannot read {}: {e}", path.display())))
}

#[async_trait]
impl SourceConnector for HttpSourceConfig {
    fn problems(&self, _: &Stage<'_>) -> Vec<Problem> {
        let mut problems = Vec::new();
        if !self.path.starts_with('/') {
            problems.push(Problem::new(["path"], format!("`{}` does not start with `/`", self.path)));
        }
        let sizes = [
            ("max_request_size", self.max_request_size.0),
            ("queue", self.queue as u64),
            ("max_connections", self.max_connections as u64),
        ];
        for (name, value) in sizes {
            if value == 0 {
                problems.push(Problem::new([name], format!("`{name}` must be more than 0")));
            }
        }
        if let Some(tls) = &self.tls {
            problems.extend(unreadable(&tls.cert, &["tls", "cert"]));
            problems.extend(unreadable(&tls.key, &["tls", "key"]));
        }
        problems
    }

    /// The address is free (bound, then released) and the certificate usable.
    async fn check(&self, _: &OpenContext, _: &Stage<'_>) -> Vec<Problem> {
        let mut problems = Vec::new();
        match tokio::net::TcpListener::bind(self.listen).await {
            Ok(listener) => drop(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => problems.push(
                Problem::new(["listen"], format!("address in use: something already listens on {}", self.listen))
                    .with_help("stop it, or choose another port"),
            ),
            Err(e) => problems.push(Problem::new(["listen"], format!("cannot listen on {}: {e}", self.listen))),
        }
        if let Some(tls) = &self.tls
            && let Err(e) = crate::server::tls_acceptor(tls)
        {
            problems.push(Problem::new(["tls"], e.to_string()));
        }
        problems
    }

    async fn open(&self, ctx: &OpenContext) -> Result<Box<dyn Source>, ConnectorError> {
        Ok(Box::new(HttpSource::open(self.clone(), ctx).await?))
    }
}

#[async_trait]
impl SinkConnector for HttpSinkConfig {
    fn problems(&self, stage: &Stage<'_>) -> Vec<Problem> {
        let mut problems: Vec<Problem> = stage.template_problem(["url"], &self.url).into_iter().collect();
        match self.url.fixed() {
            Some(url) => {
                if let Err(message) = parse_url(url) {
                    problems.push(Problem::new(["url"], message));
                }
            }
            // Filled per record: at least the scheme must be there.
            None => {
                let pattern = self.url.pattern().to_ascii_lowercase();
                if !pattern.starts_with("http://") && !pattern.starts_with("https://") {
                    problems.push(
                        Problem::new(["url"], "the URL must start with `http://` or `https://`")
                            .with_help("fields may fill its host, path or query, not its scheme"),
                    );
                }
            }
        }
        for (name, template) in &self.headers {
            problems.extend(stage.template_problem(["headers", name.as_str()], template));
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                problems.push(Problem::new(["headers", name.as_str()], format!("`{name}` is not a valid header name")));
            }
            // The value is not quoted: it may be a credential.
            if let Some(value) = template.fixed()
                && HeaderValue::from_str(value).is_err()
            {
                problems.push(Problem::new(["headers", name.as_str()], "the value is not a valid header value"));
            }
        }
        if self.timeout.0.is_zero() {
            problems.push(Problem::new(["timeout"], "`timeout` must be more than 0"));
        }
        // Lines and arrays are JSON text; an Avro value can only be a body of its own.
        if self.format == Format::Avro && self.encoding != Encoding::PerRecord {
            problems.push(
                Problem::new(
                    ["encoding"],
                    "`format: avro` writes binary values, which `encoding: json_lines`/`json_array` cannot carry",
                )
                .with_help("set `encoding: per_record` (one request per record, its body the Avro value)"),
            );
        }
        if let Some(ca) = &self.ca_cert {
            match std::fs::read(ca) {
                Ok(pem) => {
                    if let Err(e) = reqwest::Certificate::from_pem(&pem) {
                        problems
                            .push(Problem::new(["ca_cert"], format!("{} is not a PEM certificate: {e}", ca.display())));
                    }
                }
                Err(e) => problems.push(Problem::new(["ca_cert"], format!("cannot read {}: {e}", ca.display()))),
            }
        }
        problems
    }

    /// A fixed URL answers at all (to a `HEAD`, whatever the status).
    async fn check(&self, _: &OpenContext, _: &Stage<'_>) -> Vec<Problem> {
        let Some(Ok(url)) = self.url.fixed().map(parse_url) else { return Vec::new() };
        let client = match client(self) {
            Ok(c) => c,
            Err(e) => return vec![Problem::new(["ca_cert"], error_chain(&e))],
        };
        match client.head(url).send().await {
            Ok(_) => Vec::new(),
            Err(e) => {
                let shown = redact_url(self.url.as_str());
                let why = scrub(&error_chain(&e.without_url()), &url_secrets(self.url.as_str()));
                vec![Problem::new(["url"], format!("cannot reach {shown}: {why}"))]
            }
        }
    }

    async fn open(&self, ctx: &OpenContext) -> Result<Box<dyn Sink>, ConnectorError> {
        Ok(Box::new(HttpSink::open(self.clone(), ctx)?))
    }

    /// Subjects are named after the pipeline: the URL may be filled per record,
    /// and names no stream the way a Kafka topic does.
    fn format(&self) -> Option<Box<dyn ValueFormat + '_>> {
        Formatting::sink(self.format, self.avro.as_ref(), None).boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use flowgate_sdk::{Configured, PipelineView, Role};
    use serde_json::json;

    use super::*;

    /// The problems of the sink `settings`, behind an `http` source.
    fn sink_problems(settings: serde_json::Value) -> Vec<Problem> {
        let source: HttpSourceConfig = serde_json::from_value(json!({"listen": "127.0.0.1:0"})).unwrap();
        let config: HttpSinkConfig = serde_json::from_value(settings).unwrap();
        let source = Configured { kind: "http", connector: Arc::new(source) as Arc<dyn SourceConnector> };
        let sink = Configured { kind: "http", connector: Arc::new(config.clone()) as Arc<dyn SinkConnector> };
        let view = PipelineView { name: "p", source: &source, transforms: Vec::new(), sink: &sink, dead_letter: None };
        config.problems(&Stage { kind: "http", role: Role::Sink, pipeline: &view })
    }

    #[test]
    fn avro_values_need_a_request_each() {
        let problems = sink_problems(json!({"url": "http://127.0.0.1:9/", "format": "avro"}));
        let at: Vec<String> = problems.iter().map(|p| p.at.join(".")).collect();
        assert_eq!(at, ["encoding"], "{problems:?}");
        assert!(problems[0].help.as_deref().unwrap_or_default().contains("per_record"), "{problems:?}");
        let fine = sink_problems(json!({"url": "http://127.0.0.1:9/", "format": "avro", "encoding": "per_record"}));
        assert!(fine.is_empty(), "{fine:?}");
    }
}
