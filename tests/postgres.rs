//! Postgres change data capture against a real PostgreSQL (a private server per
//! test, `wal_level = logical`) and, for the Kafka cases, a real broker (tansu).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::kafka::{Broker, Reader};
use common::pipeline::{Part, Pipeline, sink};
use common::postgres::Postgres;
use common::{kill, log, records, records_so_far, rss_kib, spawn_run, stop, wait_exit, wait_for, write_file};
use serde_json::{Value, json};

/// A `postgres_cdc` pipeline from `pg`, with `source_extra` settings beside the
/// source's `url`, into `target`.
fn pipeline(dir: &Path, name: &str, pg: &Postgres, source_extra: Value, target: Part) -> PathBuf {
    Pipeline::new(name)
        .source(Part::new("postgres_cdc", json!({"url": pg.url()})).extend(source_extra))
        .sink(target)
        .batch(json!({"size": 1000, "linger": "20ms"}))
        .write(dir, &format!("{name}.yaml"))
}

fn kafka_sink(broker: &Broker) -> Part {
    sink::kafka(&broker.addr(), "${meta.schema}.${meta.table}").with("linger", "5ms")
}

fn file_sink(path: &Path) -> Part {
    sink::file(path).with("fsync", false)
}

fn json_of(m: &common::kafka::Msg) -> Option<Value> {
    if m.value.is_empty() { None } else { Some(serde_json::from_str(&m.value).unwrap()) }
}

/// A table's rows as `id -> {column: value}`, through Postgres' own JSON.
fn table_rows(pg: &Postgres, table: &str) -> BTreeMap<i64, Value> {
    let text = pg.sql(&format!("SELECT coalesce(json_agg(t), '[]') FROM {table} t"));
    let rows: Vec<Value> = serde_json::from_str(&text).unwrap();
    rows.into_iter().map(|r| (r["id"].as_i64().unwrap(), r)).collect()
}

/// The table as the change events say it is: per key, the last event's `after`.
fn rebuilt(messages: &[common::kafka::Msg]) -> BTreeMap<i64, Value> {
    let mut state = BTreeMap::new();
    for m in messages {
        let Some(v) = json_of(m) else { continue };
        let key: Value = serde_json::from_str(&m.key).unwrap();
        let id = key["id"].as_i64().unwrap();
        match v["op"].as_str().unwrap() {
            "d" => {
                state.remove(&id);
            }
            _ => {
                state.insert(id, v["after"].clone());
            }
        }
    }
    state
}

#[test]
fn a_snapshot_taken_under_writes_and_the_stream_after_it_rebuild_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    pg.sql("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, note text); INSERT INTO items SELECT g, 0, 'row ' || g FROM generate_series(1, 100000) g");
    let broker = Broker::with_topics(&[("public.items", 3)]);
    let writes = write_file(
        dir.path(),
        "writes.sql",
        "\\set id random(1, 120000)\n\
         INSERT INTO items VALUES (:id, 1, 'new') ON CONFLICT (id) DO UPDATE SET v = items.v + 1, note = 'upd';\n\
         \\set d random(1, 120000)\n\
         DELETE FROM items WHERE id = :d;\n",
    );
    let mut writer = pg.pgbench(&writes, 2, 10);
    std::thread::sleep(Duration::from_millis(500)); // Writes are under way when the snapshot starts.
    let file = pipeline(dir.path(), "snap", &pg, json!({"tables": ["items"]}), kafka_sink(&broker));
    let mut run = spawn_run(dir.path(), &file, &[]);
    assert!(writer.wait().unwrap().success(), "pgbench failed");
    pg.wait_caught_up("flowgate_snap", dir.path());

    let mut reader = Reader::new(&broker.addr(), "public.items", false).keep_all();
    let expected = table_rows(&pg, "items");
    reader.read_until(Duration::from_secs(5), |_| false);
    assert!(reader.total > 100_000, "only {} events", reader.total);
    let state = rebuilt(&reader.messages);
    let snapshot_rows = reader.messages.iter().filter(|m| m.value.contains(r#""op":"r""#)).count();
    // The writer deletes and inserts from the start, so the consistent point holds about 100k rows.
    assert!(snapshot_rows > 50_000, "{snapshot_rows} snapshot events");
    assert_eq!(state.len(), expected.len(), "row count differs");
    let differing: Vec<_> = expected.iter().filter(|(id, row)| state.get(id) != Some(row)).take(5).collect();
    assert!(differing.is_empty(), "rows differ from the table, e.g. {differing:?}");
    stop(&mut run, dir.path());
}

/// Every counter's updates in the topic, in commit order and without a gap
/// (n at the snapshot, n + 1, ...), and every committed `log` insert: what
/// the counters workload (`counters` and `log` tables) must leave in Kafka.
fn assert_counters_complete(pg: &Postgres, broker: &Broker, what: &str) {
    let mut counters = Reader::new(&broker.addr(), "public.counters", false).keep_all();
    counters.read_until(Duration::from_secs(5), |_| false);
    let mut seen: HashMap<i64, Vec<i64>> = HashMap::new();
    let mut events = HashSet::new();
    let mut repeats = 0;
    for m in &counters.messages {
        let v = json_of(m).unwrap();
        let id = v["after"]["id"].as_i64().unwrap();
        // A change is identified by its LSN; snapshot rows all carry the consistent
        // point, which a change right after it can start at too.
        if !events.insert((id, v["op"] == "r", v["source"]["lsn"].as_u64().unwrap())) {
            repeats += 1;
            continue;
        }
        seen.entry(id).or_default().push(v["after"]["n"].as_i64().unwrap());
    }
    let finals = table_rows(pg, "counters");
    for (id, row) in &finals {
        let got = seen.get(id).unwrap_or_else(|| panic!("no events for counter {id}"));
        let want: Vec<i64> = (got[0]..=row["n"].as_i64().unwrap()).collect();
        assert_eq!(got, &want, "counter {id}: changes missing or out of order");
    }
    // Every committed insert is there.
    let mut logged = Reader::new(&broker.addr(), "public.log", false).keep_all();
    logged.read_until(Duration::from_secs(5), |_| false);
    let ids: HashSet<i64> =
        logged.messages.iter().map(|m| json_of(m).unwrap()["after"]["id"].as_i64().unwrap()).collect();
    let expected = table_rows(pg, "log");
    let missing = expected.keys().filter(|id| !ids.contains(id)).count();
    assert_eq!(missing, 0, "log rows missing from the topic");
    let log_repeats = logged.messages.len() - ids.len();
    eprintln!(
        "{what}: {} counter updates and {} inserts out; repeated after restarts: {repeats} and {log_repeats}",
        events.len(),
        ids.len()
    );
}

/// The counters workload: 500 counters and a log of their updates, written
/// by pgbench transactions (`writes.sql` in `dir`).
fn counters_workload(pg: &Postgres, dir: &Path) -> PathBuf {
    pg.sql(
        "CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL);
         INSERT INTO counters SELECT g, 0 FROM generate_series(1, 500) g;
         CREATE TABLE log (id bigserial PRIMARY KEY, counter int NOT NULL)",
    );
    write_file(
        dir,
        "writes.sql",
        "\\set id random(1, 500)\nBEGIN;\nUPDATE counters SET n = n + 1 WHERE id = :id;\n\
         INSERT INTO log (counter) VALUES (:id);\nEND;\n",
    )
}

#[test]
fn a_runner_killed_again_and_again_loses_no_committed_change() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    let writes = counters_workload(&pg, dir.path());
    let broker = Broker::with_topics(&[("public.counters", 3), ("public.log", 3)]);
    let file = pipeline(
        dir.path(),
        "kills",
        &pg,
        json!({"tables": ["counters", "log"], "snapshot": "initial"}),
        kafka_sink(&broker),
    );
    let mut run = spawn_run(dir.path(), &file, &[]);
    let mut writer = pg.pgbench(&writes, 2, 16);
    // Kills during streaming: one during the snapshot would, by design, take the snapshot again.
    assert!(
        wait_for(Duration::from_secs(30), || log(dir.path()).contains("initial snapshot written")),
        "{}",
        log(dir.path())
    );
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    for i in 0..4u32 {
        // A moment between 1 and 3 s, different every run.
        let pause = 1000 + u64::from(seed.rotate_left(i * 8) % 2000);
        std::thread::sleep(Duration::from_millis(pause));
        kill(&mut run);
        eprintln!("killed after {pause} ms");
        run = spawn_run(dir.path(), &file, &[]);
    }
    assert!(writer.wait().unwrap().success(), "pgbench failed");
    pg.wait_caught_up("flowgate_kills", dir.path());
    assert_counters_complete(&pg, &broker, "4 kills");
    stop(&mut run, dir.path());
}

