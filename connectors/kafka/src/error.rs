use flowgate_sdk::ConnectorError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Errors of the Kafka connectors.
#[derive(Debug, thiserror::Error)]
pub enum KafkaConnectorError {
    #[error("invalid Kafka client setting: {0}")]
    Config(#[source] KafkaError),
    #[error("{context}")]
    Client {
        context: String,
        #[source]
        source: KafkaError,
    },
    #[error("{0}")]
    Other(String),
}

impl KafkaConnectorError {
    pub fn client(context: impl Into<String>, source: KafkaError) -> Self {
        KafkaConnectorError::Client { context: context.into(), source }
    }

    /// Broker outages, timeouts and aborted transactions are worth retrying;
    /// refused settings, authentication and authorization failures and fencing are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            KafkaConnectorError::Client { source, .. } => retryable(source),
            _ => false,
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
