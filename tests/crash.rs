//! No data loss: SIGKILL the runner in the middle of a file -> SQLite load, several
//! times, restart it each time: every input line ends up in the table. Lines
//! written after the last commit are written again (at-least-once); the test
//! counts and reports those duplicates.

mod common;

use std::time::Duration;

use common::pipeline::{Pipeline, sink, source};
use common::{log, signal, spawn_run, sqlite_rows, wait_exit, wait_for, write_jsonl};
use serde_json::json;

const LINES: u64 = 200_000;

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_run_then_restart_loses_no_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_jsonl(&d.join("input.jsonl"), LINES, 100);
    let db = d.join("out.db");
    let file = Pipeline::new("load")
        .source(source::file("input.jsonl"))
        .sink(sink::sqlite("out.db", "t").with("create_table", true))
        .batch(json!({"size": 2000}))
        .write(d, "load.yaml");

    let count = |db: std::path::PathBuf| async move {
        sqlite_rows(&db, "SELECT count(*) FROM t").await.first().and_then(|r| r[0]).unwrap_or(0) as u64
    };
    let mut kills = 0;
    for round in 1..=3u64 {
        let mut child = spawn_run(d, &file, &["--progress", "0s"]);
        // Kill at a random point once a further quarter of the input is written.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let target = round * LINES / 4 + u64::from(nanos) % (LINES / 8);
        let reached = {
            let db = db.clone();
            tokio::task::spawn_blocking(move || {
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                wait_for(Duration::from_secs(120), || rt.block_on(count(db.clone())) >= target)
            })
            .await
            .unwrap()
        };
        assert!(reached, "round {round}: only {} rows\n{}", count(db.clone()).await, log(d));
        if child.try_wait().unwrap().is_none() {
            signal(&child, libc::SIGKILL);
            kills += 1;
        }
        wait_exit(&mut child, Duration::from_secs(30));
    }
    assert!(kills >= 2, "the runs finished before they could be killed");

    let mut child = spawn_run(d, &file, &["--progress", "0s"]);
    let status = wait_exit(&mut child, Duration::from_secs(300));
    assert!(status.success(), "final run failed:\n{}", log(d));

    let stats = sqlite_rows(&db, "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM t").await;
    let [total, distinct, min, max] = stats[0][..] else { panic!("{stats:?}") };
    let (total, distinct) = (total.unwrap() as u64, distinct.unwrap() as u64);
    eprintln!("{kills} kills: {total} rows for {LINES} lines, {} duplicates", total - distinct);
    assert_eq!(distinct, LINES, "lines are missing");
    assert_eq!((min, max), (Some(0), Some(LINES as i64 - 1)));
    assert!(total >= LINES);
}