#[test]
fn an_idle_slot_keeps_up_with_writes_to_unpublished_tables() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    pg.sql("CREATE TABLE watched (id int PRIMARY KEY); CREATE TABLE other (id serial PRIMARY KEY, pad text)");
    let file = pipeline(dir.path(), "idle", &pg, json!({"tables": ["watched"], "snapshot": "never"}), sink::null());
    let mut run = spawn_run(dir.path(), &file, &[]);
    pg.wait_streaming("flowgate_idle", dir.path());
    let start = pg.current_lsn();
    let writes = write_file(
        dir.path(),
        "other.sql",
        "INSERT INTO other (pad) SELECT repeat('x', 500) FROM generate_series(1, 50);\n",
    );
    let mut writer = pg.pgbench(&writes, 1, 6);
    let mut worst = 0u64;
    while writer.try_wait().unwrap().is_none() {
        worst = worst.max(pg.current_lsn().saturating_sub(pg.confirmed("flowgate_idle")));
        std::thread::sleep(Duration::from_millis(200));
    }
    let written = pg.current_lsn() - start;
    std::thread::sleep(Duration::from_secs(3));
    let lag = pg.current_lsn() - pg.confirmed("flowgate_idle");
    eprintln!("wrote {written} bytes of WAL; slot lag at most {worst} while writing, {lag} after");
    assert!(written > 20 << 20, "the workload wrote only {written} bytes of WAL");
    assert!(lag < 64 << 10, "the idle slot lags {lag} bytes behind");
    assert!(worst < written / 2, "the slot lagged {worst} of {written} bytes while writes went on");
    stop(&mut run, dir.path());
}

#[test]
fn types_toast_values_and_schema_changes_come_through() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    pg.sql(
        "CREATE TABLE every_type (id int PRIMARY KEY, i2 smallint, i8 bigint, num numeric(12,3), big numeric,
           f4 real, f8 double precision, b bool, t text, vc varchar(10), d date, tm time, ts timestamp,
           tstz timestamptz, u uuid, j json, jb jsonb, ia int[], ta text[], by bytea, nothing text);
         CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         CREATE TABLE docs_full (id int PRIMARY KEY, body text, n int);
         ALTER TABLE docs_full ALTER COLUMN body SET STORAGE EXTERNAL;
         ALTER TABLE docs_full REPLICA IDENTITY FULL;
         INSERT INTO docs VALUES (1, repeat('x', 10000), 1);
         INSERT INTO docs_full VALUES (1, repeat('y', 10000), 1);",
    );
    let out = dir.path().join("out.jsonl");
    let file =
        pipeline(dir.path(), "types", &pg, json!({"tables": ["every_type", "docs", "docs_full"]}), file_sink(&out));
    let mut run = spawn_run(dir.path(), &file, &[]);
    pg.wait_streaming("flowgate_types", dir.path());
    pg.sql(
        r#"INSERT INTO every_type VALUES (1, -32768, 9007199254740993, 123.450, 1e-30, 1.5, 'NaN', true,
             'héllo "q"\', 'abc', '1969-07-20', '12:34:56.789', '1960-01-01 00:00:00.5',
             '2024-02-29 23:00:00+02', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2]}', '{"b": null}',
             '{1,NULL,3}', '{"a,b",c}', '\x0001ff', NULL);
           UPDATE docs SET n = 2 WHERE id = 1;
           UPDATE docs_full SET n = 2 WHERE id = 1;
           BEGIN;
           ALTER TABLE docs ADD COLUMN extra text DEFAULT 'd';
           INSERT INTO docs VALUES (2, 'short', 1, 'e');
           COMMIT;
           ALTER TABLE docs ALTER COLUMN n TYPE bigint;
           INSERT INTO docs VALUES (3, 'short', 9000000000, 'f');
           ALTER TABLE docs DROP COLUMN extra;
           INSERT INTO docs VALUES (4, 'short', 4);
           DELETE FROM docs WHERE id = 4;
           TRUNCATE docs_full;"#,
    );
    pg.wait_caught_up("flowgate_types", dir.path());
    stop(&mut run, dir.path());
    let events = common::records_after_kills(&out, 4);
    let find = |table: &str, op: &str, id: i64| -> Value {
        events
            .iter()
            .find(|e| {
                e["source"]["table"] == table && e["op"] == op && (e["after"]["id"] == id || e["before"]["id"] == id)
            })
            .unwrap_or_else(|| panic!("no {op} of {table} {id} in {events:#?}"))
            .clone()
    };
    assert_eq!(
        find("every_type", "c", 1)["after"],
        json!({"id": 1, "i2": -32768, "i8": 9007199254740993u64, "num": "123.450", "big": "0.000000000000000000000000000001",
               "f4": 1.5, "f8": "NaN", "b": true, "t": "héllo \"q\"\\", "vc": "abc", "d": "1969-07-20",
               "tm": "12:34:56.789", "ts": "1960-01-01T00:00:00.5", "tstz": "2024-02-29T21:00:00Z",
               "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "j": {"a": [1, 2]}, "jb": {"b": null},
               "ia": [1, null, 3], "ta": ["a,b", "c"], "by": "AAH/", "nothing": null})
    );
    // The snapshot read the TOASTed values in full.
    assert_eq!(find("docs", "r", 1)["after"]["body"].as_str().unwrap().len(), 10_000);
    // An update that leaves a TOASTed value alone: a placeholder under the default
    // replica identity, the old value under FULL. Never null.
    let update = find("docs", "u", 1);
    assert_eq!(update["after"], json!({"id": 1, "body": "__debezium_unavailable_value", "n": 2}));
    let update = find("docs_full", "u", 1);
    assert_eq!(update["after"]["body"].as_str().unwrap(), "y".repeat(10_000));
    assert_eq!(update["before"]["n"], 1);
    // Schema changes: the next events carry the new shape.
    assert_eq!(find("docs", "c", 2)["after"], json!({"id": 2, "body": "short", "n": 1, "extra": "e"}));
    assert_eq!(find("docs", "c", 3)["after"], json!({"id": 3, "body": "short", "n": 9000000000u64, "extra": "f"}));
    assert_eq!(find("docs", "c", 4)["after"], json!({"id": 4, "body": "short", "n": 4}));
    assert_eq!(find("docs", "d", 4)["before"], json!({"id": 4, "body": null, "n": null}));
    let truncate = events.iter().find(|e| e["op"] == "t").expect("a truncate event");
    assert_eq!(
        (truncate["source"]["schema"].clone(), truncate["source"]["table"].clone()),
        (json!("public"), json!("docs_full"))
    );
}

