//! Bad records: with `policy: dead_letter` each refused record lands in the
//! dead-letter sink with the reason, the rest of its batch is written; with
//! `policy: fail` the pipeline stops with the reason and exit code 1.

mod common;

use std::time::Duration;

use common::pipeline::{Pipeline, sink, source};
use common::{flowgate, log, spawn_run, sqlite_rows, wait_exit};

const INPUT: &str = r#"{"id":1,"v":"a"}
this is not JSON
{"id":2,"v":"b"}
[1,2,3]
{"id":1,"v":"duplicate"}
{"id":3,"v":"c"}
"#;

fn setup(policy: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("in.jsonl"), INPUT).unwrap();
    let pipeline = Pipeline::new("p").source(source::file("in.jsonl")).sink(sink::sqlite("out.db", "t"));
    let pipeline =
        if policy == "dead_letter" { pipeline.dead_letter(sink::file("dlq.jsonl")) } else { pipeline.policy(policy) };
    pipeline.write(d, "p.yaml");
    // A unique key, so that the second id 1 violates a constraint.
    let db = d.join("out.db");
    std::process::Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)'); c.commit()"])
        .arg(&db)
        .status()
        .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_records_go_to_the_dead_letter_file_with_reasons() {
    let dir = setup("dead_letter");
    let d = dir.path();
    let mut child = spawn_run(d, &d.join("p.yaml"), &[]);
    assert!(wait_exit(&mut child, Duration::from_secs(60)).success(), "{}", log(d));

    let rows = sqlite_rows(&d.join("out.db"), "SELECT id FROM t ORDER BY id").await;
    assert_eq!(rows, [[Some(1)], [Some(2)], [Some(3)]]);

    let dlq: Vec<serde_json::Value> = std::fs::read_to_string(d.join("dlq.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dlq.len(), 3, "{dlq:?}");
    assert_eq!(dlq[0]["stage"], "source");
    assert!(dlq[0]["reason"].as_str().unwrap().starts_with("line 2: not JSON"), "{}", dlq[0]);
    assert_eq!(dlq[0]["record"]["value"], "this is not JSON");
    assert_eq!(dlq[0]["record"]["source"]["line"], 2);
    let sink_reasons: Vec<&str> = dlq[1..].iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert!(sink_reasons.iter().any(|r| r.contains("not a JSON object")), "{sink_reasons:?}");
    assert!(sink_reasons.iter().any(|r| r.contains("UNIQUE constraint failed")), "{sink_reasons:?}");
    assert!(dlq.iter().any(|d| d["record"]["value"]["v"] == "duplicate"));
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_fail_stops_with_the_reason() {
    let dir = setup("fail");
    let d = dir.path();
    let mut child = spawn_run(d, &d.join("p.yaml"), &[]);
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", log(d));
    assert!(log(d).contains("line 2: not JSON"), "{}", log(d));
    // Nothing after the refused record's batch was committed as done.
    assert!(!d.join("state/p.file-source.json").exists());
}

#[test]
fn stdin_to_stdout_passes_lines_through() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::new("pipe")
        .source(source::stdin())
        .sink(sink::stdout())
        .policy("skip")
        .write(dir.path(), "pipe.yaml");
    let mut child = flowgate()
        .args(["run", "--state-dir"])
        .arg(dir.path())
        .arg(&p)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"{\"a\":1}\nnot json\n{\"b\":2}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "{\"a\":1}\n{\"b\":2}\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("skipped a refused record"));
}
