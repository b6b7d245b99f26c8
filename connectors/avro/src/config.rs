//! The YAML contract of the `avro` step, of Avro on Kafka, and of the registry.

use std::net::SocketAddr;
use std::path::PathBuf;

use flowgate_sdk::HumanDuration;
use schemars::JsonSchema;
use serde::Deserialize;

/// The address Flowgate's own registry listens on unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8081";

fn default_timeout() -> HumanDuration {
    HumanDuration::from_millis(10_000)
}

/// The Schema Registry a pipeline uses. Without `url`, Flowgate starts its own
/// registry inside `flowgate run` (see `serve`) and uses that.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// A Confluent-compatible registry, such as `http://registry:8081` (Confluent,
    /// Redpanda, or `flowgate registry serve`). Unset: the embedded registry.
    #[serde(default)]
    pub url: Option<String>,
    /// The embedded registry: where it listens and keeps its schemas. Used when
    /// `url` is unset.
    #[serde(default)]
    pub serve: ServeConfig,
    /// Longest wait for one registry request (default 10s); a request that times
    /// out is retried with backoff.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Basic authentication: the user (API key).
    #[serde(default)]
    pub username: Option<String>,
    /// Basic authentication: the password (API secret), e.g. `${REGISTRY_SECRET}`.
    #[serde(default)]
    pub password: Option<flowgate_sdk::Secret>,
    /// A PEM file of the certificate authority an `https` registry's
    /// certificate is checked against, beside the system's. For the embedded
    /// registry with `serve.tls`, its own certificate is trusted by default.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            url: None,
            serve: ServeConfig::default(),
            timeout: default_timeout(),
            username: None,
            password: None,
            ca_cert: None,
        }
    }
}

impl RegistryConfig {
    /// The registry's base URL.
    pub fn url(&self) -> String {
        match &self.url {
            Some(u) => u.clone(),
            None if self.serve.tls.is_some() => format!("https://{}", self.serve.listen),
            None => format!("http://{}", self.serve.listen),
        }
    }

    /// The embedded registry to start, when no `url` is set.
    pub fn embedded(&self) -> Option<&ServeConfig> {
        self.url.is_none().then_some(&self.serve)
    }

    /// The CA file the client trusts: `ca_cert`, else the embedded registry's
    /// own certificate.
    pub fn trusted_ca(&self) -> Option<&std::path::Path> {
        self.ca_cert.as_deref().or_else(|| self.embedded()?.tls.as_ref().map(|t| t.cert.as_path()))
    }
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("a valid address")
}

#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on (default 127.0.0.1:8081).
    #[serde(default = "default_listen")]
    #[schemars(with = "String")]
    pub listen: SocketAddr,
    /// Where schemas are kept: `sqlite:PATH` or `postgres://...` (default a
    /// SQLite file `registry.db` in the state directory).
    #[serde(default)]
    pub store: Option<String>,
    /// A users file: one `name:role:hash` line per user, roles `read` (look
    /// up), `write` (also register) and `admin` (also delete and configure),
    /// hashes from `flowgate registry hash-password`. With it, every request
    /// needs HTTP basic authentication; without it, none does, which is
    /// refused on an address other than loopback.
    #[serde(default)]
    pub users: Option<PathBuf>,
    /// Serve HTTPS with this certificate and key.
    #[serde(default)]
    pub tls: Option<TlsServeConfig>,
    /// Refuse every change (registrations, deletes, configuration).
    #[serde(default)]
    pub read_only: bool,
    /// Host names a request may address (its `Host` header), beside the
    /// listening address and, on loopback, `localhost`: a web page cannot
    /// reach the registry through a name it controls (DNS rebinding).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

/// The certificate of an HTTPS registry.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsServeConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA: when set, clients must present a certificate it signed (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: default_listen(),
            store: None,
            users: None,
            tls: None,
            read_only: false,
            allowed_hosts: Vec::new(),
        }
    }
}

impl ServeConfig {
    /// Why serving as configured would be unsafe: an API that can delete
    /// every schema, open to the network without authentication.
    pub fn problem(&self) -> Option<(&'static str, String, String)> {
        (self.users.is_none() && !self.listen.ip().is_loopback()).then(|| {
            (
                "listen",
                format!("the registry would serve {} without authentication", self.listen),
                "set `users` (a file from `flowgate registry hash-password`), or listen on 127.0.0.1".to_string(),
            )
        })
    }
}

/// A registry subject's version: `latest` or a number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Version {
    #[default]
    Latest,
    Number(u32),
}

impl Version {
    pub fn number(self) -> Option<u32> {
        match self {
            Version::Latest => None,
            Version::Number(n) => Some(n),
        }
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u32),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) if n >= 1 => Ok(Version::Number(n)),
            Raw::S(s) if s == "latest" => Ok(Version::Latest),
            _ => Err(serde::de::Error::custom("a version is `latest` or a number from 1")),
        }
    }
}

