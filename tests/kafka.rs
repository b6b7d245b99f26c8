//! Kafka source and sink against a real Kafka-protocol broker (tansu on loopback),
//! with the runner killed, doubled and cut off from its broker.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::kafka::{Broker, Reader, S3, Writer, numbered};
use common::pipeline::{Pipeline, sink, source};
use common::{Guard, flowgate, kill, log, plugins_dir, records, repo, spawn_run, stop, wait_exit, wait_for};
use serde_json::{Value, json};

/// A Kafka -> Kafka pipeline, `sink_extra` settings added to the sink's. Test
/// settings keep group joins short.
fn kafka_to_kafka(name: &str, broker: &str, input: &str, output: &str, sink_extra: Value) -> Pipeline {
    Pipeline::new(name)
        .source(source::kafka_quick_group(broker, &[input], &format!("{name}-group")))
        .sink(sink::kafka(broker, output).extend(sink_extra))
        .batch(json!({"size": 500, "linger": "20ms"}))
}

/// [`kafka_to_kafka`] written to `dir/<name>.yaml`.
fn pipeline(dir: &Path, name: &str, broker: &str, input: &str, output: &str, sink_extra: Value) -> PathBuf {
    kafka_to_kafka(name, broker, input, output, sink_extra).write(dir, &format!("{name}.yaml"))
}

/// [`pipeline`] without sink settings, as hand-written text: for the test that
/// checks the line and column a diagnostic points at (`brokers`, line 4,
/// column 14), which the text must keep.
fn hand_written_pipeline(dir: &Path, name: &str, broker: &str, input: &str, output: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    let text = format!(
        r#"name: {name}
source:
  kafka:
    brokers: {broker}
    topics: [{input}]
    group: {name}-group
    session_timeout: 2s
    properties:
      max.poll.interval.ms: "6000"
sink:
  kafka:
    brokers: {broker}
    topic: {output}
batch:
  size: 500
  linger: 20ms
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

const N: u64 = 100_000;

/// Runs a 3-partition Kafka -> Kafka pipeline over N records, SIGKILLs it once
/// `kill_after` records are out, starts it again and reads until every input key
/// is in the output. Returns the reader and what it had read before the kill.
fn kill_and_restart(name: &str, sink_extra: Value, read_committed: bool, kill_after: u64) -> (Reader, u64) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::with_topics(&[("in", 3), ("out", 3)]);
    Writer::new(&broker.addr()).send("in", numbered(0..N));
    let file = pipeline(dir.path(), name, &broker.addr(), "in", "out", sink_extra);

    let mut reader = Reader::new(&broker.addr(), "out", read_committed);
    let mut run = spawn_run(dir.path(), &file, &[]);
    // Kill once some output exists but well before the end.
    let started = reader.read_until(Duration::from_secs(30), |r| r.total >= kill_after);
    assert!(started, "no output\n{}", log(dir.path()));
    kill(&mut run);
    let at_kill = reader.total;

    let mut run = spawn_run(dir.path(), &file, &[]);
    let complete = reader.read_until(Duration::from_secs(60), |r| r.counts.len() as u64 == N);
    // Anything repeated late would show up within this time.
    reader.read_until(Duration::from_secs(2), |_| false);
    stop(&mut run, dir.path());
    assert!(complete, "missing after restart: {} keys, e.g. {:?}", reader.missing(N).len(), &reader.missing(N)[..3]);
    (reader, at_kill)
}

#[test]
fn at_least_once_survives_sigkill_mid_run() {
    let (reader, at_kill) = kill_and_restart("alo", json!({}), false, 5_000);
    eprintln!(
        "at-least-once: {N} distinct of {} records; {} duplicates ({at_kill} read before the kill)",
        reader.total,
        reader.duplicates()
    );
    // Values pass through unchanged.
    assert!(reader.messages[0].value.contains("\"email\":\"user"));
}

#[test]
fn exactly_once_against_the_broker_commits_each_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::with_topics(&[("in", 3), ("out", 3)]);
    Writer::new(&broker.addr()).send("in", numbered(0..20_000));
    let file = pipeline(dir.path(), "eos", &broker.addr(), "in", "out", json!({"delivery": "exactly_once"}));
    let mut run = spawn_run(dir.path(), &file, &[]);
    let mut reader = Reader::new(&broker.addr(), "out", true);
    let complete = reader.read_until(Duration::from_secs(30), |r| r.counts.len() == 20_000);
    // Anything repeated would show up within this second.
    reader.read_until(Duration::from_secs(1), |_| false);
    stop(&mut run, dir.path());
    assert!(complete, "missing: {}\n{}", reader.missing(20_000).len(), log(dir.path()));
    assert_eq!(reader.total, 20_000, "each record exactly once");
    // Offsets were committed in the transactions: a restart reads nothing again.
    let mut run = spawn_run(dir.path(), &file, &[]);
    reader.read_until(Duration::from_secs(5), |_| false);
    stop(&mut run, dir.path());
    assert_eq!(reader.total, 20_000, "a restart repeated records");
}