/// An update that leaves a TOASTed value out, committed inside a snapshot
/// chunk's window, takes the chunk's row's place; the row, the only carrier
/// of that value, must still arrive.
#[test]
fn a_toast_value_an_update_in_a_chunks_window_left_out_still_arrives() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    pg.sql(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         INSERT INTO docs VALUES (1, repeat('x', 10000), 1), (2, 'short', 1);",
    );
    let out = dir.path().join("out.jsonl");
    let settings = json!({"tables": ["docs"], "snapshot": {"mode": "never", "workers": 1}});
    let file = pipeline(dir.path(), "window", &pg, settings, file_sink(&out));
    let mut run = spawn_run(dir.path(), &file, &[]);
    pg.wait_streaming("flowgate_window", dir.path());

    // The reader writes its low watermark, then its COPY waits behind this
    // lock; the update commits after the watermark and before the COPY reads.
    let mut held = pg.session();
    let mut input = held.stdin.take().unwrap();
    writeln!(input, "BEGIN; LOCK TABLE docs IN ACCESS EXCLUSIVE MODE; UPDATE docs SET n = 2 WHERE id = 1;").unwrap();
    input.flush().unwrap();
    let locked = "SELECT count(*) FROM pg_locks WHERE relation = 'docs'::regclass AND mode = 'AccessExclusiveLock'";
    assert!(wait_for(Duration::from_secs(30), || pg.sql(locked) == "1"));
    // Not waited for here: were the request to need the lock too, the wait
    // for the COPY below fails instead of the test hanging.
    let ask = common::flowgate().args(["snapshot"]).arg(&file).args(["--table", "docs"]).spawn().unwrap();
    let ask = common::Guard(ask);
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'COPY%'";
    assert!(wait_for(Duration::from_secs(30), || pg.sql(waiting) == "1"), "{}", log(dir.path()));
    writeln!(input, "COMMIT;").unwrap();
    drop(input);
    assert!(held.wait().unwrap().success());
    assert!(ask.wait_with_output().unwrap().status.success());
    let written = || log(dir.path()).contains("incremental snapshot written");
    assert!(wait_for(Duration::from_secs(60), written), "{}", log(dir.path()));
    pg.wait_caught_up("flowgate_window", dir.path());
    stop(&mut run, dir.path());

    let events = records(&out);
    let of_1: Vec<&Value> = events.iter().filter(|e| e["after"]["id"] == 1).collect();
    let ops: Vec<&str> = of_1.iter().map(|e| e["op"].as_str().unwrap()).collect();
    // The update, then the row as read (before the update), then the update again.
    assert_eq!(ops, ["u", "r", "u"], "{of_1:#?}");
    assert_eq!(of_1[0]["after"]["body"], "__debezium_unavailable_value");
    assert_eq!(of_1[1]["after"], json!({"id": 1, "body": "x".repeat(10_000), "n": 1}));
    // Applied in order, as a sink applies them (a placeholder leaves the
    // value as it is), the row ends as the table holds it.
    let mut row = serde_json::Map::new();
    for e in &of_1 {
        for (k, v) in e["after"].as_object().unwrap() {
            if v != "__debezium_unavailable_value" {
                row.insert(k.clone(), v.clone());
            }
        }
    }
    assert_eq!(Value::Object(row), json!({"id": 1, "body": "x".repeat(10_000), "n": 2}));
    // The row no change touched went out once, as read.
    let of_2: Vec<&str> = events.iter().filter(|e| e["after"]["id"] == 2).map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(of_2, ["r"]);
}

#[test]
fn a_million_row_transaction_streams_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start_with(&["logical_decoding_work_mem = 64kB"]);
    pg.sql("CREATE TABLE big (id int PRIMARY KEY, pad text)");
    let file = pipeline(dir.path(), "big", &pg, json!({"tables": ["big"], "snapshot": "never"}), sink::null());
    let mut run = spawn_run(dir.path(), &file, &["--metrics-addr", "127.0.0.1:0"]);
    let port = common::metrics_port(dir.path());
    pg.wait_streaming("flowgate_big", dir.path());
    pg.sql("INSERT INTO big SELECT g, repeat('x', 60) FROM generate_series(1, 1000000) g");
    let target = pg.current_lsn();
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while pg.confirmed("flowgate_big") < target {
        assert!(Instant::now() < deadline, "the transaction did not come through in time");
        peak = peak.max(rss_kib(run.id()));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, body) = common::http_get(port, "/metrics").expect("metrics");
    assert_eq!(common::metric(&body, "flowgate_records_out_total"), Some(1_000_000.0), "{}", log(dir.path()));
    stop(&mut run, dir.path());
    eprintln!("peak RSS during a 1M-row transaction: {} MiB", peak / 1024);
    assert!(peak < 200 * 1024, "peak RSS {} MiB", peak / 1024);
}

