//! The `http` source and sink against real HTTP peers: clients that post and
//! retry what was not acknowledged while the runner is killed, a server that
//! fails on purpose, and Avro values with the embedded registry.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pipeline::{Part, Pipeline, sink, source, transform};
use common::registry::Registry;
use common::{kill, log, spawn_run, stop, wait_exit, wait_for, write_file};
use serde_json::json;

/// The port the `http` source bound, read from the runner's log in `dir`
/// (the source listens on port 0). Only lines after `skip` bytes of log count.
fn source_port(dir: &Path, skip: usize) -> u16 {
    let mut port = None;
    let found = wait_for(Duration::from_secs(30), || {
        let text = log(dir);
        port = text.get(skip..).unwrap_or("").lines().filter(|l| l.contains("http source listening")).find_map(|l| {
            let at = l.split_once("address=")?.1;
            let addr: String = at.chars().take_while(|c| c.is_ascii_digit() || ".:".contains(*c)).collect();
            addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
        });
        port.is_some()
    });
    assert!(found, "the source did not start:\n{}", log(dir));
    port.expect("found")
}

/// One HTTP/1.1 POST; the status, or `None` when nothing answered.
fn post(port: u16, path: &str, body: &str, token: Option<&str>) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

fn ids_in(path: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .map(|v| v["id"].as_u64().expect("an id"))
        .collect()
}

#[test]
fn every_acknowledged_request_is_in_the_sink_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let file = Pipeline::new("http-in")
        .source(Part::new("http", json!({"listen": "127.0.0.1:0", "path": "/in", "token": "s3cret", "queue": 8})))
        .sink(sink::file("out.jsonl").with("fsync", true))
        .batch(json!({"size": 50, "linger": "5ms"}))
        .write(dir.path(), "in.yaml");
    let mut run = spawn_run(dir.path(), &file, &[]);
    let port = Arc::new(Mutex::new(source_port(dir.path(), 0)));
    // Refused without the token, and nothing of it kept.
    let p = *port.lock().unwrap();
    assert_eq!(post(p, "/in", r#"{"id":999999}"#, None), Some(401));
    assert_eq!(post(p, "/in", "{\"id\":999998}\nnot json\n", Some("s3cret")), Some(400));

    // Four clients, each posting 40 requests of 10 records, retrying a request
    // until it is acknowledged, as a client of an at-least-once endpoint does.
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let clients: Vec<_> = (0..4u64)
        .map(|c| {
            let (port, acked) = (Arc::clone(&port), Arc::clone(&acked));
            std::thread::spawn(move || {
                for r in 0..40u64 {
                    let ids: Vec<u64> = (0..10).map(|i| c * 100_000 + r * 10 + i).collect();
                    let body: String = ids.iter().map(|id| format!("{{\"id\":{id}}}\n")).collect();
                    let deadline = Instant::now() + Duration::from_secs(120);
                    loop {
                        let p = *port.lock().unwrap();
                        if post(p, "/in", &body, Some("s3cret")) == Some(200) {
                            acked.lock().unwrap().extend(ids.iter().copied());
                            break;
                        }
                        assert!(Instant::now() < deadline, "request {c}/{r} never acknowledged");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
        })
        .collect();
    // Killed twice mid-stream; each new runner listens on a new port.
    for _ in 0..2 {
        assert!(wait_for(Duration::from_secs(60), || acked.lock().unwrap().len() >= 400), "{}", log(dir.path()));
        let skip = log(dir.path()).len();
        kill(&mut run);
        let acked_at_kill: BTreeSet<u64> = acked.lock().unwrap().clone();
        let written: BTreeSet<u64> = ids_in(&dir.path().join("out.jsonl")).into_iter().collect();
        let lost: Vec<&u64> = acked_at_kill.difference(&written).collect();
        assert!(lost.is_empty(), "acknowledged but not in the file at the kill: {lost:?}");
        run = spawn_run(dir.path(), &file, &[]);
        *port.lock().unwrap() = source_port(dir.path(), skip);
        acked.lock().unwrap().clear();
    }
    for c in clients {
        c.join().expect("client");
    }
    stop(&mut run, dir.path());
    // Every record was acknowledged once, so each is in the file (some more than once).
    let written: BTreeSet<u64> = ids_in(&dir.path().join("out.jsonl")).into_iter().collect();
    for c in 0..4u64 {
        for id in (0..400).map(|i| c * 100_000 + i) {
            assert!(written.contains(&id), "record {id} is missing");
        }
    }
    assert!(!written.contains(&999_999) && !written.contains(&999_998), "refused requests were kept");
}

/// A server that answers the first `unavailable` requests 503, refuses with
/// 422 any request holding a `"bad"` record, and takes the rest; it keeps the
/// bodies it took, as bytes (Avro bodies are binary).
struct Endpoint {
    port: u16,
    taken: Arc<Mutex<Vec<Vec<u8>>>>,
    requests: Arc<Mutex<u64>>,
}

impl Endpoint {
    fn start(unavailable: u64) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (taken, requests) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(0u64)));
        let (t, n) = (Arc::clone(&taken), Arc::clone(&requests));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (t, n) = (Arc::clone(&t), Arc::clone(&n));
                std::thread::spawn(move || serve(conn, unavailable, &t, &n));
            }
        });
        Endpoint { port, taken, requests }
    }
}