#[test]
fn two_runners_share_the_partitions_and_the_survivor_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::with_topics(&[("in", 4), ("out", 4)]);
    let file = pipeline(dir.path(), "scale", &broker.addr(), "in", "out", json!({}));
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let mut a = spawn_run(&dir_a, &file, &[]);
    assert!(wait_for(Duration::from_secs(20), || log(&dir_a).contains("partitions assigned")));
    let mut b = spawn_run(&dir_b, &file, &[]);
    // The second member joins: both hold part of the topic.
    assert!(
        wait_for(Duration::from_secs(30), || log(&dir_b).contains("partitions assigned")
            && log(&dir_a).matches("partitions assigned").count() >= 2),
        "no rebalance\nA:\n{}\nB:\n{}",
        log(&dir_a),
        log(&dir_b)
    );
    let last_assignment = |d: &Path| {
        let l = log(d);
        let line = l.lines().rev().find(|l| l.contains("partitions assigned")).unwrap_or("").to_string();
        line.matches("in[").count()
    };
    assert_eq!(last_assignment(&dir_a) + last_assignment(&dir_b), 4, "A:\n{}\nB:\n{}", log(&dir_a), log(&dir_b));
    assert!(last_assignment(&dir_a) > 0 && last_assignment(&dir_b) > 0);

    // Input keeps arriving while A is killed, so B must take A's partitions over.
    let writer = Writer::new(&broker.addr());
    let mut reader = Reader::new(&broker.addr(), "out", false);
    for chunk in 0..5 {
        writer.send("in", numbered(chunk * 10_000..(chunk + 1) * 10_000));
        reader.read_until(Duration::from_millis(200), |_| false);
    }
    kill(&mut a);
    for chunk in 5..10 {
        writer.send("in", numbered(chunk * 10_000..(chunk + 1) * 10_000));
        reader.read_until(Duration::from_millis(200), |_| false);
    }
    let complete = reader.read_until(Duration::from_secs(40), |r| r.counts.len() as u64 == N);
    stop(&mut b, &dir_b);
    assert!(complete, "missing {} keys\nB:\n{}", reader.missing(N).len(), log(&dir_b));
    assert!(log(&dir_b).matches("partitions assigned").count() >= 2, "B never took A's partitions");
    eprintln!("scale-out: {N} distinct of {} records; {} duplicates", reader.total, reader.duplicates());
}

#[test]
fn a_broker_outage_makes_the_pipeline_wait_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3::start();
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut broker = Broker::start_with("s3://tansu/", &env, &[]);
    broker.create_topic("in", 3);
    broker.create_topic("out", 3);
    const M: u64 = 20_000;
    Writer::new(&broker.addr()).send("in", numbered(0..M / 2));
    let file = pipeline(dir.path(), "outage", &broker.addr(), "in", "out", json!({}));
    let mut run = spawn_run(dir.path(), &file, &[]);
    let mut reader = Reader::new(&broker.addr(), "out", false);
    assert!(reader.read_until(Duration::from_secs(30), |r| r.total >= 1_000), "no output\n{}", log(dir.path()));
    eprintln!("outage: {} of {} written when the broker stops", reader.total, M / 2);
    drop(reader);

    broker.stop();
    std::thread::sleep(Duration::from_secs(20));
    assert!(run.try_wait().unwrap().is_none(), "flowgate exited during the outage\n{}", log(dir.path()));
    broker.restart();
    Writer::new(&broker.addr()).send("in", numbered(M / 2..M));

    let mut reader = Reader::new(&broker.addr(), "out", false);
    let complete = reader.read_until(Duration::from_secs(60), |r| r.counts.len() as u64 == M);
    stop(&mut run, dir.path());
    assert!(complete, "missing {} keys\n{}", reader.missing(M).len(), log(dir.path()));
    eprintln!("outage: {M} distinct of {} records; {} duplicates", reader.total, reader.duplicates());
}