#[test]
fn a_postgres_restart_mid_run_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut pg = Postgres::start();
    pg.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let out = dir.path().join("out.jsonl");
    let file = pipeline(dir.path(), "restart", &pg, json!({"tables": ["t"], "snapshot": "never"}), file_sink(&out));
    let mut run = spawn_run(dir.path(), &file, &["--metrics-addr", "127.0.0.1:0"]);
    let port = common::metrics_port(dir.path());
    pg.wait_streaming("flowgate_restart", dir.path());
    for i in 0..50 {
        pg.sql(&format!("INSERT INTO t SELECT g FROM generate_series({}, {}) g", i * 100 + 1, i * 100 + 100));
    }
    pg.stop();
    // Cut off, the pipeline is degraded at once, with the reason.
    let cut_off = || {
        common::http_get(port, "/health")
            .is_some_and(|(c, b)| c == 503 && b.contains(r#""state":"degraded""#) && b.contains("source cut off"))
    };
    assert!(wait_for(Duration::from_secs(10), cut_off), "{:?}", common::http_get(port, "/health"));
    assert_eq!(common::http_get(port, "/health/ready").map(|(c, _)| c), Some(503));
    assert!(run.try_wait().unwrap().is_none(), "flowgate exited while Postgres was down:\n{}", log(dir.path()));
    pg.start_again();
    for i in 50..100 {
        pg.sql(&format!("INSERT INTO t SELECT g FROM generate_series({}, {}) g", i * 100 + 1, i * 100 + 100));
    }
    pg.wait_caught_up("flowgate_restart", dir.path());
    let ready = || common::http_get(port, "/health/ready").is_some_and(|(c, _)| c == 200);
    assert!(wait_for(Duration::from_secs(10), ready), "{:?}", common::http_get(port, "/health"));
    let metrics = common::http_get(port, "/metrics").unwrap().1;
    assert!(common::metric(&metrics, r#"flowgate_postgres_reconnects_total{pipeline="restart"}"#) >= Some(1.0));
    assert_eq!(common::metric(&metrics, r#"flowgate_postgres_connected{pipeline="restart"}"#), Some(1.0));
    stop(&mut run, dir.path());
    let ids: HashSet<i64> = records(&out).iter().map(|e| e["after"]["id"].as_i64().unwrap()).collect();
    let missing: Vec<i64> = (1..=10_000).filter(|i| !ids.contains(i)).take(10).collect();
    assert!(missing.is_empty(), "missing after the restart: {missing:?}");
    assert!(log(dir.path()).contains("replication connection restored"), "{}", log(dir.path()));
}

#[test]
fn a_lost_slot_or_a_server_without_logical_wal_stops_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    pg.sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)");
    let out = dir.path().join("out.jsonl");
    let file = pipeline(dir.path(), "lost", &pg, json!({"tables": ["t"]}), file_sink(&out));
    let mut run = spawn_run(dir.path(), &file, &[]);
    pg.wait_caught_up("flowgate_lost", dir.path());
    stop(&mut run, dir.path());
    let inactive = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'flowgate_lost' AND NOT active";
    assert!(wait_for(Duration::from_secs(10), || pg.sql(inactive) == "1"));
    pg.sql("SELECT pg_drop_replication_slot('flowgate_lost')");
    let mut again = spawn_run(dir.path(), &file, &[]);
    let status = wait_exit(&mut again, Duration::from_secs(30));
    assert!(!status.success());
    assert!(log(dir.path()).contains("replication slot `flowgate_lost` is gone"), "{}", log(dir.path()));

    let replica = Postgres::start_with(&["wal_level = replica"]);
    replica.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let file = pipeline(dir.path(), "nolog", &replica, json!({"tables": ["t"]}), file_sink(&out));
    let mut run = spawn_run(dir.path(), &file, &[]);
    let status = wait_exit(&mut run, Duration::from_secs(30));
    assert!(!status.success());
    assert!(log(dir.path()).contains("needs `wal_level = logical`"), "{}", log(dir.path()));
}

#[test]
fn an_invalidated_slot_stops_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start_with(&["max_slot_wal_keep_size = 1MB", "max_wal_size = 32MB", "min_wal_size = 32MB"]);
    pg.sql("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE other (pad text)");
    let out = dir.path().join("out.jsonl");
    let file = pipeline(dir.path(), "inval", &pg, json!({"tables": ["t"]}), file_sink(&out));
    let mut run = spawn_run(dir.path(), &file, &[]);
    pg.wait_caught_up("flowgate_inval", dir.path());
    stop(&mut run, dir.path());
    // While the pipeline is stopped, more WAL than the slot may keep.
    for _ in 0..4 {
        pg.sql("INSERT INTO other SELECT repeat('x', 200) FROM generate_series(1, 50000); CHECKPOINT");
    }
    let status = pg.sql("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'flowgate_inval'");
    assert_eq!(status, "lost", "the server did not invalidate the slot");
    let mut again = spawn_run(dir.path(), &file, &[]);
    assert!(!wait_exit(&mut again, Duration::from_secs(30)).success());
    assert!(log(dir.path()).contains("is invalidated (wal_status = lost)"), "{}", log(dir.path()));
}

#[test]
fn the_shipped_postgres_to_kafka_pipeline_runs() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    pg.create_shop();
    pg.sql("INSERT INTO shop.orders (customer, amount) VALUES (1, 12.50), (1, 99.99)");
    let broker = Broker::with_topics(&[("shop.customers", 3), ("shop.orders", 3), ("shop-dead-letters", 1)]);
    let shipped = common::repo().join("pipelines/postgres-to-kafka.yaml");
    let env = [("POSTGRES_URL", pg.url()), ("KAFKA_BROKERS", broker.addr())];
    let mut child = common::spawn_run_with_env(dir.path(), &shipped, &[], &env);
    pg.wait_streaming("flowgate_shop", dir.path());
    // The snapshot is incremental: once both tables are read, the changes
    // after it follow their rows.
    let read = || log(dir.path()).matches("incremental snapshot written").count() == 2;
    assert!(wait_for(Duration::from_secs(30), read), "{}", log(dir.path()));
    pg.sql("UPDATE shop.orders SET status = 'paid' WHERE id = 1; DELETE FROM shop.orders WHERE id = 2");
    pg.wait_caught_up("flowgate_shop", dir.path());
    let mut orders = Reader::new(&broker.addr(), "shop.orders", false).keep_all();
    orders.read_until(Duration::from_secs(3), |r| r.total >= 5);
    let mut by_key: BTreeMap<String, Vec<Option<Value>>> = BTreeMap::new();
    for m in &orders.messages {
        by_key.entry(m.key.clone()).or_default().push(json_of(m));
    }
    let ops = |key: &str| -> Vec<String> {
        by_key[key]
            .iter()
            .map(|v| v.as_ref().map_or("tombstone".to_string(), |v| v["op"].as_str().unwrap().to_string()))
            .collect()
    };
    assert_eq!(ops(r#"{"id":1}"#), ["r", "u"]);
    assert_eq!(ops(r#"{"id":2}"#), ["r", "d", "tombstone"]);
    let paid = by_key[r#"{"id":1}"#][1].clone().unwrap();
    assert_eq!(paid["after"]["status"], "paid");
    assert_eq!(paid["after"]["amount"], "12.50");
    assert_eq!(paid["source"]["schema"], "shop");
    let mut customers = Reader::new(&broker.addr(), "shop.customers", false);
    assert!(customers.read_until(Duration::from_secs(10), |r| r.total >= 1));
    common::signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success(), "{}", log(dir.path()));
}

#[test]
fn an_interrupted_snapshot_is_taken_again_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, pad text); INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 300000) g");
    let out = dir.path().join("out.jsonl");
    let file = pipeline(dir.path(), "again", &pg, json!({"tables": ["t"], "snapshot": "initial"}), file_sink(&out));
    let mid_snapshot = |marker: &str, seen: usize| {
        wait_for(Duration::from_secs(30), || {
            log(dir.path()).matches(marker).count() >= seen
                && std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0) > 1 << 20
        })
    };
    // Killed during the copy: the slot stays behind, with the snapshot unfinished.
    let mut run = spawn_run(dir.path(), &file, &[]);
    assert!(mid_snapshot("taking the initial snapshot", 1), "{}", log(dir.path()));
    kill(&mut run);
    assert!(!log(dir.path()).contains("initial snapshot written"), "the snapshot finished before the kill");
    std::fs::remove_file(&out).unwrap();
    // Stopped gracefully during the copy: pg_walstream drops the slot.
    let mut run = spawn_run(dir.path(), &file, &[]);
    assert!(mid_snapshot("taking the initial snapshot", 2), "{}", log(dir.path()));
    stop(&mut run, dir.path());
    assert_eq!(log(dir.path()).matches("initial snapshot written").count(), 0, "{}", log(dir.path()));
    std::fs::remove_file(&out).unwrap();
    // The third run copies everything, then streams.
    let mut run = spawn_run(dir.path(), &file, &[]);
    pg.wait_caught_up("flowgate_again", dir.path());
    pg.sql("INSERT INTO t VALUES (0, 'after')");
    pg.wait_caught_up("flowgate_again", dir.path());
    stop(&mut run, dir.path());
    let text = log(dir.path());
    assert!(text.contains("the initial snapshot did not finish last time"), "{text}");
    let events = common::records_after_kills(&out, 1);
    let ids: HashSet<i64> = events.iter().map(|e| e["after"]["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 300_001, "every row once the snapshot is taken again, and the change after it");
    // `source.snapshot` as Debezium writes it: the consumer sees where the snapshot ends.
    let marks: Vec<&str> = events.iter().map(|e| e["source"]["snapshot"].as_str().unwrap()).collect();
    assert_eq!((marks[0], marks[299_999], marks[300_000]), ("first", "last", "false"));
    assert!(marks[1..299_999].iter().all(|m| *m == "true"));
}

#[test]
fn validate_check_connects_and_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    pg.sql(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE secret (id int PRIMARY KEY);
         CREATE ROLE app LOGIN; GRANT SELECT ON t TO app",
    );
    let check = |name: &str, url: &str, tables: &str| {
        let path = dir.path().join(format!("{name}.yaml"));
        let text =
            format!("name: {name}\nsource:\n  postgres_cdc:\n    url: {url}\n    tables: [{tables}]\nsink: stdout\n");
        std::fs::write(&path, text).unwrap();
        let out =
            common::flowgate().args(["validate", "--check", "--message-format", "short"]).arg(&path).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = check("ok", &pg.url(), "t");
    assert_eq!(code, Some(0), "{err}");
    let closed_port = common::closed_port();
    let closed = format!("postgres://postgres@127.0.0.1:{}/postgres", closed_port.port);
    let (code, err) = check("closed", &closed, "t");
    assert_eq!(code, Some(2));
    assert!(err.contains(":4:10: error: cannot connect to postgres://postgres@127.0.0.1"), "{err}");
    let app = pg.url().replace("postgres@", "app@");
    let (code, err) = check("app", &app, "t, secret, missing");
    assert_eq!(code, Some(2));
    assert!(err.contains("user `app` may not stream changes: it lacks the REPLICATION attribute"), "{err}");
    assert!(err.contains("user `app` cannot read `public.secret`"), "{err}");
    assert!(err.contains("table `public.missing` does not exist"), "{err}");
}

#[test]
fn pipelines_started_together_share_a_publication_created_by_either() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    pg.sql("CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items VALUES (1)");
    // Another starter creates the publication and has not committed yet: the
    // pipeline sees none, and its own CREATE waits and then finds it taken.
    let mut other = pg.session();
    let mut input = other.stdin.take().unwrap();
    writeln!(input, "BEGIN; CREATE PUBLICATION items FOR TABLE items;").unwrap();
    let idle = "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'";
    assert!(wait_for(Duration::from_secs(30), || pg.sql(idle) == "1"));
    let out = dir.path().join("out.jsonl");
    let file = pipeline(dir.path(), "late", &pg, json!({"tables": ["items"], "publication": "items"}), file_sink(&out));
    let mut run = spawn_run(dir.path(), &file, &[]);
    let waiting =
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'CREATE PUBLICATION%'";
    assert!(wait_for(Duration::from_secs(30), || pg.sql(waiting) == "1"), "{}", log(dir.path()));
    writeln!(input, "COMMIT;").unwrap();
    drop(input);
    assert!(other.wait().unwrap().success());
    pg.wait_streaming("flowgate_late", dir.path());
    // The table's snapshot runs while the slot streams: a row inserted before
    // it reads the table arrives twice (its insert and its snapshot read).
    let read = || log(dir.path()).contains("incremental snapshot written");
    assert!(wait_for(Duration::from_secs(30), read), "{}", log(dir.path()));
    pg.sql("INSERT INTO items VALUES (2)");
    assert!(wait_for(Duration::from_secs(30), || common::records_so_far(&out).len() == 2), "{}", log(dir.path()));
    stop(&mut run, dir.path());
}

/// `validate --check` of `file`: its exit code and standard error.
fn validate_check(file: &Path) -> (Option<i32>, String) {
    let out = common::flowgate().args(["validate", "--check", "--message-format", "short"]).arg(file).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs `file` in `dir` until it exits by itself (it must, within 30 s); its log.
fn run_refused(dir: &Path, file: &Path) -> String {
    let mut run = spawn_run(dir, file, &[]);
    let status = wait_exit(&mut run, Duration::from_secs(30));
    assert!(!status.success(), "the run was not refused: {}", log(dir));
    log(dir)
}

#[test]
fn a_keyless_table_is_refused_and_the_application_keeps_writing() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    pg.sql("CREATE TABLE nopk (id int, v int); INSERT INTO nopk VALUES (1, 1), (2, 2)");
    let file = pipeline(dir.path(), "nopk", &pg, json!({"tables": ["nopk"]}), file_sink(&dir.path().join("o.jsonl")));
    let (code, err) = validate_check(&file);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("`public.nopk` has no replica identity"), "{err}");
    assert!(err.contains("REPLICA IDENTITY FULL"), "{err}");
    let text = run_refused(dir.path(), &file);
    assert!(text.contains("`public.nopk` has no replica identity"), "{text}");
    // Nothing was published, so the application's writes still work.
    assert_eq!(pg.sql("SELECT count(*) FROM pg_publication"), "0");
    pg.sql("UPDATE nopk SET v = 10 WHERE id = 1; DELETE FROM nopk WHERE id = 2");
    assert_eq!(pg.sql("SELECT string_agg(id || ':' || v, ',') FROM nopk"), "1:10");
}

#[test]
fn a_full_identity_table_is_keyed_by_the_columns_named_in_keys() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    pg.sql(
        "CREATE TABLE ev (device int NOT NULL, seq int NOT NULL, v text); ALTER TABLE ev REPLICA IDENTITY FULL;
         INSERT INTO ev VALUES (1, 1, 'a'), (2, 1, 'b')",
    );
    let out = dir.path().join("out.jsonl");
    // No unique index covers the keys: the exported snapshot reads the table.
    let keyed = json!({"tables": ["ev"], "keys": {"public.ev": ["device", "seq"]}, "snapshot": "initial"});
    let file = pipeline(dir.path(), "ev", &pg, keyed, file_sink(&out).with("format", "record"));
    let mut run = spawn_run(dir.path(), &file, &[]);
    pg.wait_streaming("flowgate_ev", dir.path());
    pg.sql(
        "INSERT INTO ev VALUES (3, 1, 'c'); UPDATE ev SET v = 'z' WHERE device = 1; DELETE FROM ev WHERE device = 2",
    );
    pg.wait_caught_up("flowgate_ev", dir.path());
    stop(&mut run, dir.path());
    let keys: Vec<(Value, String)> =
        records(&out).iter().map(|r| (r["key"].clone(), r["value"]["op"].as_str().unwrap().to_string())).collect();
    let key = |device: i64| json!({"device": device, "seq": 1});
    assert_eq!(
        keys,
        [(key(1), "r".into()), (key(2), "r".into()), (key(3), "c".into()), (key(1), "u".into()), (key(2), "d".into())]
    );
    assert!(!log(dir.path()).contains("its records have no key"), "{}", log(dir.path()));

    // Without `keys` the records have none, and the log says so.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let file = pipeline(
        dir.path(),
        "unkeyed",
        &pg,
        json!({"tables": ["ev"], "snapshot": "initial"}),
        file_sink(&out).with("format", "record"),
    );
    let mut run = spawn_run(dir.path(), &file, &[]);
    pg.wait_caught_up("flowgate_unkeyed", dir.path());
    stop(&mut run, dir.path());
    assert!(log(dir.path()).contains("its records have no key"), "{}", log(dir.path()));
    assert!(records(&out).iter().all(|r| r["key"].is_null()));
}

