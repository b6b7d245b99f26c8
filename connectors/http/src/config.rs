//! The settings of the `http` source and sink: the YAML contract.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use flowgate_formats::{AvroSinkConfig, Format};
use flowgate_sdk::{ByteSize, HumanDuration, RecordTemplate, Secret, redact_url};
use schemars::JsonSchema;
use serde::Deserialize;

/// Receives JSON records over HTTP: `POST` a body of JSON lines (one document
/// per line, blank lines ignored) or one JSON array (one record per element).
/// A request is answered `200 {"accepted": n}` only once all its records are
/// written by the sink (or handled by the error policy); `503` means nothing
/// of it was kept for sure and it should be sent again (at-least-once).
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// Address and port to listen on, such as `127.0.0.1:8088` (`0.0.0.0:8088`
    /// for every interface; port 0 picks a free one, logged at start).
    pub listen: SocketAddr,
    /// The path requests are posted to (default `/`); others get 404.
    #[serde(default = "default_path")]
    pub path: String,
    /// The largest request body taken (default 16MiB); a larger one gets 413.
    #[serde(default = "default_max_request_size")]
    pub max_request_size: ByteSize,
    /// When set, requests must carry `Authorization: Bearer <token>`; others get 401.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Serve HTTPS with this certificate and key.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Requests received but not yet taken into a batch (default 64). When
    /// that many wait, more get `503` with `Retry-After` at once: the pipeline
    /// is behind, and a client that waits and retries loses nothing.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// The `Retry-After` sent with `503` (default 1s; whole seconds, rounded up).
    #[serde(default = "default_retry_after")]
    pub retry_after: HumanDuration,
    /// Connections served at once (default 64); one more is closed as soon as
    /// it is accepted. A request holds its connection until it is answered.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

/// An HTTPS server's certificate and private key.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM file of the certificate's private key.
    pub key: PathBuf,
}

fn default_path() -> String {
    "/".to_string()
}

/// Bodies are held whole while they are checked, so a limit keeps one client
/// from taking the process's memory.
fn default_max_request_size() -> ByteSize {
    ByteSize(16 << 20)
}

fn default_queue() -> usize {
    64
}

fn default_retry_after() -> HumanDuration {
    HumanDuration::from_millis(1000)
}

fn default_max_connections() -> usize {
    64
}

/// The HTTP method of the sink's requests.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Post,
    Put,
}

impl HttpMethod {
    pub fn as_http(self) -> http::Method {
        match self {
            HttpMethod::Post => http::Method::POST,
            HttpMethod::Put => http::Method::PUT,
        }
    }
}

/// How the sink's records become requests.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// One request per batch and distinct URL (and header values), its body
    /// one JSON value per line (`application/x-ndjson`).
    #[default]
    JsonLines,
    /// One request per batch and distinct URL, its body a JSON array of the
    /// values (`application/json`).
    JsonArray,
    /// One request per record, its body the value as it is, or as `format`
    /// encodes it (`application/json` when it is JSON, else
    /// `application/octet-stream`).
    PerRecord,
}

impl Encoding {
    /// Whether the values must be JSON to be put in a body.
    pub fn needs_json(self) -> bool {
        !matches!(self, Encoding::PerRecord)
    }
}

/// Sends records to an HTTP endpoint. A batch is written once every request
/// got a 2xx answer. Connection errors, timeouts, 408, 429 and 5xx are retried
/// (with the engine's backoff, without resending requests of the batch that
/// already succeeded); any other answer refuses the request's records, which
/// go to the error policy with the status and the start of the answer.
/// Redirects are not followed.
#[derive(Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// The URL, fixed or filled from each record
    /// (`https://api.example.com/orders/${value.region}`). Credentials in it
    /// (`https://user:password@host/`) are sent, never shown.
    pub url: RecordTemplate,
    /// `POST` (default) or `PUT`.
    #[serde(default)]
    pub method: HttpMethod,
    /// Headers to send, fixed or filled from each record; values are never
    /// shown (`Authorization: Bearer ${API_TOKEN}`). A `Content-Type` here
    /// replaces the encoding's.
    #[serde(default)]
    pub headers: BTreeMap<String, RecordTemplate>,
    /// `json_lines` (default), `json_array` or `per_record`.
    #[serde(default)]
    pub encoding: Encoding,
    /// `bytes` (default: values as they are), `json` (values that are not JSON
    /// are refused) or `avro`: JSON values encoded to Confluent-framed Avro
    /// with schemas in the pipeline's registry, subjects named after the
    /// pipeline (see `avro`); `avro` needs `encoding: per_record`, since Avro
    /// values are binary.
    #[serde(default)]
    pub format: Format,
    /// With `format: avro`: the schema (default: the one records carry, from an
    /// `avro` step or a `postgres_cdc` source), subject naming and registration.
    #[serde(default)]
    pub avro: Option<AvroSinkConfig>,
    /// How long one request may take, answer included (default 30s).
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// A PEM file of the CA that signs the server's certificate, when it is a
    /// private one (trusted besides the system's).
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
}

fn default_timeout() -> HumanDuration {
    HumanDuration::from_millis(30_000)
}

/// By hand: the URL may hold a password and the headers tokens, and settings
/// are printed in messages.
impl fmt::Debug for HttpSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSinkConfig")
            .field("url", &redact_url(self.url.as_str()))
            .field("method", &self.method)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("encoding", &self.encoding)
            .field("format", &self.format)
            .field("timeout", &self.timeout)
            .field("ca_cert", &self.ca_cert)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_secrets_kept_out_of_debug() {
        let source: HttpSourceConfig = serde_json::from_value(serde_json::json!({
            "listen": "127.0.0.1:0",
            "token": "s3cret",
        }))
        .unwrap();
        assert_eq!((source.path.as_str(), source.queue, source.max_request_size), ("/", 64, ByteSize(16 << 20)));
        assert!(!format!("{source:?}").contains("s3cret"));

        let sink: HttpSinkConfig = serde_json::from_value(serde_json::json!({
            "url": "https://u:pw@example.com/${value.region}",
            "headers": {"Authorization": "Bearer t0ken"},
        }))
        .unwrap();
        assert_eq!((sink.method, sink.encoding, sink.format), (HttpMethod::Post, Encoding::JsonLines, Format::Bytes));
        let shown = format!("{sink:?}");
        assert!(!shown.contains("pw") && !shown.contains("t0ken"), "{shown}");
        assert!(shown.contains("Authorization"), "{shown}");
    }

    #[test]
    fn unknown_settings_are_refused() {
        let r = serde_json::from_value::<HttpSinkConfig>(serde_json::json!({"url": "http://x/", "verb": "GET"}));
        assert!(r.is_err());
    }
}