fn validate_check(dir: &Path, file: &Path) -> (i32, String) {
    let out = flowgate().arg("validate").arg("--check").arg(file).current_dir(dir).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn validate_check_reports_bad_brokers_missing_topics_and_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::with_topics(&[("in", 1), ("out", 1)]);

    let ok = hand_written_pipeline(dir.path(), "ok", &broker.addr(), "in", "out");
    let out = flowgate().arg("validate").arg("--check").arg(&ok).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let closed_port = common::closed_port();
    let closed = format!("127.0.0.1:{}", closed_port.port);
    let bad = hand_written_pipeline(dir.path(), "bad-address", &closed, "in", "out");
    let (code, err) = validate_check(dir.path(), &bad);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot reach the Kafka brokers") && err.contains(&closed), "{err}");
    assert!(err.contains("bad-address.yaml:4:14"), "points at `brokers`: {err}");

    let missing = hand_written_pipeline(dir.path(), "missing", &broker.addr(), "nope", "also-nope");
    let (code, err) = validate_check(dir.path(), &missing);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("topic `nope` does not exist"), "{err}");
    assert!(err.contains("topic `also-nope` does not exist"), "{err}");

    // Without --check nothing is contacted.
    let out = flowgate().arg("validate").arg(&bad).output().unwrap();
    assert!(out.status.success());

    // At run time a missing source topic stops the pipeline with the reason.
    let mut run = spawn_run(dir.path(), &missing, &[]);
    let status = wait_exit(&mut run, Duration::from_secs(60));
    assert!(!status.success());
    assert!(log(dir.path()).contains("a subscribed topic does not exist"), "{}", log(dir.path()));
}

#[test]
fn wrong_credentials_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_with("memory://tansu/", &[], &["--authentication"]);
    let properties = json!({
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": "${KAFKA_PASSWORD}",
    });
    let file = Pipeline::new("auth")
        .source(source::kafka(&broker.addr(), &["in"], "g").with("properties", properties))
        .sink(sink::stdout())
        .write(dir.path(), "auth.yaml");
    let out = flowgate()
        .arg("validate")
        .arg("--check")
        .arg(&file)
        .env("KAFKA_PASSWORD", "not-the-password")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.to_lowercase().contains("auth"), "{err}");
    assert!(!err.contains("not-the-password"), "the password leaked: {err}");

    // At run time too: the pipeline stops with the reason instead of waiting forever.
    let mut run = flowgate()
        .arg("run")
        .arg(&file)
        .arg("--state-dir")
        .arg(dir.path())
        .env("KAFKA_PASSWORD", "not-the-password")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut run, Duration::from_secs(60));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.to_lowercase().contains("authentication"), "{err}");
    assert!(!err.contains("not-the-password"), "the password leaked: {err}");
}

/// The kill test for `delivery: exactly_once`, on tansu. A kill leaves one
/// transaction open (at most one batch); the restarted runner's producer aborts it.
/// Apache Kafka hides aborted records from `read_committed` readers; tansu shows
/// them (docs/dev-notes/test-broker.md), so what this broker lets us prove is: no
/// record is missing, and the only repeats are at most the one aborted batch.
/// At-least-once delivery repeats everything since the last offset commit
/// (thousands here). librdkafka's mock cluster cannot stand in: it accepts
/// transactional offset commits without storing them.
#[test]
fn exactly_once_survives_sigkill_mid_run() {
    let (reader, at_kill) = kill_and_restart("eos-kill", json!({"delivery": "exactly_once"}), true, 20_000);
    eprintln!(
        "exactly-once: {} records read_committed for {N} inputs, {} repeats ({at_kill} read before the kill)",
        reader.total,
        reader.duplicates()
    );
    assert!(reader.duplicates() <= 500, "more than the one aborted batch repeated: {}", reader.duplicates());
}

/// Runs a shipped pipeline file from `pipelines/` in `dir` with `env`, to its end.
fn run_shipped(dir: &Path, file: &str, env: &[(&str, String)]) -> Guard {
    let stderr = std::fs::File::create(dir.join("flowgate.log")).unwrap();
    Guard(
        flowgate()
            .arg("run")
            .arg(repo().join("pipelines").join(file))
            .args(["--progress", "0s", "--state-dir"])
            .arg(dir.join("state"))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(dir)
            .stderr(stderr)
            .spawn()
            .unwrap(),
    )
}

