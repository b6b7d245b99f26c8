//! The error policy: what happens to records a stage refused.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowgate_sdk::{Ack, Batch, Bytes, DeliveryMode, Record, Rejected, Sink};
use serde_json::json;

use super::{EngineError, Refusals, Stats, deliver};
use crate::config::ErrorPolicy;

pub struct ErrorHandler {
    pub policy: ErrorPolicy,
    pub dead_letter: Option<Box<dyn Sink>>,
    pub pipeline: Arc<str>,
    last_log: Option<Instant>,
    unlogged: u64,
}

/// Logs of skipped records are kept to about one a second, with a count of the rest.
const SKIP_LOG_EVERY: Duration = Duration::from_secs(1);

impl ErrorHandler {
    pub fn new(policy: ErrorPolicy, dead_letter: Option<Box<dyn Sink>>, pipeline: Arc<str>) -> Self {
        ErrorHandler { policy, dead_letter, pipeline, last_log: None, unlogged: 0 }
    }

    /// Disposes of `batch.rejected`; returns once they are durably handled (or the
    /// policy says to stop).
    pub async fn handle(
        &mut self,
        batch: &mut Batch,
        stats: &Stats,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<(), EngineError> {
        if batch.rejected.is_empty() {
            return Ok(());
        }
        let n = batch.rejected.len() as u64;
        stats.rejected(n);
        stats.refused(&batch.rejected);
        match self.policy {
            ErrorPolicy::Fail => {
                let r = &batch.rejected[0];
                Err(EngineError::Refused {
                    stage: r.stage.to_string(),
                    reason: r.reason.clone(),
                    record: locate(&r.record),
                })
            }
            ErrorPolicy::Skip => {
                let now = Instant::now();
                if self.last_log.is_none_or(|t| now.duration_since(t) >= SKIP_LOG_EVERY) {
                    let r = &batch.rejected[0];
                    // Where the record came from, not what it holds: record
                    // contents (personal data) reach the logs only at debug.
                    tracing::warn!(
                        pipeline = %self.pipeline,
                        stage = %r.stage,
                        reason = %r.reason,
                        record = %locate(&r.record),
                        also_skipped = self.unlogged + n - 1,
                        "skipped a refused record"
                    );
                    tracing::debug!(pipeline = %self.pipeline, record = ?preview(&r.record), "the skipped record");
                    self.last_log = Some(now);
                    self.unlogged = 0;
                } else {
                    self.unlogged += n;
                }
                batch.rejected.clear();
                Ok(())
            }
            ErrorPolicy::DeadLetter => {
                let sink = self.dead_letter.as_mut().expect("the config check requires a dead-letter sink");
                // Counted by class once they are durable; the records go into the envelopes.
                let classes: Vec<_> = batch.rejected.iter().map(|r| (Arc::clone(&r.stage), r.class)).collect();
                let mut dlq = Batch::with_capacity(batch.seq, batch.rejected.len());
                dlq.records.extend(batch.rejected.drain(..).map(|r| envelope(&self.pipeline, r)));
                // An asynchronous dead-letter sink holds a share of the refusing
                // batch: it is acknowledged only once its dead letters are durable.
                if sink.delivery() == DeliveryMode::Asynchronous {
                    dlq.ack = batch.ack.as_ref().map(Ack::split);
                }
                // Boxed: `deliver` of the pipeline's sink calls this function (the
                // type is recursive, the calls are not: dead letters refuse nothing).
                let delivered =
                    deliver(sink.as_mut(), "dead_letter", Refusals::DeadLetters, &mut dlq, &self.pipeline, shutdown);
                Box::pin(delivered).await?;
                if let Some(ack) = dlq.ack.take() {
                    ack.ack();
                }
                stats.dead_lettered(n);
                stats.dead_letters(&classes);
                Ok(())
            }
        }
    }
}

/// Where a record came from and its size, for messages at info and above,
/// which must not carry record contents.
pub fn locate(r: &Record) -> String {
    // `topic orders partition 2 offset 17`: the source's metadata, which
    // says where the record is and never what it holds.
    let at = match r.meta.is_empty() {
        true => "a record".to_string(),
        false => r.meta.iter().map(|(name, value)| format!("{name} {value}")).collect::<Vec<_>>().join(" "),
    };
    format!("{at}, {} bytes (its contents are logged with --log debug)", r.value.len())
}

/// The first 120 characters of a record's value, for debug logs.
pub fn preview(r: &Record) -> String {
    let s = String::from_utf8_lossy(&r.value);
    let mut out: String = s.chars().take(120).collect();
    if s.chars().count() > 120 {
        out.push('…');
    }
    out
}

/// The dead-letter form of a refused record: a JSON document with the reason and
/// the whole original record, so nothing about it is lost and it can be replayed.
/// The reason and stage are also set as headers, for sinks that keep headers.
pub fn envelope(pipeline: &str, r: Rejected) -> Record {
    let failed_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let doc = json!({
        "pipeline": pipeline,
        "stage": r.stage.as_ref(),
        "reason": r.reason,
        "failed_at_ms": failed_at,
        "record": r.record.to_json(),
    });
    let mut out = Record {
        key: r.record.key.clone(),
        value: Bytes::from(serde_json::to_vec(&doc).expect("a JSON value serializes")),
        timestamp: r.record.timestamp,
        meta: r.record.meta.clone(),
        headers: Vec::new(),
        schema: None,
    };
    out.set_header("flowgate.error.stage", r.stage.as_bytes().to_vec());
    out.set_header("flowgate.error.reason", r.reason.into_bytes());
    out
}

#[cfg(test)]
mod tests {
    use flowgate_sdk::Metadata;

    use super::*;

    #[test]
    fn envelope_keeps_the_whole_record_and_the_reason() {
        let mut rec = Record::from_value(&b"\xff\x00"[..]);
        rec.key = Some(Bytes::from_static(br#"{"id":7}"#));
        rec.set_header("h", "v");
        rec.meta = Metadata::default().with("path", Arc::from("in.jsonl")).with("line", 3i64).with("offset", 40i64);
        let out = envelope(
            "p",
            Rejected {
                record: rec,
                reason: "bad".into(),
                class: flowgate_sdk::RefusalClass::Refused,
                stage: "sink".into(),
            },
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.value).unwrap();
        assert_eq!(doc["reason"], "bad");
        assert_eq!(doc["stage"], "sink");
        assert_eq!(doc["record"]["key"], json!({"id": 7}));
        assert_eq!(doc["record"]["value_encoding"], "base64");
        assert_eq!(doc["record"]["value"], "/wA=");
        assert_eq!(doc["record"]["headers"]["h"], "v");
        assert_eq!(doc["record"]["source"]["line"], 3);
        assert_eq!(out.header("flowgate.error.reason").unwrap().as_ref(), b"bad");
    }
}