#[test]
fn partitioned_tables_are_captured_under_their_own_name_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    pg.sql(
        "CREATE TABLE events (id int, at int, v text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE events_1 PARTITION OF events FOR VALUES FROM (0) TO (100);
         CREATE TABLE events_2 PARTITION OF events FOR VALUES FROM (100) TO (200);
         INSERT INTO events SELECT g, g % 200, 'v' FROM generate_series(1, 400) g",
    );
    let out = dir.path().join("out.jsonl");
    let file = pipeline(dir.path(), "parts", &pg, json!({"tables": ["events"]}), file_sink(&out));
    let mut run = spawn_run(dir.path(), &file, &[]);
    pg.wait_streaming("flowgate_parts", dir.path());
    // A partition attached mid-stream, and restarts around changes to all of them.
    pg.sql("CREATE TABLE events_3 PARTITION OF events FOR VALUES FROM (200) TO (300)");
    for round in 0..3 {
        pg.sql(&format!(
            "INSERT INTO events VALUES ({i}, 250, 'new'), ({j}, 50, 'new');
             UPDATE events SET v = 'u{round}' WHERE id % 7 = {round}; DELETE FROM events WHERE id % 11 = {round}",
            i = 1000 + round,
            j = 2000 + round
        ));
        pg.wait_caught_up("flowgate_parts", dir.path());
        stop(&mut run, dir.path());
        run = spawn_run(dir.path(), &file, &[]);
        pg.wait_streaming("flowgate_parts", dir.path());
    }
    pg.sql("INSERT INTO events VALUES (3000, 299, 'last')");
    pg.wait_caught_up("flowgate_parts", dir.path());
    stop(&mut run, dir.path());
    let events = records(&out);
    assert!(events.iter().all(|e| e["source"]["table"] == "events"), "named after a partition");
    let mut image: BTreeMap<(i64, i64), Value> = BTreeMap::new();
    for e in &events {
        let row = if e["op"] == "d" { &e["before"] } else { &e["after"] };
        let id = (row["id"].as_i64().unwrap(), row["at"].as_i64().unwrap());
        if e["op"] == "d" {
            image.remove(&id);
        } else {
            image.insert(id, e["after"].clone());
        }
    }
    let text = pg.sql("SELECT coalesce(json_agg(t), '[]') FROM events t");
    let rows: Vec<Value> = serde_json::from_str(&text).unwrap();
    let table: BTreeMap<(i64, i64), Value> =
        rows.into_iter().map(|r| ((r["id"].as_i64().unwrap(), r["at"].as_i64().unwrap()), r)).collect();
    assert_eq!(image, table);
    assert!(image.contains_key(&(3000, 299)), "the attached partition's rows arrive");
}