#[test]
fn file_to_kafka_routes_by_template_and_dead_letters_what_cannot_be_sent() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::with_topics(&[("events.eu", 3), ("events.us", 3)]);
    let mut input = String::new();
    for i in 0..1000 {
        let region = if i % 2 == 0 { "eu" } else { "us" };
        input.push_str(&format!("{{\"id\":{i},\"region\":\"{region}\"}}\n"));
    }
    input.push_str("{\"id\":1000}\n"); // no region: no topic
    input.push_str(&format!("{{\"id\":1001,\"region\":\"eu\",\"pad\":\"{}\"}}\n", "x".repeat(1_500_000)));
    std::fs::write(dir.path().join("events.jsonl"), input).unwrap();
    let env = [("KAFKA_BROKERS", broker.addr()), ("INPUT", "events.jsonl".to_string())];
    let mut run = run_shipped(dir.path(), "file-to-kafka.yaml", &env);
    let status = wait_exit(&mut run, Duration::from_secs(60));
    assert!(status.success(), "{}", log(dir.path()));

    for (topic, parity) in [("events.eu", 0), ("events.us", 1)] {
        let mut reader = Reader::new(&broker.addr(), topic, false);
        reader.read_until(Duration::from_secs(3), |r| r.total >= 500);
        assert_eq!(reader.total, 500, "{topic}");
        // Keyed by the `id` field.
        for m in &reader.messages {
            let id: u64 = m.key.parse().unwrap();
            assert_eq!(id % 2, parity);
            assert!(m.value.contains(&format!("\"id\":{id},")));
        }
    }
    let dead = records(&dir.path().join("events-dead-letters.jsonl"));
    assert_eq!(dead.len(), 2, "{dead:?}");
    let reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert!(reasons.iter().any(|r| r.contains("cannot fill topic") && r.contains("no field `region`")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("Kafka refused the record") && r.contains("too large")), "{reasons:?}");
}

#[test]
fn kafka_to_kafka_masks_with_the_plugin_and_keeps_keys_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::with_topics(&[("orders", 3), ("orders-masked", 3), ("orders-dead-letters", 3)]);
    Writer::new(&broker.addr()).send_with_header("orders", numbered(0..2000), Some(("trace", "abc")));
    let env = [
        ("KAFKA_BROKERS", broker.addr()),
        ("FLOWGATE_PLUGINS", plugins_dir().display().to_string()),
        ("KAFKA_GROUP", "shipped".to_string()),
    ];
    let mut run = run_shipped(dir.path(), "kafka-to-kafka.yaml", &env);
    let mut reader = Reader::new(&broker.addr(), "orders-masked", false);
    let complete = reader.read_until(Duration::from_secs(30), |r| r.counts.len() == 2000);
    stop(&mut run, dir.path());
    assert!(complete, "{}", log(dir.path()));
    for m in &reader.messages {
        let v: serde_json::Value = serde_json::from_str(&m.value).unwrap();
        assert_eq!(m.key, format!("k{}", v["id"]));
        assert_ne!(v["email"], format!("user{}@example.com", v["id"]), "not masked: {v}");
        assert_eq!(v["masked"], true);
        assert_eq!(m.headers, vec![("trace".to_string(), "abc".to_string())]);
    }
}

#[test]
fn a_group_without_offsets_can_start_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::with_topics(&[("in", 2), ("out", 2)]);
    let writer = Writer::new(&broker.addr());
    writer.send("in", numbered(0..100));
    std::thread::sleep(Duration::from_millis(1500));
    let since = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    std::thread::sleep(Duration::from_millis(100));
    writer.send("in", numbered(100..200));
    let starting = source::kafka_quick_group(&broker.addr(), &["in"], "since-group").with("start", since.as_str());
    let file = kafka_to_kafka("since", &broker.addr(), "in", "out", json!({}))
        .source(starting)
        .write(dir.path(), "since.yaml");

    let mut run = spawn_run(dir.path(), &file, &[]);
    let mut reader = Reader::new(&broker.addr(), "out", false);
    let complete = reader.read_until(Duration::from_secs(30), |r| r.total >= 100);
    reader.read_until(Duration::from_secs(2), |_| false);
    stop(&mut run, dir.path());
    assert!(complete, "{}", log(dir.path()));
    assert_eq!(reader.total, 100, "only the records after {since}");
    assert!(reader.counts.keys().all(|k| k[1..].parse::<u64>().unwrap() >= 100), "{:?}", reader.counts.keys());
}

