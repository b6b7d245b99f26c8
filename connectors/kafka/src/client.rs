//! What the source and sink share: librdkafka settings, logging into `tracing`,
//! and the last error the client reported (for clear messages and `validate --check`).

use std::sync::{Arc, Mutex};

use flowgate_sdk::{Bytes, Header, Metadata, Record};
use rdkafka::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::config::Properties;

/// Builds a client configuration: our defaults first, then the user's
/// `properties`, which win.
pub(crate) fn client_config(bootstrap: &str, defaults: &[(&str, String)], properties: &Properties) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c.set("client.id", "flowgate");
    for (k, v) in defaults {
        c.set(*k, v);
    }
    for (k, v) in &properties.0 {
        c.set(k, v);
    }
    c.set_log_level(RDKafkaLogLevel::Warning);
    c
}

/// Logging and error capture for one client. `name` says which pipeline stage it
/// belongs to.
#[derive(Debug)]
pub(crate) struct ClientLog {
    pub name: Arc<str>,
    last_error: Mutex<Option<String>>,
    /// An error that waiting cannot cure (refused credentials), once reported.
    fatal: Mutex<Option<String>>,
}

impl ClientLog {
    pub fn new(name: Arc<str>) -> Self {
        ClientLog { name, last_error: Mutex::new(None), fatal: Mutex::new(None) }
    }

    pub fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let name = &*self.name;
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", client = name, facility = fac, "{message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", client = name, facility = fac, "{message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", client = name, facility = fac, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", client = name, facility = fac, "{message}"),
        }
    }

    /// Client-level errors (broker down, authentication failed) arrive here; the
    /// client keeps retrying, so they are warnings, and the last one is kept.
    pub fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", client = &*self.name, error = %error, "{reason}");
        let text = format!("{error}: {reason}");
        let fatal = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed | RDKafkaErrorCode::Fatal
            )
        );
        if fatal {
            self.fatal.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| text.clone());
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
    }

    /// Fails with the first unrecoverable client error, if there was one.
    pub fn check_fatal(&self) -> Result<(), flowgate_sdk::ConnectorError> {
        match &*self.fatal.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(flowgate_sdk::ConnectorError::fatal(format!("Kafka client `{}` gave up: {e}", self.name))),
            None => Ok(()),
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Implements `ClientContext` by forwarding to a `ClientLog` field named `log`;
/// with a method name after the type, librdkafka's statistics go to that method.
macro_rules! client_context {
    ($ty:ty $(, $stats:ident)?) => {
        impl rdkafka::ClientContext for $ty {
            fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
                self.log.log(level, fac, message)
            }

            fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
                self.log.error(error, reason)
            }

            $(
                fn stats(&self, statistics: rdkafka::statistics::Statistics) {
                    self.$stats(statistics)
                }
            )?
        }
    };
}
pub(crate) use client_context;

/// A record from a consumed message, or from a failed delivery (to dead-letter it).
pub(crate) fn record_of(m: &BorrowedMessage<'_>, meta: Metadata) -> Record {
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| Header { name: h.key.into(), value: Bytes::copy_from_slice(h.value.unwrap_or_default()) })
                .collect()
        })
        .unwrap_or_default();
    Record {
        key: m.key().map(Bytes::copy_from_slice),
        value: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        headers,
        timestamp: m.timestamp().to_millis(),
        meta,
        schema: None,
    }
}