#[test]
fn the_state_is_kept_in_the_database_so_another_directory_resumes() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pg = Postgres::start();
    pg.sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000)");
    let out = a.path().join("out.jsonl");
    let file = pipeline(a.path(), "moved", &pg, json!({"tables": ["t"], "snapshot": "initial"}), file_sink(&out));
    let mut run = spawn_run(a.path(), &file, &[]);
    let written = || log(a.path()).contains("initial snapshot written");
    assert!(wait_for(Duration::from_secs(30), written), "{}", log(a.path()));
    kill(&mut run);
    pg.sql("INSERT INTO t VALUES (1001)");
    // Another working directory and state directory: the record is in the database.
    let mut run = spawn_run(b.path(), &file, &[]);
    pg.wait_caught_up("flowgate_moved", b.path());
    stop(&mut run, b.path());
    let text = log(b.path());
    assert!(!text.contains("taking the initial snapshot"), "a second snapshot: {text}");
    assert!(text.contains("resuming from the replication slot"), "{text}");
    assert!(!text.contains("from=0/0"), "{text}");
    assert_eq!(pg.sql("SELECT snapshot_done FROM flowgate.cdc_slots WHERE slot = 'flowgate_moved'"), "t");
    let ids: HashSet<i64> =
        common::records_after_kills(&out, 1).iter().map(|e| e["after"]["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 1001, "every row, the one written while it was down included");
}

#[test]
fn quoted_table_names_and_an_initial_only_pipeline_that_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    pg.sql(r#"CREATE TABLE "MixedCase" (id int PRIMARY KEY); INSERT INTO "MixedCase" VALUES (1), (2)"#);
    let out = dir.path().join("out.jsonl");
    let settings = json!({"tables": [r#"public."MixedCase""#], "snapshot": "initial_only"});
    let file = pipeline(dir.path(), "once", &pg, settings, file_sink(&out));
    let mut run = spawn_run(dir.path(), &file, &[]);
    assert!(wait_exit(&mut run, Duration::from_secs(60)).success(), "{}", log(dir.path()));
    assert_eq!(records(&out).len(), 2);
    assert!(records(&out).iter().all(|e| e["source"]["table"] == "MixedCase"));
    assert_eq!(pg.sql("SELECT count(*) FROM pg_replication_slots"), "0");
    assert_eq!(pg.sql("SELECT count(*) FROM pg_publication"), "0", "the publication it created is dropped");
    assert_eq!(pg.sql("SELECT count(*) FROM flowgate.cdc_slots"), "0");
    assert!(!log(dir.path()).contains("streaming changes"), "{}", log(dir.path()));
}

#[test]
fn every_refusal_at_start_is_a_refusal_of_validate_check() {
    let pg = Postgres::start();
    pg.sql(
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY); CREATE TABLE nopk (v int);
         CREATE TABLE dup (device int NOT NULL, v int); ALTER TABLE dup REPLICA IDENTITY FULL;
         CREATE TABLE p (id int, at int, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE p_1 PARTITION OF p FOR VALUES FROM (0) TO (10);
         CREATE PUBLICATION only_a FOR TABLE a; CREATE PUBLICATION leaves FOR TABLE p;
         CREATE SCHEMA flowgate;
         CREATE TABLE flowgate.cdc_slots (slot text PRIMARY KEY, snapshot_done boolean NOT NULL,
           publication_created boolean NOT NULL DEFAULT false, updated_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO flowgate.cdc_slots VALUES ('gone', true)",
    );
    // Alone: a slot cannot be created in a transaction that has written.
    pg.sql("SELECT pg_create_logical_replication_slot('used', 'pgoutput')");
    let cases = [
        ("keyless", json!({"tables": ["nopk"]}), "`public.nopk` has no replica identity"),
        ("missing", json!({"tables": ["a", "b"], "publication": "only_a"}), "does not publish \"public\".\"b\""),
        ("leaves", json!({"publication": "leaves"}), "publishes partitions under their own names"),
        ("gone", json!({"tables": ["a"], "slot": "gone"}), "replication slot `gone` is gone"),
        ("unknown", json!({"tables": ["a"], "slot": "used"}), "replication slot `used` already exists"),
        ("nocolumn", json!({"tables": ["a"], "keys": {"a": ["nope"]}}), "`public.a` has no column `nope`"),
        // Keys that no unique index covers cannot cut the table into chunks.
        ("notunique", json!({"tables": ["dup"], "keys": {"dup": ["device"]}}), "reads `public.dup` in key order"),
    ];
    for (name, settings, message) in cases {
        let dir = tempfile::tempdir().unwrap();
        let file = pipeline(dir.path(), name, &pg, settings, file_sink(&dir.path().join("o.jsonl")));
        let (code, err) = validate_check(&file);
        assert_eq!(code, Some(2), "{name}: {err}");
        assert!(err.contains(message), "{name}: `--check` says {err}");
        let text = run_refused(dir.path(), &file);
        assert!(text.contains(message), "{name}: `run` says {text}");
    }
}

#[test]
fn a_standby_takes_over_when_the_active_process_dies() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pg = Postgres::start();
    let writes = counters_workload(&pg, a.path());
    let broker = Broker::with_topics(&[("public.counters", 3), ("public.log", 3)]);
    let file = pipeline(
        a.path(),
        "pair",
        &pg,
        json!({"tables": ["counters", "log"], "snapshot": "initial"}),
        kafka_sink(&broker),
    );
    let dirs = [a.path(), b.path()];
    let count = |d: &Path, what: &str| log(d).matches(what).count();
    let mut runs = [spawn_run(dirs[0], &file, &[]), spawn_run(dirs[1], &file, &[])];
    // The first to take the lock runs the slot; the other stands by.
    assert!(
        wait_for(Duration::from_secs(30), || dirs.iter().any(|d| log(d).contains("initial snapshot written"))
            && dirs.iter().any(|d| count(d, "standby: another process runs") == 1)),
        "{}\n{}",
        log(dirs[0]),
        log(dirs[1])
    );
    let mut active = if log(dirs[0]).contains("initial snapshot written") { 0 } else { 1 };
    let mut writer = pg.pgbench(&writes, 2, 15);
    let mut takeovers = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1500));
        let standby = 1 - active;
        let before = count(dirs[standby], "taking over");
        kill(&mut runs[active]);
        let killed = Instant::now();
        assert!(
            wait_for(Duration::from_secs(60), || count(dirs[standby], "taking over") > before),
            "no takeover:\n{}",
            log(dirs[standby])
        );
        takeovers.push(killed.elapsed());
        // Back as the standby.
        let stood_by = count(dirs[active], "standby: another process runs");
        runs[active] = spawn_run(dirs[active], &file, &[]);
        assert!(wait_for(Duration::from_secs(30), || count(dirs[active], "standby: another process runs") > stood_by));
        active = standby;
    }
    assert!(writer.wait().unwrap().success(), "pgbench failed");
    pg.wait_caught_up("flowgate_pair", dirs[active]);
    assert_eq!(
        log(dirs[0]).matches("taking the initial snapshot").count()
            + log(dirs[1]).matches("taking the initial snapshot").count(),
        1,
        "one snapshot in all"
    );
    assert_counters_complete(&pg, &broker, "3 takeovers");
    eprintln!("takeover after kill -9: {takeovers:?}");
    assert!(takeovers.iter().all(|t| *t < Duration::from_secs(30)), "{takeovers:?}");
    for run in &mut runs {
        stop(run, dirs[0]);
    }
}

/// The tables as their change events say they are: per `(table, id)`, the
/// last event's `after` (none after a delete).
fn images(events: &[Value]) -> BTreeMap<(String, i64), Value> {
    let mut image = BTreeMap::new();
    for e in events {
        let table = e["source"]["table"].as_str().unwrap().to_string();
        let row = if e["op"] == "d" { &e["before"] } else { &e["after"] };
        let id = (table, row["id"].as_i64().unwrap());
        if e["op"] == "d" {
            image.remove(&id);
        } else {
            image.insert(id, e["after"].clone());
        }
    }
    image
}

#[test]
fn a_table_added_later_is_snapshotted_in_chunks_while_the_others_stream() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    pg.sql("CREATE TABLE a (id int PRIMARY KEY, n int NOT NULL); INSERT INTO a SELECT g, 0 FROM generate_series(1, 1000) g");
    let out = dir.path().join("out.jsonl");
    let first = pipeline(dir.path(), "grow", &pg, json!({"tables": ["a"], "snapshot": "initial"}), file_sink(&out));
    let mut run = spawn_run(dir.path(), &first, &[]);
    assert!(wait_for(Duration::from_secs(30), || log(dir.path()).contains("initial snapshot written")));
    stop(&mut run, dir.path());

    let rows = 100_000;
    pg.sql(&format!(
        "CREATE TABLE b (id bigint PRIMARY KEY, v int NOT NULL); CREATE SEQUENCE b_ids START 1000000;
         INSERT INTO b SELECT g, 0 FROM generate_series(1, {rows}) g"
    ));
    let writes = write_file(
        dir.path(),
        "writes.sql",
        &format!(
            "\\set id random(1, 1000)\n\\set bid random(1, {rows})\nBEGIN;\nUPDATE a SET n = n + 1 WHERE id = :id;\n\
             UPDATE b SET v = v + 1 WHERE id = :bid;\nEND;\nDELETE FROM b WHERE id = :bid + 1;\n\
             INSERT INTO b VALUES (nextval('b_ids'), 0);\n"
        ),
    );
    // The same pipeline with `b` added: it is published and read in chunks,
    // under a writer changing both tables; killed once while it reads.
    let grown =
        pipeline(dir.path(), "grow", &pg, json!({"tables": ["a", "b"], "snapshot": "initial"}), file_sink(&out));
    let mut run = spawn_run(dir.path(), &grown, &[]);
    let mut writer = pg.pgbench(&writes, 2, 12);
    let reading = || log(dir.path()).contains("taking an incremental snapshot of the table");
    assert!(wait_for(Duration::from_secs(30), reading), "{}", log(dir.path()));
    std::thread::sleep(Duration::from_millis(1500));
    let read_before_kill = records_so_far(&out).iter().filter(|e| e["source"]["snapshot"] == "incremental").count();
    kill(&mut run);
    run = spawn_run(dir.path(), &grown, &[]);
    assert!(writer.wait().unwrap().success(), "pgbench failed");
    let done = || log(dir.path()).contains("incremental snapshot read");
    assert!(wait_for(Duration::from_secs(120), done), "{}", log(dir.path()));
    pg.wait_caught_up("flowgate_grow", dir.path());
    stop(&mut run, dir.path());

    let events = common::records_after_kills(&out, 1);
    let image = images(&events);
    for table in ["a", "b"] {
        let text = pg.sql(&format!("SELECT coalesce(json_agg(t), '[]') FROM {table} t"));
        let rows: Vec<Value> = serde_json::from_str(&text).unwrap();
        let want: BTreeMap<(String, i64), Value> =
            rows.into_iter().map(|r| ((table.to_string(), r["id"].as_i64().unwrap()), r)).collect();
        let got: BTreeMap<(String, i64), Value> =
            image.iter().filter(|((t, _), _)| t == table).map(|(k, v)| (k.clone(), v.clone())).collect();
        let stale = got.keys().filter(|k| !want.contains_key(k)).count();
        let missing = want.keys().filter(|k| !got.contains_key(k)).count();
        assert_eq!((stale, missing), (0, 0), "{table}: stale and missing rows");
        assert_eq!(got, want, "{table}: the image differs from the table");
    }
    let read = events.iter().filter(|e| e["source"]["snapshot"] == "incremental").count();
    eprintln!("incremental snapshot: {read} rows read for {rows} (before the kill: {read_before_kill})");
    // The kill repeats at most what was not acknowledged: a few chunks, never the table.
    assert!(read < rows + 20 * 2048, "read {read} rows for {rows}");
    let text = log(dir.path());
    assert!(text.contains("changed the publication"), "{text}");
    assert_eq!(text.matches("taking the initial snapshot").count(), 1, "the first run's only: {text}");
}

