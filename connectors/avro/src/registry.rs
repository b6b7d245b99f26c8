//! The Schema Registry client, through `schema_registry_converter`: schemas by
//! id (for decoding), by subject and version, registration and lookup (for
//! encoding), compatibility checks (for `validate --check`). Everything it
//! learns is cached for the life of the process: an id always names the same
//! schema, and a registered schema keeps its id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_all_subjects, get_schema_by_id, get_schema_by_subject_and_version, is_compatible_schema,
    perform_sr_call, post_schema,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SrCall, SuppliedSchema};

use crate::config::RegistryConfig;
use crate::{Codec, SchemaError};

/// A registry call that failed: `retryable` when the registry was out of
/// reach, timed out, or answered with a server error or "too many requests"
/// (the caller waits and tries again); `status` is the HTTP status, if any.
#[derive(Debug, thiserror::Error)]
#[error("schema registry {url}: {message}")]
pub struct RegistryError {
    pub url: String,
    pub message: String,
    pub retryable: bool,
    pub status: Option<u16>,
    /// The registry's own `error_code` (40403: schema not found), when it sent one.
    pub code: Option<u32>,
}

/// A schema the registry knows, ready to use.
#[derive(Debug)]
pub struct Registered {
    pub id: u32,
    pub codec: Arc<Codec>,
    /// The schema as the registry holds it (its properties kept).
    pub text: String,
}

pub struct RegistryClient {
    /// The URL as shown in messages: its credentials redacted.
    url: String,
    /// Credentials the URL and settings carry, scrubbed from the messages of
    /// the HTTP client, which quote the URL it called.
    secrets: Vec<String>,
    settings: SrSettings,
    by_id: Mutex<HashMap<u32, Arc<Codec>>>,
    /// Ids of schemas registered (or looked up) under a subject, by schema text.
    ids: Mutex<HashMap<(String, Arc<str>), u32>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient").field("url", &self.url).finish()
    }
}

impl RegistryClient {
    pub fn new(config: &RegistryConfig) -> Result<RegistryClient, RegistryError> {
        let full = config.url().trim_end_matches('/').to_string();
        let url = flowgate_sdk::redact_url(&full);
        let mut secrets = flowgate_sdk::url_secrets(&full);
        secrets.extend(config.password.as_ref().map(|p| p.expose().to_string()));
        let mut builder = SrSettings::new_builder(full);
        builder.set_timeout(config.timeout.0).no_proxy();
        if let Some(user) = &config.username {
            builder.set_basic_authorization(user, config.password.as_ref().map(flowgate_sdk::Secret::expose));
        }
        let settings = match config.trusted_ca() {
            Some(ca) => {
                let invalid = |m: String| RegistryError {
                    url: url.clone(),
                    message: m,
                    retryable: false,
                    status: None,
                    code: None,
                };
                let pem = std::fs::read(ca).map_err(|e| invalid(format!("cannot read {}: {e}", ca.display())))?;
                let cert = reqwest::Certificate::from_pem(&pem)
                    .map_err(|e| invalid(format!("{} is not a PEM certificate: {e}", ca.display())))?;
                builder.build_with(reqwest::Client::builder().add_root_certificate(cert))
            }
            None => builder.build(),
        };
        let settings = settings.map_err(|e| error(&url, &secrets, e))?;
        Ok(RegistryClient { url, secrets, settings, by_id: Mutex::default(), ids: Mutex::default() })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn fail(&self, e: SRCError) -> RegistryError {
        error(&self.url, &self.secrets, e)
    }

    /// Counts a request to the registry by outcome: `ok`, `refused` (an
    /// answer that waiting will not change) or `unavailable`.
    fn counted<T>(&self, r: Result<T, SRCError>) -> Result<T, RegistryError> {
        let r = r.map_err(|e| self.fail(e));
        let outcome = match &r {
            Ok(_) => "ok",
            Err(e) if e.retryable => "unavailable",
            Err(_) => "refused",
        };
        metrics::counter!("flowgate_registry_client_requests_total", "outcome" => outcome).increment(1);
        r
    }

    fn invalid(&self, what: &str, e: SchemaError) -> RegistryError {
        RegistryError {
            url: self.url.clone(),
            message: format!("{what}: {e}"),
            retryable: false,
            status: None,
            code: None,
        }
    }

    /// The schema with this id (the writer's schema of a framed value).
    pub async fn schema(&self, id: u32) -> Result<Arc<Codec>, RegistryError> {
        if let Some(c) = self.by_id.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
            cache(true);
            return Ok(Arc::clone(c));
        }
        cache(false);
        let s = self.counted(get_schema_by_id(id, &self.settings).await)?;
        let codec = Arc::new(Codec::parse(&s.schema).map_err(|e| self.invalid(&format!("schema {id}"), e))?);
        self.by_id.lock().unwrap_or_else(|p| p.into_inner()).insert(id, Arc::clone(&codec));
        Ok(codec)
    }

    /// A subject's schema: `None` for the latest version.
    pub async fn version(&self, subject: &str, version: Option<u32>) -> Result<Registered, RegistryError> {
        let s = self.counted(get_schema_by_subject_and_version(&self.settings, subject, version).await)?;
        let codec = Arc::new(Codec::parse(&s.schema).map_err(|e| self.invalid(&format!("subject `{subject}`"), e))?);
        self.by_id.lock().unwrap_or_else(|p| p.into_inner()).entry(s.id).or_insert_with(|| Arc::clone(&codec));
        Ok(Registered { id: s.id, codec, text: s.schema })
    }

