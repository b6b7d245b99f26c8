//! Secrets in settings: passwords in URLs and fields. They may be used but
//! never shown: every message, log line, health report and dead letter gets
//! the redacted form.

use std::fmt;

/// Query parameters whose values are credentials, in the URLs of the
/// databases and HTTP services Flowgate talks to.
const SECRET_PARAMS: &[&str] =
    &["password", "passwd", "pwd", "sslpassword", "secret", "token", "access_token", "api_key", "apikey"];

/// Where the credentials are in `url`: the password of its user part and the
/// values of credential query parameters, as byte ranges.
pub fn url_secret_spans(url: &str) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    let Some(scheme_end) = url.find("://") else { return spans };
    let start = scheme_end + 3;
    // The user part ends at the last `@`, wherever it is: a password may hold
    // `@`, `/`, `?` or `#`. An `@` later in a path or query makes this cover
    // more than the password; shown text loses a little, a secret never leaks.
    let mut end = start + url[start..].find(['/', '?', '#']).unwrap_or(url.len() - start);
    if let Some(at) = url[start..].rfind('@')
        && let Some(colon) = url[start..start + at].find(':')
    {
        spans.push(start + colon + 1..start + at);
        let host = start + at;
        end = host + url[host..].find(['/', '?', '#']).unwrap_or(url.len() - host);
    }
    if let Some(q) = url[end..].find('?') {
        let query_start = end + q + 1;
        let query_end = query_start + url[query_start..].find('#').unwrap_or(url.len() - query_start);
        let mut at = query_start;
        for param in url[query_start..query_end].split('&') {
            if let Some((k, _)) = param.split_once('=')
                && SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str())
            {
                spans.push(at + k.len() + 1..at + param.len());
            }
            at += param.len() + 1;
        }
    }
    spans
}

/// `url` with the password of its user part and the values of credential
/// query parameters replaced by `***`: `postgres://app:***@db/shop?password=***`.
/// Text that is not a URL is returned as it is.
pub fn redact_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut from = 0;
    for span in url_secret_spans(url) {
        out.push_str(&url[from..span.start]);
        out.push_str("***");
        from = span.end;
    }
    out.push_str(&url[from..]);
    out
}

/// The secrets `url` carries, as written and percent-decoded, to scrub from
/// text that may quote them (a client library's error message).
pub fn url_secrets(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    for span in url_secret_spans(url) {
        let raw = &url[span];
        if raw.is_empty() {
            continue;
        }
        if let Some(decoded) = percent_decode(raw)
            && decoded != raw
        {
            out.push(decoded);
        }
        out.push(raw.to_string());
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `text` with every one of `secrets` (longest first) replaced by `***`.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut sorted: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for s in sorted {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

/// A setting that is a credential: usable with [`Secret::expose`], shown as
/// `***` by `Debug` and `Display`, so no message or log line can carry it.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that hands it to a client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords_wherever_they_are() {
        for (url, want) in [
            ("postgres://db/shop", "postgres://db/shop"),
            ("postgres://app:s3cr%40t@db:5432/shop", "postgres://app:***@db:5432/shop"),
            ("postgres://app:p@ss@db/shop", "postgres://app:***@db/shop"),
            (
                "postgres://app@db/x?sslmode=require&password=hunter2",
                "postgres://app@db/x?sslmode=require&password=***",
            ),
            ("mysql://u@h/d?PASSWORD=x#frag", "mysql://u@h/d?PASSWORD=***#frag"),
            ("http://user:pw@registry:8081", "http://user:***@registry:8081"),
            ("https://registry/?token=abc", "https://registry/?token=***"),
            ("not a url", "not a url"),
            ("postgres://app:pa#ss@db/shop", "postgres://app:***@db/shop"),
            ("mysql://app:p/w?x@db/x?password=y", "mysql://app:***@db/x?password=***"),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn secrets_of_a_url_are_scrubbed_from_any_text() {
        let url = "postgres://app:s3cr%40t@db/shop?password=hunter2&sslmode=require";
        let secrets = url_secrets(url);
        assert!(secrets.contains(&"s3cr%40t".to_string()), "{secrets:?}");
        assert!(secrets.contains(&"s3cr@t".to_string()), "{secrets:?}");
        assert!(secrets.contains(&"hunter2".to_string()), "{secrets:?}");
        let text = format!("error for url ({url}): password s3cr@t refused");
        let clean = scrub(&text, &secrets);
        assert!(!clean.contains("hunter2") && !clean.contains("s3cr"), "{clean}");
        assert_eq!(format!("{:?} {}", Secret::new("x"), Secret::new("x")), "\"***\" ***");
    }
}