#[test]
fn an_incremental_snapshot_killed_three_times_goes_on_from_its_last_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    let rows = 1_000_000;
    pg.sql(&format!(
        "CREATE TABLE big (id bigint PRIMARY KEY, v int NOT NULL, pad text NOT NULL);
         CREATE SEQUENCE big_ids START 10000000;
         INSERT INTO big SELECT g, 0, repeat('x', 80) FROM generate_series(1, {rows}) g"
    ));
    let writes = write_file(
        dir.path(),
        "writes.sql",
        &format!(
            "\\set id random(1, {rows})\nUPDATE big SET v = v + 1 WHERE id = :id;\nDELETE FROM big WHERE id = :id + 7;\n\
             INSERT INTO big VALUES (nextval('big_ids'), 0, 'new');\n"
        ),
    );
    let out = dir.path().join("out.jsonl");
    // Two readers cutting the table into key ranges: at most two chunks are
    // out and unacknowledged, so each kill reads at most 2 x 2,000 rows again.
    let (workers, chunk_size) = (2, 2000);
    let settings =
        json!({"tables": ["big"], "snapshot": {"mode": "incremental", "workers": workers, "chunk_size": chunk_size}});
    let file = pipeline(dir.path(), "chunks", &pg, settings, file_sink(&out));
    let mut run = spawn_run(dir.path(), &file, &[]);
    let mut writer = pg.pgbench(&writes, 2, 15);
    // Counted in the text: parsing a million events at each look would slow the run under test.
    let snapshot_rows =
        || std::fs::read_to_string(&out).unwrap_or_default().matches(r#""snapshot":"incremental""#).count();
    for kill_at in [rows / 5, rows * 2 / 5, rows * 3 / 5] {
        assert!(wait_for(Duration::from_secs(60), || snapshot_rows() >= kill_at), "{}", log(dir.path()));
        kill(&mut run);
        run = spawn_run(dir.path(), &file, &[]);
    }
    assert!(writer.wait().unwrap().success(), "pgbench failed");
    let written = || log(dir.path()).contains("incremental snapshot written");
    assert!(wait_for(Duration::from_secs(180), written), "{}", log(dir.path()));
    pg.wait_caught_up("flowgate_chunks", dir.path());
    stop(&mut run, dir.path());

    let events = common::records_after_kills(&out, 3);
    let image = images(&events);
    let text = pg.sql("SELECT coalesce(json_agg(t), '[]') FROM big t");
    let table: BTreeMap<(String, i64), Value> = serde_json::from_str::<Vec<Value>>(&text)
        .unwrap()
        .into_iter()
        .map(|r| (("big".to_string(), r["id"].as_i64().unwrap()), r))
        .collect();
    let stale = image.keys().filter(|k| !table.contains_key(k)).count();
    let missing = table.keys().filter(|k| !image.contains_key(k)).count();
    assert_eq!((stale, missing), (0, 0), "stale and missing rows");
    assert_eq!(image, table);
    let read: Vec<i64> = events
        .iter()
        .filter(|e| e["source"]["snapshot"] == "incremental")
        .map(|e| e["after"]["id"].as_i64().unwrap())
        .collect();
    let again = read.len() - read.iter().collect::<std::collections::HashSet<_>>().len();
    let text = log(dir.path());
    // Never from scratch: one snapshot, continued after each kill.
    assert_eq!(text.matches("taking an incremental snapshot of the tables while streaming").count(), 1, "{text}");
    assert!(!text.contains("taking the initial snapshot"), "{text}");
    eprintln!("3 kills: {} snapshot rows read for {rows} rows, {again} of them again", read.len());
    assert!(again <= 3 * workers * chunk_size, "{again} rows read again");
}

#[test]
fn an_on_demand_snapshot_while_streaming_under_load_keeps_the_image_true() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    let rows = 50_000;
    pg.sql(&format!(
        "CREATE TABLE t (id bigint PRIMARY KEY, v int NOT NULL); CREATE TABLE other (id int PRIMARY KEY);
         CREATE SEQUENCE t_ids START 1000000; INSERT INTO t SELECT g, 0 FROM generate_series(1, {rows}) g"
    ));
    let writes = write_file(
        dir.path(),
        "writes.sql",
        &format!(
            "\\set id random(1, {rows})\nUPDATE t SET v = v + 1 WHERE id = :id;\nDELETE FROM t WHERE id = :id + 3;\n\
             INSERT INTO t VALUES (nextval('t_ids'), 0);\n"
        ),
    );
    let out = dir.path().join("out.jsonl");
    let file = pipeline(dir.path(), "again", &pg, json!({"tables": ["t"], "snapshot": "initial"}), file_sink(&out));
    let mut run = spawn_run(dir.path(), &file, &[]);
    assert!(wait_for(Duration::from_secs(30), || log(dir.path()).contains("initial snapshot written")));
    let mut writer = pg.pgbench(&writes, 2, 10);
    std::thread::sleep(Duration::from_secs(2));
    let ask = |table: &str| common::flowgate().args(["snapshot"]).arg(&file).args(["--table", table]).output().unwrap();
    let asked = ask("t");
    let said = String::from_utf8_lossy(&asked.stdout).into_owned() + &String::from_utf8_lossy(&asked.stderr);
    assert!(asked.status.success(), "{said}");
    assert!(said.contains("to snapshot public.t again"), "{said}");
    let refused = ask("other");
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("`other` is not captured"));
    let written = || log(dir.path()).contains("incremental snapshot written");
    assert!(wait_for(Duration::from_secs(120), written), "{}", log(dir.path()));
    assert!(writer.wait().unwrap().success(), "pgbench failed");
    pg.wait_caught_up("flowgate_again", dir.path());
    stop(&mut run, dir.path());

    let events = records(&out);
    let read = events.iter().filter(|e| e["source"]["snapshot"] == "incremental").count();
    assert!(read > rows / 2, "the table was read again ({read} rows)");
    let image = images(&events);
    let text = pg.sql("SELECT coalesce(json_agg(t), '[]') FROM t");
    let table: BTreeMap<(String, i64), Value> = serde_json::from_str::<Vec<Value>>(&text)
        .unwrap()
        .into_iter()
        .map(|r| (("t".to_string(), r["id"].as_i64().unwrap()), r))
        .collect();
    assert_eq!(image, table);
}

