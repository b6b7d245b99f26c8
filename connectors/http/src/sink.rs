//! The `http` sink: a batch becomes requests (one per distinct URL and header
//! values, or one per record), and is written once each got a 2xx answer.
//!
//! Retries: a transient failure (no answer, 408, 429, 5xx) makes the engine
//! call `write` again with the same batch. The sink remembers, for the batch
//! it failed on (its `seq` and a fingerprint of its records), which requests
//! were already answered, and sends only the others: a retry repeats no
//! request that succeeded. On a failure `write` leaves the batch as it was;
//! refused records are moved to `batch.rejected` only when the batch is done,
//! so the retried batch splits into the same requests. Progress is forgotten
//! once a batch is done, and whenever another batch arrives.
//!
//! Values: with a `format`, each record's value is encoded before the batch is
//! planned (Avro subjects named after the pipeline); a value the format refuses
//! is refused like a record whose URL cannot be filled. Templates still read
//! the record's own (JSON) value.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use flowgate_formats::Formatting;
use flowgate_sdk::{
    Batch, ConnectorError, EncodeError, OpenContext, Record, RecordTemplate, RefusalClass, Sink, ValueEncoder,
    async_trait, error_chain, redact_url, scrub, url_secrets,
};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use reqwest::Url;
use serde::de::IgnoredAny;

use crate::config::{Encoding, HttpSinkConfig};
use crate::error::{HttpError, retryable_status};

/// How much of a refusing answer is quoted in the refusal's reason.
const QUOTED_CHARS: usize = 200;

/// How much of a 2xx answer is read (so that its connection can be reused);
/// a longer one is dropped with its connection.
const DRAINED_BYTES: usize = 64 << 10;

/// One request of a batch: where it goes, with which header values, and the
/// indices of its records in `batch.records`.
#[derive(Debug)]
struct Group {
    url: Url,
    headers: Vec<HeaderValue>,
    members: Vec<usize>,
}

/// How a batch splits into requests, and the records refused before sending.
#[derive(Debug, Default)]
struct Plan {
    groups: Vec<Group>,
    refused: Vec<(usize, String)>,
}

/// What became of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Sent {
    Pending,
    Written,
    Refused(String),
}

/// What the requests of the batch being written came to, kept across
/// retries of that batch (see the module's documentation).
#[derive(Debug)]
struct Progress {
    seq: u64,
    fingerprint: u64,
    sent: Vec<Sent>,
}

/// How an answer's status is taken.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Written,
    /// Later: the engine retries the batch.
    Retry,
    /// Never: the request's records go to the error policy.
    Refused,
}

fn verdict(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Written,
        s if retryable_status(s) => Verdict::Retry,
        _ => Verdict::Refused,
    }
}

pub struct HttpSink {
    client: reqwest::Client,
    method: Method,
    url: RecordTemplate,
    /// The URL parsed once when it has no fields.
    fixed_url: Option<Url>,
    headers: Vec<(HeaderName, RecordTemplate)>,
    encoding: Encoding,
    /// Credentials of a fixed URL, scrubbed from the client's messages.
    secrets: Vec<String>,
    stage: Arc<str>,
    progress: Option<Progress>,
    /// With a `format`: encodes each value before it is sent.
    encoder: Option<Box<dyn ValueEncoder>>,
    /// What the encoder names subjects after: the pipeline.
    destination: Arc<str>,
}