impl JsonSchema for Version {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SchemaVersion".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "anyOf": [{"type": "integer", "minimum": 1}, {"const": "latest"}],
            "description": "`latest` (default) or a version number.",
        })
    }
}

/// Where a schema comes from: a local `.avsc` file, or a registry subject.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SchemaSource {
    /// A local Avro schema file (`.avsc`), relative to the working directory.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// A registry subject, such as `orders-value`.
    #[serde(default)]
    pub subject: Option<String>,
    /// With `subject`: `latest` (default, read when the pipeline starts) or a version number.
    #[serde(default)]
    pub version: Version,
}

impl SchemaSource {
    /// Problems of the settings themselves, as messages.
    pub fn problems(&self) -> Vec<String> {
        match (&self.file, &self.subject) {
            (Some(_), Some(_)) => vec!["set either `file` or `subject`, not both".into()],
            (None, None) => vec!["the schema needs `file` (a local .avsc) or `subject` (in the registry)".into()],
            (Some(_), None) if self.version != Version::Latest => {
                vec!["`version` goes with `subject`, not with `file`".into()]
            }
            _ => Vec::new(),
        }
    }
}

/// The `avro` step: checks each record's value against a schema. A record that
/// does not fit goes to the error policy with the path of the first mismatch.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AvroStepConfig {
    /// The schema: `{file: orders.avsc}` or `{subject: orders-value, version: latest}`.
    pub schema: SchemaSource,
}

/// How the registry subject of a value's schema is named.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SubjectName {
    /// `<topic>-value` (default; Confluent's TopicNameStrategy).
    #[default]
    Topic,
    /// The record's full name (RecordNameStrategy).
    Record,
    /// `<topic>-<record full name>` (TopicRecordNameStrategy).
    TopicRecord,
}

fn yes() -> bool {
    true
}

/// Avro values on a Kafka sink, in the Confluent wire format.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AvroSinkConfig {
    /// The schema to encode with. Unset: the one each record carries, from an
    /// `avro` step or a `postgres_cdc` source (a schema per table).
    #[serde(default)]
    pub schema: Option<SchemaSource>,
    /// Subject naming: `topic` (default), `record` or `topic_record`.
    #[serde(default)]
    pub subject_name: SubjectName,
    /// Register schemas the subject does not have yet (default true). When
    /// false, a schema must already be registered under its subject.
    #[serde(default = "yes")]
    pub auto_register: bool,
}

impl Default for AvroSinkConfig {
    fn default() -> Self {
        AvroSinkConfig { schema: None, subject_name: SubjectName::default(), auto_register: true }
    }
}

impl AvroSinkConfig {
    /// The subject for a value of schema `name` (its full name) on `topic`.
    pub fn subject(&self, topic: &str, name: Option<&str>) -> Result<String, String> {
        use schema_registry_converter::schema_registry_common::SubjectNameStrategy as S;
        let named = |strategy: SubjectName| {
            name.map(str::to_string).ok_or_else(|| {
                format!("subject naming `{strategy:?}` needs a named schema (a record), not a primitive one")
            })
        };
        let strategy = match self.subject_name {
            SubjectName::Topic => S::TopicNameStrategy(topic.to_string(), false),
            SubjectName::Record => S::RecordNameStrategy(named(SubjectName::Record)?),
            SubjectName::TopicRecord => S::TopicRecordNameStrategy(topic.to_string(), named(SubjectName::TopicRecord)?),
        };
        strategy.get_subject().map_err(|e| e.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_confluent_strategies() {
        let mut c: AvroSinkConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c.subject("orders", Some("shop.Order")).unwrap(), "orders-value");
        c.subject_name = SubjectName::Record;
        assert_eq!(c.subject("orders", Some("shop.Order")).unwrap(), "shop.Order");
        c.subject_name = SubjectName::TopicRecord;
        assert_eq!(c.subject("orders", Some("shop.Order")).unwrap(), "orders-shop.Order");
        assert!(c.subject("orders", None).is_err());
    }

    #[test]
    fn versions_and_sources() {
        let s: SchemaSource = serde_json::from_str(r#"{"subject": "s", "version": 3}"#).unwrap();
        assert_eq!(s.version, Version::Number(3));
        assert!(s.problems().is_empty());
        assert!(serde_json::from_str::<SchemaSource>(r#"{"subject": "s", "version": 0}"#).is_err());
        let s: SchemaSource = serde_json::from_str(r#"{"file": "a.avsc", "subject": "s"}"#).unwrap();
        assert_eq!(s.problems().len(), 1);
        let r = RegistryConfig::default();
        assert_eq!(r.url(), "http://127.0.0.1:8081");
        assert!(r.embedded().is_some());
    }
}