/// A commit enters the WAL, and the stream, before other sessions see it; a
/// synchronous standby that never answers holds one there. A chunk read
/// meanwhile must not go out after that change with the row as it was.
#[test]
fn a_chunk_never_goes_out_older_than_a_change_streamed_before_it() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    // Only the session below waits for the standby that never comes.
    let pg = Postgres::start_with(&["synchronous_standby_names = 'ghost'", "synchronous_commit = local"]);
    pg.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL); INSERT INTO t SELECT g, 0 FROM generate_series(1, 100) g",
    );
    let out = dir.path().join("out.jsonl");
    let file = pipeline(dir.path(), "held", &pg, json!({"tables": ["t"], "snapshot": "never"}), file_sink(&out));
    let mut run = spawn_run(dir.path(), &file, &[]);
    pg.wait_streaming("flowgate_held", dir.path());

    let mut held = pg.session();
    let stdin = held.stdin.as_mut().unwrap();
    writeln!(stdin, "SET synchronous_commit = on; UPDATE t SET v = 1 WHERE id = 7;").unwrap();
    stdin.flush().unwrap();
    let streamed = || records_so_far(&out).iter().any(|e| e["op"] == "u");
    assert!(wait_for(Duration::from_secs(30), streamed), "{}", log(dir.path()));
    assert_eq!(pg.sql("SELECT v FROM t WHERE id = 7"), "0", "the update is seen already");

    let asked = common::flowgate().args(["snapshot"]).arg(&file).args(["--table", "t"]).output().unwrap();
    assert!(asked.status.success(), "{}", String::from_utf8_lossy(&asked.stderr));
    std::thread::sleep(Duration::from_secs(2));
    pg.sql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'");
    drop(held.stdin.take());
    assert!(held.wait().unwrap().success());
    let written = || log(dir.path()).contains("incremental snapshot written");
    assert!(wait_for(Duration::from_secs(60), written), "{}", log(dir.path()));
    pg.wait_caught_up("flowgate_held", dir.path());
    stop(&mut run, dir.path());

    let events = records(&out);
    assert_eq!(events.iter().filter(|e| e["source"]["snapshot"] == "incremental").count(), 100);
    let image = images(&events);
    assert_eq!(image[&("t".to_string(), 7)], json!({"id": 7, "v": 1}), "row 7 went out as it was before its change");
}

/// `/metrics` has the slot's lag as the server counts it (within one
/// sample), whether the stream is connected, and the snapshot's rows per
/// table: with the sink's database down the lag grows with the writes; once
/// it is back the lag is the server's figure again.
#[test]
fn the_slot_lag_on_metrics_is_the_servers_own_figure() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    let mut target = Postgres::start();
    pg.sql(
        "CREATE TABLE t (id int PRIMARY KEY, pad text); INSERT INTO t SELECT g, 'x' FROM generate_series(1, 1000) g",
    );
    pg.sql("ANALYZE t");
    target.sql("CREATE TABLE t (id int PRIMARY KEY, pad text)");
    let to_target = sink::postgres(target.url(), "t").with("mode", "cdc");
    let file = pipeline(dir.path(), "lag", &pg, json!({"tables": ["t"]}), to_target);
    let mut run = spawn_run(dir.path(), &file, &["--metrics-addr", "127.0.0.1:0"]);
    let port = common::metrics_port(dir.path());
    let metric = |name: &str| common::http_get(port, "/metrics").and_then(|(_, b)| common::metric(&b, name));
    let written = || log(dir.path()).contains("incremental snapshot written");
    assert!(wait_for(Duration::from_secs(60), written), "{}", log(dir.path()));
    let rows = metric(r#"flowgate_postgres_snapshot_rows_total{pipeline="lag",table="public.t"}"#);
    assert_eq!(rows, Some(1000.0));
    let estimated = metric(r#"flowgate_postgres_snapshot_rows_estimated{pipeline="lag",table="public.t"}"#);
    assert_eq!(estimated, Some(1000.0));
    assert_eq!(metric(r#"flowgate_postgres_connected{pipeline="lag"}"#), Some(1.0));

    let server = || {
        pg.sql("SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'flowgate_lag'")
            .parse::<f64>()
            .unwrap()
    };
    let lag = || metric(r#"flowgate_postgres_slot_lag_bytes{pipeline="lag",slot="flowgate_lag"}"#);
    target.stop();
    pg.sql("INSERT INTO t SELECT g, repeat('y', 100) FROM generate_series(1001, 5000) g");
    let behind = || {
        let s = server();
        s > 100_000.0 && lag() == Some(s)
    };
    assert!(wait_for(Duration::from_secs(20), behind), "metric {:?}, server {}", lag(), server());
    target.start_again();
    pg.wait_caught_up("flowgate_lag", dir.path());
    let caught_up = || lag() == Some(server());
    assert!(wait_for(Duration::from_secs(20), caught_up), "metric {:?}, server {}", lag(), server());
    assert_eq!(target.sql("SELECT count(*) FROM t"), "5000");
    stop(&mut run, dir.path());
}

/// A link to Postgres that can be cut, as a network is: cut, the server's
/// side of every connection is closed (the server sees its client gone, as
/// its TCP keepalives would tell it) while the client's side stays open and
/// silent (a client behind a cut network hears nothing), and new connections
/// hang. Restored, new connections go through and the silent ones are reset.
struct Link {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<Connection>>>,
}

/// A connection through a [`Link`]: the client's side, and the server's.
type Connection = (std::net::TcpStream, Option<std::net::TcpStream>);

impl Link {
    fn to(server_port: u16) -> Link {
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let link =
            Link { port: listener.local_addr().unwrap().port(), cut: Default::default(), conns: Default::default() };
        let (cut, conns) = (link.cut.clone(), link.conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if cut.load(Ordering::SeqCst) {
                    conns.lock().unwrap().push((client, None)); // Held, never answered.
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", server_port)) else { continue };
                conns.lock().unwrap().push((client.try_clone().unwrap(), Some(server.try_clone().unwrap())));
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    let cut = cut.clone();
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        // Closed by either end: passed on, unless the link is
                        // cut (then the client hears nothing).
                        if !cut.load(Ordering::SeqCst) {
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        }
                    });
                }
            }
        });
        link
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for (_, server) in self.conns.lock().unwrap().iter() {
            if let Some(s) = server {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
        for (client, _) in self.conns.lock().unwrap().drain(..) {
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[test]
fn a_standby_takes_over_when_the_active_process_is_cut_off() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pg = Postgres::start();
    let writes = counters_workload(&pg, a.path());
    let broker = Broker::with_topics(&[("public.counters", 3), ("public.log", 3)]);
    let port: u16 = pg.url().rsplit(':').next().unwrap().split('/').next().unwrap().parse().unwrap();
    let link = Link::to(port);
    let settings = |url: String| json!({"url": url, "tables": ["counters", "log"], "snapshot": "initial"});
    // The same pipeline: `a` reaches the database through the link, `b` directly.
    let url_a = format!("postgres://postgres@127.0.0.1:{}/postgres", link.port);
    let file_a = pipeline(a.path(), "cut", &pg, settings(url_a), kafka_sink(&broker));
    let file_b = pipeline(b.path(), "cut", &pg, settings(pg.url()), kafka_sink(&broker));
    let metrics = ["--metrics-addr", "127.0.0.1:0"];
    let mut run_a = spawn_run(a.path(), &file_a, &metrics);
    assert!(
        wait_for(Duration::from_secs(30), || log(a.path()).contains("initial snapshot written")),
        "{}",
        log(a.path())
    );
    let mut run_b = spawn_run(b.path(), &file_b, &metrics);
    assert!(wait_for(Duration::from_secs(30), || log(b.path()).contains("standby: another process runs")));
    // Which process runs the slot shows on `/health`.
    let (port_a, port_b) = (common::metrics_port(a.path()), common::metrics_port(b.path()));
    let source = |port| -> String {
        let (_, body) = common::http_get(port, "/health").unwrap();
        let health: Value = serde_json::from_str(&body).unwrap();
        health["pipelines"]["cut"]["source"].as_str().unwrap_or_default().to_string()
    };
    assert!(
        source(port_a).starts_with("active: this process runs replication slot `flowgate_cut`"),
        "{}",
        source(port_a)
    );
    assert!(source(port_b).starts_with("standby: another process runs"), "{}", source(port_b));
    let mut writer = pg.pgbench(&writes, 2, 12);
    std::thread::sleep(Duration::from_secs(2));

    link.cut();
    let cut = Instant::now();
    assert!(
        wait_for(Duration::from_secs(60), || log(b.path()).contains("taking over: this process")),
        "no takeover:\n{}",
        log(b.path())
    );
    let takeover = cut.elapsed();
    assert!(source(port_b).starts_with("active"), "{}", source(port_b));
    // Cut off for a while, then back: the old leader finds the lock taken
    // and stands by, without streaming again.
    std::thread::sleep(Duration::from_secs(4));
    link.restore();
    assert!(
        wait_for(Duration::from_secs(60), || log(a.path()).contains("another process took over the replication slot")),
        "the cut-off process did not stand down:\n{}",
        log(a.path())
    );
    assert!(source(port_a).starts_with("standby"), "{}", source(port_a));
    assert!(writer.wait().unwrap().success(), "pgbench failed");
    pg.wait_caught_up("flowgate_cut", b.path());
    assert_counters_complete(&pg, &broker, "a cut network");
    eprintln!("takeover after the network was cut: {takeover:?}");
    stop(&mut run_b, b.path());
    stop(&mut run_a, a.path());
}
