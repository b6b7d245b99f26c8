//! Positions stored by Flowgate 0.1 are where a pipeline resumes after an
//! upgrade: a file source's state file, and the `flowgate_positions` table of an
//! effectively-once SQL sink (fixtures in `tests/fixtures/0.1`).

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::kafka::{Broker, Writer, numbered};
use common::pipeline::{Pipeline, sink, source};
use common::{log, repo, spawn_run, sqlite_rows, stop, wait_exit, wait_for};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(repo().join("tests/fixtures/0.1").join(name)).unwrap()
}

#[test]
fn a_file_source_resumes_from_a_state_file_written_by_0_1() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let lines: Vec<String> = (0..10).map(|i| format!(r#"{{"id":{i}}}"#)).collect();
    std::fs::write(&input, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let offset: usize = lines[..4].iter().map(|l| l.len() + 1).sum();
    let state = fixture("file-source.json")
        .replace("@PATH@", input.to_str().unwrap())
        .replace("@INODE@", &std::fs::metadata(&input).unwrap().ino().to_string())
        .replace("@OFFSET@", &offset.to_string());
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(dir.path().join("state/upgrade.file-source.json"), state).unwrap();
    let file =
        Pipeline::new("upgrade").source(source::file(&input)).sink(sink::file("out.jsonl")).write(dir.path(), "p.yaml");
    let mut run = spawn_run(dir.path(), &file, &[]);
    assert!(wait_exit(&mut run, Duration::from_secs(30)).success(), "{}", log(dir.path()));
    let out = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert_eq!(out.lines().collect::<Vec<_>>(), lines[4..].iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn an_effectively_once_sql_sink_resumes_from_positions_stored_by_0_1() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::with_topics(&[("orders", 1)]);
    Writer::new(&broker.addr()).send("orders", numbered(0..20));
    let db = dir.path().join("out.db");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{}?mode=rwc", db.display())).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(fixture("upgrade-kafka.sql"))).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    });
    let file = Pipeline::new("upgrade")
        .source(source::kafka(&broker.addr(), &["orders"], "upgrade"))
        .sink(sink::sqlite(db.display(), "events").with("create_table", true).with("delivery", "effectively_once"))
        .write(dir.path(), "p.yaml");
    let mut run = spawn_run(dir.path(), &file, &[]);
    let ids = || rt.block_on(sqlite_rows(&db, "SELECT id FROM events ORDER BY id"));
    assert!(wait_for(Duration::from_secs(30), || ids().len() >= 5), "{}", log(dir.path()));
    // Anything before the stored offset would show up now.
    std::thread::sleep(Duration::from_secs(2));
    stop(&mut run, dir.path());
    let expected: Vec<Vec<Option<i64>>> = (15..20).map(|i| vec![Some(i)]).collect();
    assert_eq!(ids(), expected, "{}", log(dir.path()));
    assert!(log(dir.path()).contains("resuming from the position stored with the sink's data"));
}
