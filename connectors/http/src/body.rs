//! What a posted body holds: JSON lines, or one JSON array. A body is checked
//! whole before any of it is taken, so a request is kept entirely or not at all.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use flowgate_sdk::Record;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

/// The JSON documents of `body`, each as the text it was sent as: the elements
/// of a body that is one JSON array, else its non-blank lines. The error says
/// where the body stops being JSON (`line 3, column 7: ...`).
pub fn documents(body: &Bytes) -> Result<Vec<Bytes>, String> {
    let Some(first) = body.iter().position(|b| !b.is_ascii_whitespace()) else { return Ok(Vec::new()) };
    if body[first] == b'[' {
        match serde_json::from_slice::<Vec<&RawValue>>(body) {
            Ok(items) => return Ok(items.iter().map(|v| Bytes::copy_from_slice(v.get().as_bytes())).collect()),
            // A first line that is JSON by itself: JSON lines whose first
            // document happens to be an array.
            Err(_) if first_line_is_json(&body[first..]) => {}
            // One array broken somewhere: serde's position is the body's.
            Err(e) => return Err(located(e.line(), e.column(), &e)),
        }
    }
    lines(body)
}

fn first_line_is_json(from: &[u8]) -> bool {
    let line = from.split(|b| *b == b'\n').next().unwrap_or_default();
    serde_json::from_slice::<IgnoredAny>(line.trim_ascii()).is_ok()
}

fn lines(body: &Bytes) -> Result<Vec<Bytes>, String> {
    let mut out = Vec::new();
    for (n, line) in body.split(|b| *b == b'\n').enumerate() {
        let doc = line.trim_ascii(); // Blanks around it, and the `\r` of CRLF.
        if doc.is_empty() {
            continue;
        }
        if let Err(e) = serde_json::from_slice::<IgnoredAny>(doc) {
            return Err(located(n + 1, e.column(), &e));
        }
        // A view of the body, not a copy: `doc` lies within it.
        out.push(body.slice_ref(doc));
    }
    Ok(out)
}

/// `line 3, column 7: expected value`, without serde's own position (which,
/// for a line, counts from the line).
fn located(line: usize, column: usize, e: &serde_json::Error) -> String {
    let message = e.to_string();
    let message = message.rsplit_once(" at line ").map_or(message.as_str(), |(m, _)| m);
    format!("line {line}, column {column}: {message}")
}

/// A request whose body was checked, waiting to be read: its records and
/// where to say how many were written.
pub(crate) struct Submission {
    pub records: Vec<Record>,
    pub reply: oneshot::Sender<usize>,
}

/// Milliseconds since the Unix epoch, the records' timestamp: when they arrived.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The records of a checked body, as the server queues them.
pub(crate) fn records(documents: Vec<Bytes>) -> Vec<Record> {
    let timestamp = Some(now_ms());
    documents.into_iter().map(|value| Record { value, timestamp, ..Record::default() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(body: &str) -> Result<Vec<String>, String> {
        documents(&Bytes::copy_from_slice(body.as_bytes()))
            .map(|d| d.iter().map(|b| String::from_utf8(b.to_vec()).unwrap()).collect())
    }

    #[test]
    fn json_lines_skip_blank_lines_and_carriage_returns() {
        assert_eq!(docs("{\"a\":1}\n\n   \n  {\"b\": 2}  \r\n7\n").unwrap(), [r#"{"a":1}"#, r#"{"b": 2}"#, "7"]);
        assert_eq!(docs("{\"a\":1}").unwrap(), [r#"{"a":1}"#], "no final newline");
        assert!(docs("").unwrap().is_empty());
        assert!(docs(" \n\r\n").unwrap().is_empty());
    }

    #[test]
    fn an_array_is_one_record_per_element() {
        assert_eq!(docs(" [ {\"a\": [1,2]},\n 2 , \"x\" ]\n").unwrap(), [r#"{"a": [1,2]}"#, "2", r#""x""#]);
        assert!(docs("[]").unwrap().is_empty());
        // Arrays on lines of their own are JSON lines.
        assert_eq!(docs("[1]\n[2,3]\n").unwrap(), ["[1]", "[2,3]"]);
    }

    #[test]
    fn a_bad_line_is_named_and_nothing_is_taken() {
        let e = docs("{\"a\":1}\n\n{oops}\n{\"b\":2}\n").unwrap_err();
        assert!(e.starts_with("line 3, column 2:"), "{e}");
        assert!(!e.contains(" at line "), "{e}");
        let e = docs("{\"a\":1}\n{\"a\":1} trailing\n").unwrap_err();
        assert!(e.starts_with("line 2,"), "{e}");
    }

    #[test]
    fn a_broken_array_is_located_in_the_body() {
        let e = docs("[\n  1,\n  2,\n  oops\n]").unwrap_err();
        assert!(e.starts_with("line 4,"), "{e}");
        let e = docs("[1, 2").unwrap_err();
        assert!(e.starts_with("line 1,"), "{e}");
    }
}
