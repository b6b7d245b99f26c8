use flowgate_sdk::ConnectorError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Errors of the Kafka connectors.
#[derive(Debug, thiserror::Error)]
pub enum KafkaConnectorError {
    /// librdkafka refused a setting. Holds the message without the value, which
    /// may be a secret.
    #[error("invalid Kafka client setting: {0}")]
    Config(String),
    #[error("{context}")]
    Client {
        context: String,
        #[source]
        source: KafkaError,
    },
    /// The value format's encoder could not be set up (its schema file, no registry).
    #[error("cannot set up the value format")]
    Format(#[source] ConnectorError),
}

impl KafkaConnectorError {
    pub fn config(e: KafkaError) -> Self {
        KafkaConnectorError::Config(redacted(&e))
    }

    pub fn client(context: impl Into<String>, source: KafkaError) -> Self {
        KafkaConnectorError::Client { context: context.into(), source }
    }

    /// Broker outages, timeouts and aborted transactions are worth retrying;
    /// refused settings, authentication and authorization failures and fencing are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            KafkaConnectorError::Client { source, .. } => retryable(source),
            KafkaConnectorError::Format(e) => e.is_retryable(),
            KafkaConnectorError::Config(_) => false,
        }
    }
}

pub(crate) fn retryable(e: &KafkaError) -> bool {
    if let KafkaError::Transaction(t) = e {
        // Abortable ones are retried by aborting and writing the batch again.
        return !t.is_fatal();
    }
    match e.rdkafka_error_code() {
        Some(code) => !matches!(
            code,
            RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                | RDKafkaErrorCode::InvalidConfig
                | RDKafkaErrorCode::InvalidArgument
                | RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::Fatal
                | RDKafkaErrorCode::UnsupportedVersion
                | RDKafkaErrorCode::UnsupportedFeature
                | RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidRecord
        ),
        None => matches!(e, KafkaError::Canceled),
    }
}

impl From<KafkaConnectorError> for ConnectorError {
    fn from(e: KafkaConnectorError) -> Self {
        if e.is_retryable() { ConnectorError::transient("Kafka", e) } else { ConnectorError::fatal_from("Kafka", e) }
    }
}

/// The error's text with a refused setting's value blanked out: librdkafka's
/// messages quote it, and it may be a password.
pub(crate) fn redacted(e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, description, key, value) if !value.is_empty() => {
            format!("`{key}`: {}", description.replace(value.as_str(), "***"))
        }
        KafkaError::ClientConfig(_, description, key, _) => format!("`{key}`: {description}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::BaseConsumer;

    use super::*;

    #[test]
    fn refused_settings_do_not_show_their_values() {
        let e = ClientConfig::new().set("sasl.pasword", "hunter2").create::<BaseConsumer>().err().unwrap();
        let shown = KafkaConnectorError::config(e).to_string();
        assert!(shown.contains("sasl.pasword") && !shown.contains("hunter2"), "{shown}");
        let e = ClientConfig::new().set("acks", "hunter2").create::<BaseConsumer>().err().unwrap();
        let shown = KafkaConnectorError::config(e).to_string();
        assert!(shown.contains("acks") && !shown.contains("hunter2"), "{shown}");
    }
}