impl HttpSink {
    /// The encoder of `format` takes the registry client from `ctx`'s resources.
    pub fn open(config: HttpSinkConfig, ctx: &OpenContext) -> Result<Self, HttpError> {
        let fixed_url = match config.url.fixed() {
            Some(u) => Some(parse_url(u).map_err(|message| HttpError::Client { message })?),
            None => None,
        };
        let mut headers = Vec::with_capacity(config.headers.len());
        for (name, template) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| HttpError::Client { message: format!("`{name}` is not a valid header name") })?;
            headers.push((name, template.clone()));
        }
        let encoder =
            Formatting::sink(config.format, config.avro.as_ref(), None).open_encoder(ctx).map_err(HttpError::Format)?;
        Ok(HttpSink {
            client: client(&config)?,
            method: config.method.as_http(),
            secrets: url_secrets(config.url.as_str()),
            url: config.url,
            fixed_url,
            headers,
            encoding: config.encoding,
            stage: "sink".into(),
            progress: None,
            encoder,
            destination: Arc::clone(&ctx.pipeline),
        })
    }

    /// The bytes each record is sent as (its value, or the format's encoding
    /// of it), and the records the format refused, by index (their payload is
    /// empty and never sent). A service error (the registry out of reach)
    /// fails the write before anything is sent: the batch and the progress
    /// stay as they were for the engine's retry.
    async fn encode(&mut self, records: &[Record]) -> Result<(Vec<Bytes>, Vec<(usize, String)>), ConnectorError> {
        let Some(encoder) = self.encoder.as_mut() else {
            return Ok((records.iter().map(|r| r.value.clone()).collect(), Vec::new()));
        };
        let (mut payloads, mut refused) = (Vec::with_capacity(records.len()), Vec::new());
        for (i, record) in records.iter().enumerate() {
            match encoder.encode(record, &self.destination).await {
                Ok(p) => payloads.push(p),
                Err(EncodeError::Record(reason)) => {
                    refused.push((i, reason));
                    payloads.push(Bytes::new());
                }
                Err(EncodeError::Service(e)) => return Err(e),
                Err(other) => return Err(ConnectorError::fatal(other.to_string())),
            }
        }
        Ok((payloads, refused))
    }

    /// Where `record` goes and with which header values, or why it cannot go.
    fn target(&self, record: &Record) -> Result<(Url, Vec<HeaderValue>), String> {
        let mut parsed = None;
        let url = match &self.fixed_url {
            Some(url) => url.clone(),
            None => {
                let text = self.url.render(record, &mut parsed).map_err(|e| format!("url: {e}"))?;
                parse_url(&text)?
            }
        };
        let mut values = Vec::with_capacity(self.headers.len());
        for (name, template) in &self.headers {
            let text = template.render(record, &mut parsed).map_err(|e| format!("header `{name}`: {e}"))?;
            // The value itself is never quoted: it may be a credential.
            let mut value = HeaderValue::from_str(&text)
                .map_err(|_| format!("header `{name}` is not a valid header value once filled"))?;
            value.set_sensitive(true);
            values.push(value);
        }
        // A template that read a `value.` field has parsed the value already.
        if self.encoding.needs_json() && parsed.is_none() && !is_json(&record.value) {
            return Err(format!(
                "the value is not JSON; `encoding: {}` sends JSON (use `per_record` for other values)",
                if self.encoding == Encoding::JsonArray { "json_array" } else { "json_lines" }
            ));
        }
        Ok((url, values))
    }

    /// Splits `records` into requests, in the order of their first records;
    /// `refused` (by index, in order) are refused already.
    fn plan(&self, records: &[Record], refused: Vec<(usize, String)>) -> Plan {
        let mut plan = Plan::default();
        let mut refused = refused.into_iter().peekable();
        let mut index: HashMap<(Url, Vec<HeaderValue>), usize> = HashMap::new();
        for (i, record) in records.iter().enumerate() {
            if let Some(r) = refused.next_if(|(at, _)| *at == i) {
                plan.refused.push(r);
                continue;
            }
            let (url, headers) = match self.target(record) {
                Ok(t) => t,
                Err(reason) => {
                    plan.refused.push((i, reason));
                    continue;
                }
            };
            if self.encoding == Encoding::PerRecord {
                plan.groups.push(Group { url, headers, members: vec![i] });
                continue;
            }
            match index.entry((url, headers)) {
                Entry::Occupied(e) => plan.groups[*e.get()].members.push(i),
                Entry::Vacant(e) => {
                    let (url, headers) = e.key().clone();
                    plan.groups.push(Group { url, headers, members: vec![i] });
                    e.insert(plan.groups.len() - 1);
                }
            }
        }
        plan
    }

    /// The body of a request and its content type, from the records' payloads.
    fn body(&self, group: &Group, payloads: &[Bytes]) -> (Bytes, &'static str) {
        let values = || group.members.iter().map(|&i| &payloads[i]);
        match self.encoding {
            Encoding::PerRecord => {
                let value = values().next().cloned().unwrap_or_default();
                let kind = if is_json(&value) { "application/json" } else { "application/octet-stream" };
                (value, kind)
            }
            Encoding::JsonLines => {
                let mut body = Vec::with_capacity(values().map(|v| v.len() + 1).sum());
                for v in values() {
                    // A line per value: the line breaks of pretty-printed JSON
                    // can only be whitespace between tokens, so spaces do as well.
                    body.extend(v.iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
                    body.push(b'\n');
                }
                (body.into(), "application/x-ndjson")
            }
            Encoding::JsonArray => {
                let mut body = Vec::with_capacity(values().map(|v| v.len() + 1).sum::<usize>() + 2);
                body.push(b'[');
                for (n, v) in values().enumerate() {
                    if n > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(v);
                }
                body.push(b']');
                (body.into(), "application/json")
            }
        }
    }

    /// Sends one request: `Ok(None)` when written, `Ok(Some(reason))` when
    /// refused for good, an error when worth retrying.
    async fn send(&self, group: &Group, payloads: &[Bytes]) -> Result<Option<String>, HttpError> {
        let (body, content_type) = self.body(group, payloads);
        let mut headers = HeaderMap::with_capacity(self.headers.len() + 1);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        // After the content type: a `Content-Type` of the settings replaces it.
        for ((name, _), value) in self.headers.iter().zip(&group.headers) {
            headers.insert(name.clone(), value.clone());
        }
        let shown = || redact_url(group.url.as_str());
        let mut response = self
            .client
            .request(self.method.clone(), group.url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| HttpError::Request { method: self.method.clone(), url: shown(), source: e.without_url() })?;
        let status = response.status().as_u16();
        match verdict(status) {
            Verdict::Written => {
                // The records are written; a failure to read the answer changes nothing.
                let mut read = 0;
                while read < DRAINED_BYTES {
                    match response.chunk().await {
                        Ok(Some(chunk)) => read += chunk.len(),
                        Ok(None) | Err(_) => break,
                    }
                }
                Ok(None)
            }
            Verdict::Retry => {
                let body = scrub(&quote(response).await, &self.secrets);
                Err(HttpError::Status { method: self.method.clone(), url: shown(), status, body })
            }
            Verdict::Refused => Ok(Some(format!("HTTP {status}: {}", scrub(&quote(response).await, &self.secrets)))),
        }
    }
}