fn serve(conn: TcpStream, unavailable: u64, taken: &Mutex<Vec<Vec<u8>>>, requests: &Mutex<u64>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h.trim().is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let n = {
            let mut r = requests.lock().unwrap();
            *r += 1;
            *r
        };
        let (status, answer) = if n <= unavailable {
            ("503 Service Unavailable", "try later")
        } else if String::from_utf8_lossy(&body).contains("\"bad\"") {
            ("422 Unprocessable Entity", "{\"error\":\"field bad is not allowed\"}")
        } else {
            taken.lock().unwrap().push(body);
            ("200 OK", "{}")
        };
        write!(conn, "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{answer}", answer.len()).unwrap();
    }
}

#[test]
fn the_sink_retries_outages_and_sends_refused_requests_to_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = Endpoint::start(3);
    let lines: String = (0..100)
        .map(|i| match i % 25 {
            7 => format!("{{\"id\":{i},\"group\":\"g{}\",\"bad\":true}}\n", i % 5),
            _ => format!("{{\"id\":{i},\"group\":\"g{}\"}}\n", i % 5),
        })
        .collect();
    std::fs::write(dir.path().join("in.jsonl"), lines).unwrap();
    let file = Pipeline::new("http-out")
        .source(source::file("in.jsonl"))
        .sink(Part::new(
            "http",
            json!({
                "url": format!("http://user:pa55@127.0.0.1:{}/groups/${{value.group}}", endpoint.port),
                "headers": {"X-Token": "secret-${value.group}"},
                "encoding": "json_lines",
            }),
        ))
        .dead_letter(sink::file("dead.jsonl"))
        .batch(json!({"size": 20, "linger": "5ms"}))
        .write(dir.path(), "out.yaml");
    let mut run = spawn_run(dir.path(), &file, &["--log", "debug"]);
    assert!(wait_exit(&mut run, Duration::from_secs(60)).success(), "{}", log(dir.path()));
    // Every good record arrived, each exactly once: no request that succeeded was sent again.
    let taken = endpoint.taken.lock().unwrap().clone();
    let mut ids: Vec<u64> = taken
        .iter()
        .flat_map(|b| std::str::from_utf8(b).unwrap().lines())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_u64().unwrap())
        .collect();
    ids.sort();
    // A group holding a bad record is refused whole: its good records are dead letters too.
    let dead: Vec<serde_json::Value> = common::records(&dir.path().join("dead.jsonl"));
    let mut dead_ids: Vec<u64> = dead.iter().map(|d| d["record"]["value"]["id"].as_u64().unwrap()).collect();
    dead_ids.sort();
    let mut all: Vec<u64> = ids.iter().chain(&dead_ids).copied().collect();
    all.sort();
    assert_eq!(all, (0..100).collect::<Vec<_>>(), "each record is either taken once or a dead letter");
    assert!(dead_ids.contains(&7) && dead_ids.contains(&82), "{dead_ids:?}");
    assert!(dead.iter().all(|d| d["reason"].as_str().unwrap().contains("HTTP 422")), "{dead:?}");
    assert!(dead[0]["reason"].as_str().unwrap().contains("field bad is not allowed"), "{dead:?}");
    let log = log(dir.path());
    assert!(log.contains("retrying"), "the 503s were not retried:\n{log}");
    assert!(*endpoint.requests.lock().unwrap() > 3);
    for secret in ["pa55", "secret-g"] {
        assert!(!log.contains(secret), "`{secret}` reached the log:\n{log}");
        assert!(!std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap().contains(secret));
    }
}

#[test]
fn format_avro_sends_framed_values_under_a_subject_named_after_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = Endpoint::start(0);
    let lines: String = (0..5).map(|i| format!("{{\"id\":{i},\"name\":\"n{i}\"}}\n")).collect();
    std::fs::write(dir.path().join("in.jsonl"), lines).unwrap();
    let schema = write_file(
        dir.path(),
        "point.avsc",
        r#"{"type":"record","name":"Point","fields":[{"name":"id","type":"long"},{"name":"name","type":"string"}]}"#,
    );
    let store = format!("sqlite:{}", dir.path().join("reg.db").display());
    let listen = common::reserve_port();
    let file = Pipeline::new("http-avro")
        .source(source::file("in.jsonl"))
        .transform(transform::avro(json!({"file": schema.display().to_string()})))
        .sink(Part::new(
            "http",
            json!({
                "url": format!("http://127.0.0.1:{}/points", endpoint.port),
                "encoding": "per_record",
                "format": "avro",
            }),
        ))
        .registry(json!({"serve": {"listen": format!("127.0.0.1:{}", listen.port), "store": store.as_str()}}))
        .write(dir.path(), "avro.yaml");
    let mut run = spawn_run(dir.path(), &file, &[]);
    assert!(wait_exit(&mut run, Duration::from_secs(60)).success(), "{}", log(dir.path()));
    // The embedded registry is gone with the run: its store, served again, names the id.
    let registry = Registry::start_with(dir.path(), &store);
    let (_, latest) = common::http_get(registry.port, "/subjects/http-avro-value/versions/latest").expect("an answer");
    let id = serde_json::from_str::<serde_json::Value>(&latest).unwrap()["id"].as_u64().expect(&latest) as u32;
    // Magic byte, schema id, then the Avro binary: `id` zigzag-encoded, the name's length and bytes.
    let want: Vec<Vec<u8>> =
        (0..5u8).map(|i| [&[0u8][..], &id.to_be_bytes()[..], &[2 * i, 4, b'n', b'0' + i][..]].concat()).collect();
    assert_eq!(*endpoint.taken.lock().unwrap(), want);
}