    /// The id of `schema` under `subject`: registered when `register`, else looked
    /// up (and an error if the subject does not have it).
    pub async fn id_of(&self, subject: &str, schema: &Arc<str>, register: bool) -> Result<u32, RegistryError> {
        let key = (subject.to_string(), Arc::clone(schema));
        if let Some(id) = self.ids.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            cache(true);
            return Ok(*id);
        }
        cache(false);
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_string());
        let in_subject = |e: RegistryError| {
            let what = if register { "registering" } else { "looking up" };
            RegistryError { message: format!("{what} the schema under subject `{subject}`: {}", e.message), ..e }
        };
        let id = if register {
            self.counted(post_schema(&self.settings, subject.to_string(), supplied).await).map_err(in_subject)?.id
        } else {
            let body = serde_json::json!({"schema": schema.as_ref()}).to_string();
            let found = self
                .counted(perform_sr_call(&self.settings, SrCall::PostForVersion(subject, &body)).await)
                .map_err(in_subject)?;
            found.id.ok_or_else(|| RegistryError {
                url: self.url.clone(),
                message: format!("the lookup of the schema under `{subject}` gave no id"),
                retryable: false,
                status: None,
                code: None,
            })?
        };
        tracing::debug!(subject, id, register, "schema id resolved");
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).insert(key, id);
        Ok(id)
    }

    /// Answers when the registry is reachable and speaks its API.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.counted(get_all_subjects(&self.settings).await).map(drop)
    }

    /// Whether `schema` may be registered under `subject` (its compatibility level).
    pub async fn compatible(&self, subject: &str, schema: &str) -> Result<bool, RegistryError> {
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_string());
        self.counted(is_compatible_schema(&self.settings, subject.to_string(), supplied).await)
    }
}

/// Counts a look-up in the client's cache of ids and schemas.
fn cache(hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    metrics::counter!("flowgate_registry_client_cache_total", "result" => result).increment(1);
}

/// The crate retries only connection failures, 502 and 503; a registry that
/// times out, is overloaded (429) or has a store error (5xx) is waited for too.
fn error(url: &str, secrets: &[String], e: SRCError) -> RegistryError {
    let message = match &e.cause {
        Some(cause) => format!("{}: {cause}", e.error),
        None => e.error.clone(),
    };
    let message = flowgate_sdk::scrub(&message, secrets);
    // "HTTP request to schema registry failed with status 500 Internal Server Error"
    let status = e.error.split("failed with status ").nth(1).and_then(|s| s.get(..3)).and_then(|s| s.parse().ok());
    // A response cut off while its body was read (reqwest's "body error"; a body
    // that arrived whole but is not the registry's JSON is a refusal).
    let cut_off = status.is_none() && e.error.starts_with("could not parse") && message.contains("body error");
    let retryable = e.retriable || cut_off || matches!(status, Some(408 | 429 | 500..=599));
    // "error_code: 40403, message: ..."
    let code = message.split("error_code: ").nth(1).and_then(|s| s.split(',').next()).and_then(|s| s.parse().ok());
    RegistryError { url: url.to_string(), message, retryable, status, code }
}

impl From<RegistryError> for flowgate_sdk::ConnectorError {
    fn from(e: RegistryError) -> Self {
        if e.retryable {
            flowgate_sdk::ConnectorError::transient("the schema registry is out of reach", e)
        } else {
            flowgate_sdk::ConnectorError::fatal_from("the schema registry refused", e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_and_overload_are_waited_for_refusals_are_not() {
        let status =
            |s: &str| SRCError::new(&format!("HTTP request to schema registry failed with status {s}"), None, false);
        for (s, retryable) in [
            ("500 Internal Server Error", true),
            ("504 Gateway Timeout", true),
            ("429 Too Many Requests", true),
            ("404 Not Found", false),
            ("409 Conflict", false),
            ("401 Unauthorized", false),
        ] {
            let e = error("http://r", &[], status(s));
            assert_eq!((e.retryable, e.status), (retryable, s[..3].parse().ok()), "{s}");
        }
        let refused = error("http://r", &[], SRCError::new("http call to schema registry failed", None, true));
        assert!(refused.retryable && refused.status.is_none());
        let body = |cause: &str| {
            error("http://r", &[], SRCError::new("could not parse to RawRegisteredSchema", Some(cause.into()), false))
        };
        assert!(body("error decoding response body: request or response body error").retryable);
        assert!(!body("error decoding response body: expected value at line 1 column 1").retryable);
        let missing = error(
            "http://r",
            &[],
            SRCError::new(
                "HTTP request to schema registry failed with status 404 Not Found",
                Some("error_code: 40403, message: Schema 7 not found".into()),
                false,
            ),
        );
        assert_eq!((missing.status, missing.code), (Some(404), Some(40403)));
    }

    #[test]
    fn credentials_never_reach_a_message() {
        let config = RegistryConfig {
            url: Some("http://user:url-secret@127.0.0.1:1".into()),
            username: Some("user".into()),
            password: Some(flowgate_sdk::Secret::new("field-secret")),
            ..RegistryConfig::default()
        };
        let client = RegistryClient::new(&config).unwrap();
        let quoted = SRCError::new(
            "http call to schema registry failed",
            Some("error sending request for url (http://user:url-secret@127.0.0.1:1/subjects): field-secret".into()),
            true,
        );
        let shown = client.fail(quoted).to_string();
        assert!(!shown.contains("url-secret") && !shown.contains("field-secret"), "{shown}");
        assert!(shown.contains("http://user:***@127.0.0.1:1"), "{shown}");
        assert!(!format!("{client:?} {:?}", config.password).contains("secret"));
    }
}