/// Exactly-once through rebalances: a second runner joins while the first has
/// batches in flight, then the first stops while input keeps coming. Each time
/// the runner losing partitions commits its in-flight batches before letting
/// go, so a `read_committed` reader sees every input exactly once.
#[test]
fn exactly_once_holds_across_rebalances() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::with_topics(&[("in", 4), ("out", 4)]);
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    let mut runners = Vec::new();
    for (d, id) in [(&dir_a, "a"), (&dir_b, "b")] {
        std::fs::create_dir_all(d).unwrap();
        let extra = json!({"delivery": "exactly_once", "transactional_id": format!("eos-scale-{id}")});
        runners.push(pipeline(d, "eos-scale", &broker.addr(), "in", "out", extra));
    }
    let writer = Writer::new(&broker.addr());
    let mut reader = Reader::new(&broker.addr(), "out", true);
    let mut a = spawn_run(&dir_a, &runners[0], &[]);
    assert!(wait_for(Duration::from_secs(20), || log(&dir_a).contains("partitions assigned")));
    let mut b = None;
    for chunk in 0..10 {
        writer.send("in", numbered(chunk * 10_000..(chunk + 1) * 10_000));
        reader.read_until(Duration::from_millis(300), |_| false);
        match chunk {
            2 => {
                b = Some(spawn_run(&dir_b, &runners[1], &[]));
                let joined = wait_for(Duration::from_secs(30), || log(&dir_b).contains("partitions assigned"));
                assert!(joined, "B did not join\n{}", log(&dir_b));
            }
            6 => stop(&mut a, &dir_a),
            _ => {}
        }
    }
    let mut b = b.unwrap();
    let complete = reader.read_until(Duration::from_secs(60), |r| r.counts.len() as u64 == N);
    reader.read_until(Duration::from_secs(2), |_| false);
    stop(&mut b, &dir_b);
    assert!(complete, "missing {} keys\nA:\n{}\nB:\n{}", reader.missing(N).len(), log(&dir_a), log(&dir_b));
    assert_eq!(reader.duplicates(), 0, "read_committed saw repeats");
    assert_eq!(reader.total, N);
    assert!(log(&dir_a).matches("partitions revoked").count() >= 1, "A never gave partitions up");
    assert!(log(&dir_b).matches("partitions assigned").count() >= 2, "B never took A's partitions");
}

#[test]
fn a_failed_exactly_once_pipeline_exits_without_waiting_for_its_lost_batches() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::with_topics(&[("in", 1), ("out", 1)]);
    Writer::new(&broker.addr()).send("in", numbered(0..10));
    let extra = json!({"delivery": "exactly_once", "key": "${value.customer}"});
    let file = pipeline(dir.path(), "eos-fail", &broker.addr(), "in", "out", extra);
    let mut run = spawn_run(dir.path(), &file, &[]);
    assert!(wait_for(Duration::from_secs(30), || log(dir.path()).contains("partitions assigned")));
    let refused = std::time::Instant::now();
    let status = wait_exit(&mut run, Duration::from_secs(60));
    assert!(!status.success());
    assert!(log(dir.path()).contains("cannot fill key"), "{}", log(dir.path()));
    // The revocation at close used to wait 30 s for batches that could no longer commit.
    assert!(refused.elapsed() < Duration::from_secs(15), "exit took {:?}", refused.elapsed());
}

#[test]
fn a_json_source_refuses_what_is_not_json_in_its_decode_stage() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::with_topics(&[("mixed", 1)]);
    let writer = Writer::new(&broker.addr());
    writer.send("mixed", numbered(0..100));
    writer.send("mixed", [("bad".to_string(), "id=100,csv".to_string())]);
    writer.send("mixed", numbered(101..200));
    let (out, dead) = (dir.path().join("out.jsonl"), dir.path().join("dead.jsonl"));
    let file = Pipeline::new("json-in")
        .source(source::kafka_quick_group(&broker.addr(), &["mixed"], "json-in").with("format", "json"))
        .sink(sink::file(&out))
        .dead_letter(sink::file(&dead))
        .batch(json!({"size": 50, "linger": "20ms"}))
        .write(dir.path(), "json-in.yaml");
    let mut run = spawn_run(dir.path(), &file, &[]);
    let all = wait_for(Duration::from_secs(60), || common::records_so_far(&out).len() >= 199);
    stop(&mut run, dir.path());
    assert!(all, "{}", log(dir.path()));
    assert_eq!(records(&out).len(), 199, "every JSON value written once");
    let dead = records(&dead);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["stage"], "decode:json", "{dead:?}");
    assert!(dead[0]["reason"].as_str().unwrap().starts_with("the value is not JSON"), "{dead:?}");
    assert_eq!(dead[0]["record"]["value"], "id=100,csv", "{dead:?}");
}