#[async_trait]
impl Sink for HttpSink {
    async fn write(&mut self, batch: &mut Batch) -> Result<(), ConnectorError> {
        let (payloads, refused) = self.encode(&batch.records).await?;
        let plan = self.plan(&batch.records, refused);
        let fingerprint = fingerprint(&batch.records, &plan.refused);
        let mut progress = match self.progress.take() {
            Some(p) if p.seq == batch.seq && p.fingerprint == fingerprint && p.sent.len() == plan.groups.len() => {
                let done = p.sent.iter().filter(|s| **s != Sent::Pending).count();
                tracing::debug!(seq = batch.seq, done, "retrying a batch; answered requests are not sent again");
                p
            }
            _ => Progress { seq: batch.seq, fingerprint, sent: vec![Sent::Pending; plan.groups.len()] },
        };
        for (i, group) in plan.groups.iter().enumerate() {
            if progress.sent[i] != Sent::Pending {
                continue;
            }
            match self.send(group, &payloads).await {
                Ok(None) => progress.sent[i] = Sent::Written,
                Ok(Some(reason)) => progress.sent[i] = Sent::Refused(reason),
                // Stop at the first failure: the service is likely down for
                // the others too, and the engine waits before retrying.
                Err(e) => {
                    self.progress = Some(progress);
                    return Err(e.into());
                }
            }
        }
        // Done: the refused records go to the error policy, the rest stay written.
        let mut reasons: Vec<Option<String>> = vec![None; batch.records.len()];
        for (i, reason) in plan.refused {
            reasons[i] = Some(reason);
        }
        for (group, sent) in plan.groups.iter().zip(progress.sent) {
            if let Sent::Refused(reason) = sent {
                for &i in &group.members {
                    reasons[i] = Some(reason.clone());
                }
            }
        }
        if reasons.iter().any(Option::is_some) {
            let records = std::mem::take(&mut batch.records);
            for (record, reason) in records.into_iter().zip(reasons) {
                match reason {
                    Some(reason) => batch.reject(record, RefusalClass::Refused, reason, &self.stage),
                    None => batch.records.push(record),
                }
            }
        }
        Ok(())
    }
}

/// The client of the sink (and of its `validate --check`).
pub(crate) fn client(config: &HttpSinkConfig) -> Result<reqwest::Client, HttpError> {
    // Redirects are not followed: the body of a POST is not resent by most
    // of them, and header credentials must not reach another host.
    let mut builder = reqwest::Client::builder().timeout(config.timeout.0).redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = &config.ca_cert {
        let pem = std::fs::read(ca).map_err(|source| HttpError::ReadFile { path: ca.clone(), source })?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| HttpError::Tls { message: format!("{} is not a PEM certificate: {e}", ca.display()) })?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build().map_err(|e| HttpError::Client { message: error_chain(&e) })
}

