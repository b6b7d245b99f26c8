//! Graceful stop: SIGTERM stops reading, drains what is in flight, commits the
//! position and exits 0, so a restart neither loses nor repeats a line.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{log, signal, spawn_run, wait_exit, wait_for};

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
    std::fs::write(
        d.join("tail.yaml"),
        "name: tail\nsource:\n  file: {path: in.jsonl, follow: true}\nsink:\n  file: {path: out.jsonl}\nbatch: {size: 100, linger: 10ms}\n",
    )
    .unwrap();

    let mut child = spawn_run(d, &d.join("tail.yaml"), &[]);
    assert!(wait_for(Duration::from_secs(30), || lines(&output).len() == 1000), "{}", log(d));
    append(&input, 1000, 1500);
    assert!(wait_for(Duration::from_secs(30), || lines(&output).len() == 1500), "{}", log(d));
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success(), "{}", log(d));

    // Lines written while it was down are picked up after the restart.
    append(&input, 1500, 1700);
    let mut child = spawn_run(d, &d.join("tail.yaml"), &[]);
    append(&input, 1700, 2000);
    assert!(wait_for(Duration::from_secs(30), || lines(&output).len() >= 2000), "{}", log(d));
    signal(&child, libc::SIGINT);
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success(), "{}", log(d));

    let expected: Vec<String> = (0..2000).map(|i| format!(r#"{{"id":{i}}}"#)).collect();
    assert_eq!(lines(&output), expected, "graceful restarts must neither lose nor repeat lines");
    assert!(log(d).contains("resuming file"), "{}", log(d));
}
