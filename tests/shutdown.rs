//! Graceful stop: SIGTERM stops reading, drains what is in flight, commits the
//! position and exits 0, so a restart neither loses nor repeats a line.

mod common;

use std::io::Write;
use std::time::Duration;

use common::pipeline::{Pipeline, sink, source};
use common::{log, signal, spawn_run, wait_exit, wait_for};
use serde_json::json;

fn append(path: &std::path::Path, from: u64, to: u64) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    for i in from..to {
        writeln!(f, r#"{{"id":{i}}}"#).unwrap();
    }
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(String::from).collect()
}

#[test]
fn sigterm_drains_and_a_restart_continues_exactly_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (input, output) = (d.join("in.jsonl"), d.join("out.jsonl"));
    std::fs::write(&input, "").unwrap();
    append(&input, 0, 1000);
    let file = Pipeline::new("tail")
        .source(source::file("in.jsonl").with("follow", true))
        .sink(sink::file("out.jsonl"))
        .batch(json!({"size": 100, "linger": "10ms"}))
        .write(d, "tail.yaml");

    let mut child = spawn_run(d, &file, &[]);
    assert!(wait_for(Duration::from_secs(30), || lines(&output).len() == 1000), "{}", log(d));
    append(&input, 1000, 1500);
    assert!(wait_for(Duration::from_secs(30), || lines(&output).len() == 1500), "{}", log(d));
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success(), "{}", log(d));

    // Lines written while it was down are picked up after the restart.
    append(&input, 1500, 1700);
    let mut child = spawn_run(d, &file, &[]);
    append(&input, 1700, 2000);
    assert!(wait_for(Duration::from_secs(30), || lines(&output).len() >= 2000), "{}", log(d));
    signal(&child, libc::SIGINT);
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success(), "{}", log(d));

    let expected: Vec<String> = (0..2000).map(|i| format!(r#"{{"id":{i}}}"#)).collect();
    assert_eq!(lines(&output), expected, "graceful restarts must neither lose nor repeat lines");
    assert!(log(d).contains("resuming file"), "{}", log(d));
}

#[test]
fn a_second_run_of_a_running_pipeline_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (input, output) = (d.join("in.jsonl"), d.join("out.jsonl"));
    std::fs::write(&input, "").unwrap();
    append(&input, 0, 10);
    let file = Pipeline::new("tail")
        .source(source::file("in.jsonl").with("follow", true))
        .sink(sink::file("out.jsonl"))
        .write(d, "tail.yaml");
    let mut first = spawn_run(d, &file, &[]);
    assert!(wait_for(Duration::from_secs(30), || lines(&output).len() == 10), "{}", log(d));
    // Same pipeline, same state directory: refused before it reads anything.
    let mut second = spawn_run(d, &file, &[]);
    let status = wait_exit(&mut second, Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{}", log(d));
    assert!(log(d).contains("another run of this pipeline is reading"), "{}", log(d));
    assert!(log(d).contains("tail.file-source.lock"), "the message names the lock: {}", log(d));
    append(&input, 10, 20);
    assert!(wait_for(Duration::from_secs(30), || lines(&output).len() == 20), "{}", log(d));
    // Killed, the first run's lock goes with it.
    signal(&first, libc::SIGKILL);
    wait_exit(&mut first, Duration::from_secs(20));
    let mut third = spawn_run(d, &file, &[]);
    append(&input, 20, 30);
    assert!(wait_for(Duration::from_secs(30), || lines(&output).len() >= 30), "{}", log(d));
    signal(&third, libc::SIGTERM);
    assert!(wait_exit(&mut third, Duration::from_secs(20)).success(), "{}", log(d));
    let mut seen: Vec<String> = lines(&output);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 30);
}