/// `text` as an HTTP(S) URL; the error shows it redacted.
pub(crate) fn parse_url(text: &str) -> Result<Url, String> {
    match Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(url),
        Ok(_) => Err(format!("the URL `{}` is not http:// or https://", redact_url(text))),
        Err(e) => Err(format!("`{}` is not a URL: {e}", redact_url(text))),
    }
}

fn is_json(value: &[u8]) -> bool {
    serde_json::from_slice::<IgnoredAny>(value).is_ok()
}

/// The start of an answer's body, on one line, for messages.
async fn quote(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    // Enough bytes for the quoted characters, whatever their UTF-8 length.
    while body.len() < QUOTED_CHARS * 4 {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&body);
    let quoted: String = text.chars().take(QUOTED_CHARS).map(|c| if c.is_control() { ' ' } else { c }).collect();
    quoted.trim().to_string()
}

/// Tells the batch a retry is about from another one with the same `seq`
/// (dead-letter batches may share theirs), and from a retry whose records
/// split into other requests (the format refusing a value it took before, the
/// registry's schema changed meanwhile): progress would not match its requests.
fn fingerprint(records: &[Record], refused: &[(usize, String)]) -> u64 {
    let mut h = DefaultHasher::new();
    records.len().hash(&mut h);
    for r in records {
        r.key.hash(&mut h);
        r.value.hash(&mut h);
    }
    for (i, _) in refused {
        i.hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use flowgate_sdk::{Rejected, Role, StateStore};
    use http_body_util::{BodyExt as _, Full};
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use serde_json::json;

    use super::*;

    #[test]
    fn statuses_are_written_retried_or_refused() {
        for (status, want) in [
            (200, Verdict::Written),
            (201, Verdict::Written),
            (204, Verdict::Written),
            (408, Verdict::Retry),
            (429, Verdict::Retry),
            (500, Verdict::Retry),
            (503, Verdict::Retry),
            (301, Verdict::Refused),
            (400, Verdict::Refused),
            (404, Verdict::Refused),
            (422, Verdict::Refused),
        ] {
            assert_eq!(verdict(status), want, "{status}");
        }
    }

    /// What the test server received: path and body of each request.
    type Seen = Arc<Mutex<Vec<(String, String)>>>;

    /// A server on a free port answering each request with `answer(path, n)`
    /// (`n`: how many requests to that path came before).
    async fn server(answer: fn(&str, usize) -> (u16, &'static str)) -> (SocketAddr, Seen) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let log = Arc::clone(&log);
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let log = Arc::clone(&log);
                    async move {
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let before = {
                            let mut log = log.lock().unwrap();
                            let before = log.iter().filter(|(p, _)| *p == path).count();
                            log.push((path.clone(), String::from_utf8_lossy(&body).into_owned()));
                            before
                        };
                        let (status, text) = answer(&path, before);
                        let mut r = http::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
                        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(r)
                    }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        (address, seen)
    }

    fn sink(settings: serde_json::Value) -> HttpSink {
        let ctx = OpenContext::new("p", "http", Role::Sink, StateStore::new(std::env::temp_dir()));
        HttpSink::open(serde_json::from_value(settings).unwrap(), &ctx).unwrap()
    }

    fn batch(seq: u64, values: &[&str]) -> Batch {
        let mut b = Batch::with_capacity(seq, values.len());
        b.records.extend(values.iter().map(|v| Record::from_value(v.to_string())));
        b
    }

    fn reasons(rejected: &[Rejected]) -> Vec<(String, String)> {
        rejected.iter().map(|r| (String::from_utf8_lossy(&r.record.value).into_owned(), r.reason.clone())).collect()
    }

    #[tokio::test]
    async fn a_retry_does_not_resend_requests_that_succeeded() {
        // /eu always succeeds; /us is down once.
        let (address, seen) = server(|path, before| match (path, before) {
            ("/us", 0) => (503, "down for maintenance"),
            _ => (200, "ok"),
        })
        .await;
        let mut sink = sink(json!({"url": format!("http://{address}/${{value.region}}")}));
        let values = [r#"{"region":"eu","n":1}"#, r#"{"region":"us","n":2}"#, r#"{"region":"eu","n":3}"#];
        let mut b = batch(7, &values);

        let e = sink.write(&mut b).await.unwrap_err();
        assert!(e.is_retryable());
        assert!(e.chain().contains("HTTP 503: down for maintenance"), "{}", e.chain());
        assert_eq!(b.records.len(), 3, "a failed write leaves the batch as it was");
        sink.write(&mut b).await.unwrap();
        assert_eq!((b.records.len(), b.rejected.len()), (3, 0));

        let log = seen.lock().unwrap().clone();
        let paths: Vec<&str> = log.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["/eu", "/us", "/us"], "the /eu request is not sent again");
        assert_eq!(log[0].1, "{\"region\":\"eu\",\"n\":1}\n{\"region\":\"eu\",\"n\":3}\n");

        // Another batch with the same seq starts afresh: progress ended with the batch.
        let mut again = batch(7, &values);
        sink.write(&mut again).await.unwrap();
        assert_eq!(seen.lock().unwrap().len(), 5);
    }

    #[tokio::test]
    async fn refusals_and_unfillable_records_go_to_the_error_policy() {
        let (address, _) = server(|path, _| match path {
            "/bad" => (422, "{\"error\":\"amount must be positive\"}"),
            _ => (204, ""),
        })
        .await;
        let mut sink = sink(json!({
            "url": format!("http://{address}/${{value.to}}"),
            "encoding": "json_array",
            "headers": {"Authorization": "Bearer t0ken"},
        }));
        let mut b = batch(1, &[r#"{"to":"ok"}"#, r#"{"to":"bad","amount":-1}"#, r#"{"no":"target"}"#, "plain"]);
        sink.write(&mut b).await.unwrap();
        let written: Vec<_> = b.records.iter().map(|r| r.value.clone()).collect();
        assert_eq!(written, [r#"{"to":"ok"}"#]);
        let refused = reasons(&b.rejected);
        assert_eq!(refused[0].1, r#"HTTP 422: {"error":"amount must be positive"}"#);
        assert!(refused[1].1.contains("no field `to`"), "{}", refused[1].1);
        assert!(refused[2].1.contains("not JSON"), "{}", refused[2].1);
        assert!(refused.iter().all(|(_, reason)| !reason.contains("t0ken")));
        assert!(b.rejected.iter().all(|r| &*r.stage == "sink"));
    }

    #[tokio::test]
    async fn per_record_sends_each_value_as_it_is() {
        let (address, seen) = server(|_, _| (200, "")).await;
        let mut sink = sink(json!({"url": format!("http://{address}/r"), "encoding": "per_record", "method": "PUT"}));
        let mut b = batch(0, &[r#"{"a":1}"#, "plain text"]);
        sink.write(&mut b).await.unwrap();
        let bodies: Vec<String> = seen.lock().unwrap().iter().map(|(_, b)| b.clone()).collect();
        assert_eq!(bodies, [r#"{"a":1}"#, "plain text"]);
    }

    #[tokio::test]
    async fn format_json_refuses_what_is_not_json_and_sends_the_rest() {
        let (address, seen) = server(|_, _| (200, "")).await;
        let mut sink = sink(json!({"url": format!("http://{address}/r"), "encoding": "per_record", "format": "json"}));
        let mut b = batch(0, &["plain text", r#"{"a":1}"#]);
        sink.write(&mut b).await.unwrap();
        let bodies: Vec<String> = seen.lock().unwrap().iter().map(|(_, b)| b.clone()).collect();
        assert_eq!(bodies, [r#"{"a":1}"#], "the refused value is not sent");
        let written: Vec<_> = b.records.iter().map(|r| r.value.clone()).collect();
        assert_eq!(written, [r#"{"a":1}"#]);
        let refused = reasons(&b.rejected);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, "plain text");
        assert!(refused[0].1.starts_with("the value is not JSON"), "{}", refused[0].1);
    }

    #[tokio::test]
    async fn json_lines_bodies_keep_one_value_per_line() {
        let sink = sink(json!({"url": "http://127.0.0.1:9/"}));
        let payloads = [Bytes::from("{\n  \"a\": 1\n}"), Bytes::from("2")];
        let group = Group { url: Url::parse("http://127.0.0.1:9/").unwrap(), headers: Vec::new(), members: vec![0, 1] };
        let (body, kind) = sink.body(&group, &payloads);
        assert_eq!((&body[..], kind), (&b"{   \"a\": 1 }\n2\n"[..], "application/x-ndjson"));
    }

    #[tokio::test]
    async fn no_answer_is_transient_and_the_url_password_is_not_shown() {
        // Port 0 cannot be connected to: refused at once, nothing to bind.
        let mut sink = sink(json!({"url": "http://app:hunter2@127.0.0.1:0/x", "timeout": "2s"}));
        let e = sink.write(&mut batch(0, &["1"])).await.unwrap_err();
        assert!(e.is_retryable());
        assert!(!e.chain().contains("hunter2"), "{}", e.chain());
    }
}
