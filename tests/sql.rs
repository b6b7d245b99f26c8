//! Database sinks against real servers: PostgreSQL and MariaDB (a private server
//! per test) and SQLite, fed by the Postgres CDC source, Kafka and files.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::kafka::{Broker, Writer, numbered};
use common::mariadb::MariaDb;
use common::pipeline::{Pipeline, sink, source};
use common::postgres::Postgres;
use common::{Guard, kill, log, spawn_run, stop, wait_for, write_file, write_jsonl};
use serde_json::json;

/// Runs a pipeline file to the end of its input; its stderr on failure.
fn run_to_end(dir: &Path, file: &Path) {
    let out = common::flowgate()
        .arg("run")
        .arg(file)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn sqlite(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3").arg(db).arg(sql).output().expect("sqlite3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim_end().to_string()
}

#[test]
fn postgres_changes_replicate_into_postgres_mariadb_and_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    let maria = MariaDb::start();
    pg.sql(
        "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, note text, amount numeric(10,2), at timestamptz, doc jsonb);
         INSERT INTO items SELECT g, 0, 'row ' || g, g / 100.0, '2024-01-01'::timestamptz + g * interval '1 minute', '{\"k\": 1}'
           FROM generate_series(1, 5000) g;
         CREATE SCHEMA replica;
         CREATE TABLE replica.items (LIKE public.items INCLUDING ALL)",
    );
    maria.sql(
        "CREATE TABLE items (id INT PRIMARY KEY, v INT NOT NULL, note TEXT, amount DECIMAL(10,2), at DATETIME(6), doc JSON)",
    );
    let sinks = [
        ("to-pg", sink::postgres(pg.url(), "replica.items").with("mode", "cdc")),
        ("to-maria", sink::mysql(maria.url(), "${meta.table}").with("mode", "cdc")),
        (
            "to-sqlite",
            sink::sqlite(dir.path().join("r.db").display(), "items").with("mode", "cdc").with("create_table", true),
        ),
    ];
    let mut runs = Vec::new();
    for (name, target) in &sinks {
        let file = Pipeline::new(name)
            .source(source::postgres_cdc(pg.url(), &["items"]).with("publication", "items"))
            .sink(target.clone())
            .batch(json!({"size": 500, "linger": "20ms"}))
            .write(dir.path(), &format!("{name}.yaml"));
        runs.push(spawn_run(dir.path(), &file, &[]));
    }
    let writes = write_file(
        dir.path(),
        "writes.sql",
        "\\set id random(1, 6000)\n\
         INSERT INTO items VALUES (:id, 1, 'new', :id / 7.0, now(), '{\"new\": true}')\n\
           ON CONFLICT (id) DO UPDATE SET v = items.v + 1, note = 'upd ' || items.v, amount = items.amount + 1, at = now();\n\
         \\set d random(1, 6000)\nDELETE FROM items WHERE id = :d;\n\
         \\set m random(1, 6000)\n\
         UPDATE items SET id = id + 10000 WHERE id = :m AND id < 3000 AND NOT EXISTS (SELECT 1 FROM items WHERE id = :m + 10000);\n",
    );
    // One client: a key move and an insert of the same key cannot race.
    let status = pg.pgbench(&writes, 1, 8).wait().unwrap();
    assert!(status.success());
    for (name, _) in &sinks {
        pg.wait_caught_up(&format!("flowgate_{}", name.replace('-', "_")), dir.path());
    }
    for run in &mut runs {
        stop(run, dir.path());
    }
    let differ = pg.sql(
        "SELECT (SELECT count(*) FROM (SELECT * FROM public.items EXCEPT SELECT * FROM replica.items) a) || ' ' ||
                (SELECT count(*) FROM (SELECT * FROM replica.items EXCEPT SELECT * FROM public.items) b)",
    );
    assert_eq!(differ, "0 0", "Postgres -> Postgres: rows differ (source-only, target-only)");
    // MariaDB and SQLite: the same rows, compared as text.
    let source =
        pg.sql("SELECT string_agg(id || '|' || v || '|' || note || '|' || amount, E'\\n' ORDER BY id) FROM items");
    let in_maria = maria.sql("SELECT id, v, note, amount FROM items ORDER BY id").replace('\t', "|");
    assert!(source.lines().count() > 4000);
    assert_eq!(in_maria, source, "Postgres -> MariaDB: rows differ");
    let in_sqlite = sqlite(
        &dir.path().join("r.db"),
        "SELECT id || '|' || v || '|' || note || '|' || printf('%.2f', amount) FROM items ORDER BY id",
    );
    assert_eq!(in_sqlite, source, "Postgres -> SQLite: rows differ");
    // Types made it: timestamps to the microsecond, JSON as JSON.
    let pg_row = pg.sql(
        "SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), doc::text FROM items ORDER BY id LIMIT 1",
    );
    let maria_row = maria.sql("SELECT DATE_FORMAT(at, '%Y-%m-%d %H:%i:%s.%f'), doc FROM items ORDER BY id LIMIT 1");
    assert_eq!(maria_row.replace('\t', "|").replace(" ", ""), pg_row.replace(" ", ""));
}

#[test]
fn effectively_once_applies_each_kafka_record_once_across_kills() {
    const N: u64 = 60_000;
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    pg.sql("CREATE TABLE events (id bigint NOT NULL, email text, pad text)");
    let broker = Broker::with_topics(&[("in", 3)]);
    Writer::new(&broker.addr()).send("in", numbered(0..N));
    let file = Pipeline::new("eo")
        .source(source::kafka_quick_group(&broker.addr(), &["in"], "eo"))
        .sink(
            sink::postgres(pg.url(), "events")
                .with("columns", json!(["id", "email", "pad"]))
                .with("delivery", "effectively_once"),
        )
        .batch(json!({"size": 500, "linger": "10ms"}))
        .write(dir.path(), "eo.yaml");
    let mut run = spawn_run(dir.path(), &file, &[]);
    for at in [15_000, 35_000] {
        assert!(
            wait_for(Duration::from_secs(60), || pg.sql("SELECT count(*) FROM events").parse::<u64>().unwrap() >= at),
            "{}",
            log(dir.path())
        );
        kill(&mut run);
        run = spawn_run(dir.path(), &file, &[]);
    }
    assert!(
        wait_for(Duration::from_secs(90), || pg.sql("SELECT count(*) FROM events").parse::<u64>().unwrap() >= N),
        "{}",
        log(dir.path())
    );
    std::thread::sleep(Duration::from_secs(2)); // Anything applied twice would show up now.
    stop(&mut run, dir.path());
    // Without a key, a record applied twice would be a second row.
    assert_eq!(pg.sql("SELECT count(*) || ' ' || count(DISTINCT id) FROM events"), format!("{N} {N}"));
    assert!(log(dir.path()).contains("resuming from the position stored with the sink's data"), "{}", log(dir.path()));
}

/// A Kafka source held back by a sink that is down keeps polling, its
/// partitions paused, and stays in its group: no rebalance, nothing read twice.
#[test]
fn a_kafka_source_behind_a_failed_sink_stays_in_its_group() {
    const N: u64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let mut pg = Postgres::start();
    pg.sql("CREATE TABLE events (id bigint NOT NULL, email text, pad text)");
    let broker = Broker::with_topics(&[("in", 2)]);
    let writer = Writer::new(&broker.addr());
    writer.send("in", numbered(0..N / 2));
    let file = Pipeline::new("held")
        .source(source::kafka_quick_group(&broker.addr(), &["in"], "held"))
        .sink(sink::postgres(pg.url(), "events").with("columns", json!(["id", "email", "pad"])))
        .batch(json!({"size": 100, "linger": "10ms", "buffer": 2}))
        .write(dir.path(), "held.yaml");
    let mut run = spawn_run(dir.path(), &file, &[]);
    let count = |pg: &Postgres| pg.sql("SELECT count(*) FROM events").parse::<u64>().unwrap();
    assert!(wait_for(Duration::from_secs(60), || count(&pg) >= N / 2), "{}", log(dir.path()));
    pg.stop();
    // Read while the sink is down: the source fills the pipeline, then waits.
    writer.send("in", numbered(N / 2..N));
    std::thread::sleep(Duration::from_secs(18)); // Three times max.poll.interval.ms.
    pg.start_again();
    assert!(wait_for(Duration::from_secs(90), || count(&pg) >= N), "{}", log(dir.path()));
    std::thread::sleep(Duration::from_secs(2)); // Anything read twice would show up now.
    stop(&mut run, dir.path());
    assert_eq!(pg.sql("SELECT count(*) || ' ' || count(DISTINCT id) FROM events"), format!("{N} {N}"));
    let log = log(dir.path());
    assert_eq!(log.matches("partitions assigned").count(), 1, "the group rebalanced:\n{log}");
    let stopping = log.find("stopping; draining").expect("a graceful stop");
    assert!(!log[..stopping].contains("partitions revoked"), "the group rebalanced:\n{log}");
}

#[test]
fn a_row_refused_by_the_database_goes_to_dead_letters_and_its_batch_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    pg.sql("CREATE TABLE orders (id int PRIMARY KEY, amount numeric(10,2) CHECK (amount > 0), placed date)");
    // Integers and decimals in one column: Postgres must read each as what it is.
    let input: Vec<String> = (1..=100)
        .map(|i| match i {
            13 => r#"{"id":13,"amount":-5,"placed":"2024-01-01"}"#.to_string(),
            42 => r#"{"id":42,"amount":1,"placed":"not a date"}"#.to_string(),
            // Every tenth amount an integer.
            i if i % 10 == 0 => format!(r#"{{"id":{i},"amount":{i},"placed":"2024-02-{:02}"}}"#, i % 28 + 1),
            i => format!(r#"{{"id":{i},"amount":{i}.5,"placed":"2024-02-{:02}"}}"#, i % 28 + 1),
        })
        .collect();
    write_file(dir.path(), "in.jsonl", &(input.join("\n") + "\n"));
    let file = Pipeline::new("dl")
        .source(source::file("in.jsonl"))
        .sink(sink::postgres(pg.url(), "orders"))
        .dead_letter(sink::file("dead.jsonl"))
        .write(dir.path(), "dl.yaml");
    run_to_end(dir.path(), &file);
    // 1..100 without 13 and 42, plus .5 for the 88 that are not multiples of ten.
    assert_eq!(pg.sql("SELECT count(*) || ' ' || sum(amount) FROM orders"), "98 5039.00");
    let dead = common::records(&dir.path().join("dead.jsonl"));
    let reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(dead.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("violates check constraint"), "{reasons:?}");
    assert!(reasons[1].contains("invalid input syntax for type date"), "{reasons:?}");
    assert_eq!(dead[0]["record"]["value"]["id"], 13);
}

#[test]
fn a_database_restart_mid_run_makes_the_pipeline_wait_then_finish() {
    const N: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let mut pg = Postgres::start();
    let mut maria = MariaDb::start();
    pg.sql("CREATE TABLE t (id bigint PRIMARY KEY, name text, pad text)");
    maria.sql("CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT, pad TEXT)");
    // Half the input now, half while the databases are down.
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, N, 100);
    let all = std::fs::read_to_string(&input).unwrap();
    let half = all.lines().take(N as usize / 2).map(|l| format!("{l}\n")).collect::<String>();
    std::fs::write(&input, &half).unwrap();
    let mut runs = Vec::new();
    for (name, target) in [("to-pg", sink::postgres(pg.url(), "t")), ("to-maria", sink::mysql(maria.url(), "t"))] {
        let file = Pipeline::new(name)
            .source(source::file("in.jsonl").with("follow", true))
            .sink(target.with("mode", "upsert").with("key", json!(["id"])))
            .batch(json!({"size": 200, "linger": "10ms"}))
            .write(dir.path(), &format!("{name}.yaml"));
        runs.push(spawn_run(dir.path(), &file, &[]));
    }
    let half_in = |pg: &Postgres, maria: &MariaDb| {
        pg.sql("SELECT count(*) FROM t") == (N / 2).to_string()
            && maria.sql("SELECT count(*) FROM t") == (N / 2).to_string()
    };
    assert!(wait_for(Duration::from_secs(60), || half_in(&pg, &maria)), "{}", log(dir.path()));
    pg.stop();
    maria.stop();
    std::fs::write(&input, &all).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    for run in &mut runs {
        assert!(run.try_wait().unwrap().is_none(), "flowgate exited while the database was down:\n{}", log(dir.path()));
    }
    pg.start_again();
    maria.start_again();
    let all_in =
        || pg.sql("SELECT count(*) FROM t") == N.to_string() && maria.sql("SELECT count(*) FROM t") == N.to_string();
    assert!(wait_for(Duration::from_secs(120), all_in), "{}", log(dir.path()));
    for run in &mut runs {
        stop(run, dir.path());
    }
    assert!(log(dir.path()).contains("retry"), "{}", log(dir.path()));
}

/// A sink's database down: past `--degraded-after` the pipeline is
/// `degraded` on `/health` with the reason, `/health/ready` fails while
/// `/health/live` answers, and the progress line and the log say it; once
/// the database is back it is `running` again, and nothing is lost.
#[test]
fn a_sink_database_down_degrades_the_pipeline_until_it_is_back() {
    const N: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let mut pg = Postgres::start();
    pg.sql("CREATE TABLE t (id bigint PRIMARY KEY, name text, pad text)");
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, N, 100);
    let all = std::fs::read_to_string(&input).unwrap();
    let half = all.lines().take(N as usize / 2).map(|l| format!("{l}\n")).collect::<String>();
    std::fs::write(&input, &half).unwrap();
    let file = Pipeline::new("to-pg")
        .source(source::file("in.jsonl").with("follow", true))
        .sink(sink::postgres(pg.url(), "t").with("mode", "upsert").with("key", json!(["id"])))
        .batch(json!({"size": 200, "linger": "10ms"}))
        .write(dir.path(), "to-pg.yaml");
    let flags = ["--metrics-addr", "127.0.0.1:0", "--degraded-after", "1s", "--progress", "1s"];
    let mut run = spawn_run(dir.path(), &file, &flags);
    let port = common::metrics_port(dir.path());
    let code = |path: &str| common::http_get(port, path).map(|(c, _)| c);
    let count = |pg: &Postgres| pg.sql("SELECT count(*) FROM t");
    assert!(wait_for(Duration::from_secs(60), || count(&pg) == (N / 2).to_string()), "{}", log(dir.path()));
    assert!(wait_for(Duration::from_secs(10), || code("/health/ready") == Some(200)), "{}", log(dir.path()));

    pg.stop();
    std::fs::write(&input, &all).unwrap();
    let degraded = || {
        common::http_get(port, "/health")
            .is_some_and(|(c, b)| c == 503 && b.contains(r#""state":"degraded""#) && b.contains("sink retrying"))
    };
    assert!(wait_for(Duration::from_secs(30), degraded), "{:?}", common::http_get(port, "/health"));
    assert_eq!(code("/health/ready"), Some(503));
    assert_eq!(code("/health/live"), Some(200));

    pg.start_again();
    assert!(wait_for(Duration::from_secs(120), || count(&pg) == N.to_string()), "{}", log(dir.path()));
    let ready = || code("/health/ready") == Some(200);
    assert!(wait_for(Duration::from_secs(10), ready), "{:?}", common::http_get(port, "/health"));
    stop(&mut run, dir.path());
    let text = log(dir.path());
    assert!(text.contains("degraded") && text.contains("recovered: running"), "{text}");
    assert!(text.contains("· sink retrying"), "the progress line says it:\n{text}");
}

#[test]
fn effectively_once_applies_each_postgres_change_once_across_kills() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    pg.sql(
        "CREATE TABLE log (id bigserial PRIMARY KEY, n int NOT NULL);
         CREATE SCHEMA copy; CREATE TABLE copy.applied (id bigint NOT NULL, n int NOT NULL)",
    );
    // Each change is inserted as a new row: one applied twice is a second row.
    let file = Pipeline::new("eo-cdc")
        // The exported snapshot: an incremental one's rows are reads of the
        // current state, which a row inserted meanwhile also has as a change,
        // and this sink keeps every event as a row.
        .source(source::postgres_cdc(pg.url(), &["log"]).with("snapshot", "initial"))
        .sink(
            sink::postgres(pg.url(), "copy.applied")
                .with("columns", json!({"id": "after.id", "n": "after.n"}))
                .with("delivery", "effectively_once"),
        )
        .batch(json!({"size": 300, "linger": "10ms"}))
        .write(dir.path(), "eo-cdc.yaml");
    // Transactions of 7 rows, so that batches of 300 end inside them; COPY writes
    // its rows as one multi-row insert, whose rows share an LSN.
    let writes = write_file(
        dir.path(),
        "w.sql",
        "INSERT INTO log (n) SELECT g FROM generate_series(1, 7) g;\nCOPY log (n) FROM PROGRAM 'seq 1 7';\n",
    );
    let mut run = spawn_run(dir.path(), &file, &[]);
    let mut writer = pg.pgbench(&writes, 2, 12);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    for i in 0..3u32 {
        std::thread::sleep(Duration::from_millis(1500 + u64::from(seed.rotate_left(i * 8) % 1500)));
        kill(&mut run);
        run = spawn_run(dir.path(), &file, &[]);
    }
    assert!(writer.wait().unwrap().success());
    pg.wait_caught_up("flowgate_eo_cdc", dir.path());
    stop(&mut run, dir.path());
    let source = pg.sql("SELECT count(*) FROM log");
    assert!(source.parse::<u64>().unwrap() > 10_000, "only {source} rows written");
    assert_eq!(pg.sql("SELECT count(*) || ' ' || count(DISTINCT id) FROM copy.applied"), format!("{source} {source}"));
    assert_eq!(pg.sql("SELECT count(*) FROM (SELECT id, n FROM log EXCEPT SELECT id, n FROM copy.applied) x"), "0");
}

#[test]
fn sinks_started_together_share_the_tables_either_creates() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    let broker = Broker::with_topics(&[("in", 1)]);
    Writer::new(&broker.addr()).send("in", numbered(0..1000));
    // Other starters create the position table and the target table, and have
    // not committed yet: the sink sees neither, and each of its CREATE TABLE IF
    // NOT EXISTS waits and then collides with the committed one.
    let hold = |ddl: &str| {
        let mut session = pg.session();
        let mut input = session.stdin.take().unwrap();
        writeln!(input, "BEGIN; {ddl};").unwrap();
        (session, input)
    };
    let positions = hold(
        "CREATE TABLE flowgate_source_positions (pipeline TEXT NOT NULL, source TEXT NOT NULL, position TEXT NOT NULL, \
         PRIMARY KEY (pipeline, source))",
    );
    let events = hold("CREATE TABLE events (id bigint, email text, pad text)");
    let idle = "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'";
    assert!(wait_for(Duration::from_secs(30), || pg.sql(idle) == "2"));
    let file = Pipeline::new("together")
        .source(source::kafka(&broker.addr(), &["in"], "together"))
        .sink(sink::postgres(pg.url(), "events").with("create_table", true).with("delivery", "effectively_once"))
        .write(dir.path(), "together.yaml");
    let mut run = spawn_run(dir.path(), &file, &[]);
    for (table, (mut session, mut input)) in [("flowgate_source_positions", positions), ("events", events)] {
        let blocked = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE 'CREATE TABLE IF NOT EXISTS %{table}%'"
        );
        assert!(wait_for(Duration::from_secs(30), || pg.sql(&blocked) == "1"), "{}", log(dir.path()));
        writeln!(input, "COMMIT;").unwrap();
        drop(input);
        assert!(session.wait().unwrap().success());
    }
    let count = || pg.sql("SELECT count(*) FROM events");
    assert!(wait_for(Duration::from_secs(60), || count() == "1000"), "{}\n{}", count(), log(dir.path()));
    stop(&mut run, dir.path());
}

/// Runs a shipped pipeline file with these environment variables.
fn run_shipped(dir: &Path, name: &str, env: &[(&str, String)]) -> Guard {
    common::spawn_run_with_env(dir, &common::repo().join("pipelines").join(name), &[], env)
}

#[test]
fn the_shipped_postgres_to_postgres_pipeline_replicates() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    let schema = "CREATE SCHEMA shop;
         CREATE TABLE shop.customers (id int PRIMARY KEY, name text NOT NULL, email text);
         CREATE TABLE shop.orders (id bigserial PRIMARY KEY, customer int REFERENCES shop.customers,
           amount numeric(10,2) NOT NULL, status text NOT NULL DEFAULT 'new', placed_at timestamptz NOT NULL DEFAULT now())";
    pg.sql(schema);
    pg.sql("CREATE DATABASE replica");
    pg.sql_in("replica", schema);
    pg.sql(
        "INSERT INTO shop.customers SELECT g, 'c' || g, NULL FROM generate_series(1, 50) g;
            INSERT INTO shop.orders (customer, amount) SELECT 1 + g % 50, g FROM generate_series(1, 500) g",
    );
    let replica_url = format!("postgres://postgres@127.0.0.1:{}/replica", pg.port);
    let mut run = run_shipped(
        dir.path(),
        "postgres-to-postgres.yaml",
        &[("SOURCE_URL", pg.url()), ("TARGET_URL", replica_url), ("DEAD_LETTERS", "dead.jsonl".into())],
    );
    pg.wait_caught_up("flowgate_replica", dir.path());
    pg.sql(
        "UPDATE shop.orders SET status = 'paid' WHERE id % 3 = 0; DELETE FROM shop.orders WHERE id % 5 = 0;
            UPDATE shop.customers SET email = 'x@example.com' WHERE id < 10",
    );
    pg.wait_caught_up("flowgate_replica", dir.path());
    stop(&mut run, dir.path());
    for q in [
        "SELECT string_agg(id || status || amount || placed_at, ',' ORDER BY id) FROM shop.orders",
        "SELECT string_agg(id || name || coalesce(email, '-'), ',' ORDER BY id) FROM shop.customers",
    ] {
        assert_eq!(pg.sql_in("replica", q), pg.sql(q), "{q}");
    }
    // The sink creates the file when the pipeline starts: it is there, and empty.
    let dead = std::fs::read_to_string(dir.path().join("dead.jsonl")).expect("the dead-letter file");
    assert!(dead.is_empty(), "{}", &dead[..dead.len().min(3000)]);
}

#[test]
fn the_shipped_kafka_to_postgres_pipeline_dead_letters_what_the_database_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    pg.sql("CREATE TABLE orders (id bigint PRIMARY KEY, customer text, amount numeric(10,2) CHECK (amount >= 0), region text)");
    let broker = Broker::with_topics(&[("orders", 3), ("orders-dead-letters", 1)]);
    let records = (1..=1000).map(|i| {
        let amount = if i == 500 { "-1".to_string() } else { format!("{i}.25") };
        (format!("k{i}"), format!(r#"{{"id":{i},"customer":"c{}","amount":{amount},"region":"eu"}}"#, i % 7))
    });
    Writer::new(&broker.addr()).send("orders", records);
    let mut run = run_shipped(
        dir.path(),
        "kafka-to-postgres.yaml",
        &[("KAFKA_BROKERS", broker.addr()), ("POSTGRES_URL", pg.url())],
    );
    assert!(
        wait_for(Duration::from_secs(60), || pg.sql("SELECT count(*) FROM orders") == "999"),
        "{}",
        log(dir.path())
    );
    let mut dead = common::kafka::Reader::new(&broker.addr(), "orders-dead-letters", false);
    assert!(dead.read_until(Duration::from_secs(20), |r| r.total >= 1));
    assert!(dead.messages[0].value.contains("violates check constraint"), "{}", dead.messages[0].value);
    stop(&mut run, dir.path());
    assert_eq!(pg.sql("SELECT count(*) FROM flowgate_source_positions WHERE pipeline = 'kafka-to-postgres'"), "3");
}

#[test]
fn a_database_can_be_the_dead_letter_sink() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    pg.sql(
        "CREATE TABLE t (id int PRIMARY KEY);
         CREATE TABLE dead (pipeline text, stage text, reason text, failed_at_ms bigint, record jsonb)",
    );
    write_file(dir.path(), "in.jsonl", "{\"id\":1}\n{\"id\":1}\n{\"id\":2}\n{\"id\":2}\n{\"id\":3}\n");
    let file = Pipeline::new("dlq")
        .source(source::file("in.jsonl"))
        .sink(sink::postgres(pg.url(), "t"))
        .dead_letter(sink::postgres(pg.url(), "dead"))
        .write(dir.path(), "dlq.yaml");
    run_to_end(dir.path(), &file);
    assert_eq!(pg.sql("SELECT count(*) FROM t"), "3");
    // Committed, not left in an open transaction.
    assert_eq!(
        pg.sql("SELECT count(*) || ' ' || min(stage) || ' ' || min(record->'value'->>'id') FROM dead WHERE reason LIKE '%duplicate key%'"),
        "2 sink 1"
    );
}

/// A Postgres sink's settings for the existing `table`, in `mode` by `key`,
/// filling the named `columns` (each record's fields when there are none).
fn pg_sink(
    url: String,
    table: &str,
    mode: flowgate_sql::Mode,
    key: &[&str],
    columns: &[&str],
) -> flowgate_sql::SqlSinkConfig {
    flowgate_sql::SqlSinkConfig {
        url,
        table: table.parse().unwrap(),
        mode,
        key: key.iter().map(|k| k.to_string()).collect(),
        columns: (!columns.is_empty())
            .then(|| flowgate_sql::Columns::Names(columns.iter().map(|c| c.to_string()).collect())),
        create_table: false,
        delivery: Default::default(),
        synchronous: Default::default(),
        unknown_fields: Default::default(),
        tables_allowed: None,
    }
}

/// Writes `records` (key, value) into `sink` in batches of `size`; the reasons
/// of the records refused.
async fn write_in_batches(sink: &mut flowgate_sql::SqlSink, records: &[(String, String)], size: usize) -> Vec<String> {
    write_batches(sink, records, size, true).await
}

/// [`write_in_batches`], with the sink's prepare step run on each batch
/// (`prepared`, as the engine does) or not, so that it takes the general path.
async fn write_batches(
    sink: &mut flowgate_sql::SqlSink,
    records: &[(String, String)],
    size: usize,
    prepared: bool,
) -> Vec<String> {
    use flowgate_sdk::{Batch, Record, Sink};
    let mut refused = Vec::new();
    for chunk in records.chunks(size) {
        let mut b = Batch::with_capacity(0, chunk.len());
        for (k, v) in chunk {
            let mut r = Record::from_value(v.clone());
            r.key = (!k.is_empty()).then(|| k.clone().into());
            b.records.push(r);
        }
        // As the engine does, ahead of the write.
        if let Some(preparer) = sink.preparer().filter(|_| prepared) {
            preparer.prepare(&mut b);
        }
        sink.write(&mut b).await.unwrap();
        sink.commit(&mut b).await.unwrap();
        refused.extend(b.rejected.iter().map(|r| r.reason.clone()));
    }
    refused
}

/// The SQL sinks' debug events on this thread, as text, while the guard
/// lives: which way each batch went is said only there.
fn sink_events() -> (tracing::subscriber::DefaultGuard, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    #[derive(Clone)]
    struct Events(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Events {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let events = Events(Default::default());
    let text = std::sync::Arc::clone(&events.0);
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("flowgate_sql=debug")
        .with_ansi(false)
        .with_writer(move || events.clone())
        .finish();
    (tracing::subscriber::set_default(subscriber), text)
}

/// How many batches into `table` were written from `COPY` data made ahead (text or binary).
fn made_ahead(events: &std::sync::Mutex<Vec<u8>>, table: &str) -> usize {
    let text = String::from_utf8_lossy(&events.lock().unwrap()).into_owned();
    text.lines().filter(|l| l.contains("made ahead") && l.contains(&format!("table=\"{table}\""))).count()
}

/// Postgres's bulk path (`COPY`, straight in for inserts, through a staging
/// table for upserts and change events) writes exactly the rows the statement
/// path writes, for values that need escaping, NULLs, arrays, JSON, TOAST
/// columns left as they are, deletes, key moves, and a column added while the
/// sink runs; a refused row in a `COPY` batch is refused alone with the
/// database's message. Inserts of named columns are encoded as `COPY` text
/// ahead of the write once the table is described, to the same rows.
#[tokio::test]
async fn copy_writes_what_statements_write_in_every_mode() {
    use flowgate_sql::{Mode, SqlSink};
    let pg = Postgres::start();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    // The test runs on one thread, so the sinks' counters and events land here.
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let (_events, events) = sink_events();
    pg.sql(
        "CREATE TABLE ins_copy (id int, name varchar(8), amount numeric(10,2), note text, tags text[], doc jsonb, \
         at timestamptz, ok boolean, flags bit(3), codes varchar(3)[]); CREATE TABLE ins_rows (LIKE ins_copy); \
         CREATE TABLE ins_named (LIKE ins_copy); CREATE TABLE ins_whole (LIKE ins_copy); \
         CREATE TABLE ups_copy (id int PRIMARY KEY, name text, amount numeric); CREATE TABLE ups_rows (LIKE ups_copy \
         INCLUDING ALL); CREATE TABLE ups_named (LIKE ups_copy INCLUDING ALL); \
         CREATE TABLE ups_whole (LIKE ups_copy INCLUDING ALL); \
         CREATE TABLE cdc_copy (id int PRIMARY KEY, n int, doc text); \
         CREATE TABLE cdc_rows (LIKE cdc_copy INCLUDING ALL); CREATE TABLE cdc_named (LIKE cdc_copy INCLUDING ALL); \
         CREATE TABLE cdc_named_rows (LIKE cdc_copy INCLUDING ALL); CREATE TABLE cdc_whole (LIKE cdc_copy INCLUDING ALL)",
    );
    let open =
        |table: &'static str, mode: Mode, key: &[&str]| SqlSink::open(pg_sink(pg.url(), table, mode, key, &[]), table);
    let notes = ["tab\there", "line\nbreak", "back\\slash", "\\N", "cr\rx", "é ✓", "", "\\."];
    let insert = |i: usize| {
        let name = if i == 47 { json!("much too long") } else { json!(format!("n{i}")) };
        let amount = if i.is_multiple_of(2) { json!(i) } else { json!(i as f64 + 0.5) };
        let note = if i.is_multiple_of(9) { json!(null) } else { json!(notes[i % notes.len()]) };
        let v = json!({"id": i, "name": name, "amount": amount, "note": note, "tags": ["a", "b c", null, "d\"e"],
            "doc": {"k": i, "s": "x\ty"}, "at": "2024-05-01T12:00:00.25Z", "ok": i.is_multiple_of(3),
            "flags": "101", "codes": ["ab", "cde"]});
        (String::new(), v.to_string())
    };
    // A clean batch, then one with a row the database refuses.
    let clean: Vec<_> = (1..=40).map(insert).collect();
    let with_bad: Vec<_> = (41..=60).map(insert).collect();
    for (table, size) in [("ins_copy", 1000), ("ins_rows", 5)] {
        let mut sink = open(table, Mode::Insert, &[]).await.unwrap();
        assert!(write_in_batches(&mut sink, &clean, size).await.is_empty());
        let refused = write_in_batches(&mut sink, &with_bad, size).await;
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].contains("value too long for type character varying(8)"), "{refused:?}");
    }
    // The first batch describes the table; the ones after it, the one with
    // the refused row too, are encoded ahead of the write: named columns, or
    // without `columns:` records holding exactly the table's.
    let columns = ["id", "name", "amount", "note", "tags", "doc", "at", "ok", "flags", "codes"];
    for (table, columns) in [("ins_named", &columns[..]), ("ins_whole", &[])] {
        let mut sink = SqlSink::open(pg_sink(pg.url(), table, Mode::Insert, &[], columns), table).await.unwrap();
        assert!(write_in_batches(&mut sink, &clean, 20).await.is_empty());
        let refused = write_in_batches(&mut sink, &with_bad, 20).await;
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].contains("value too long for type character varying(8)"), "{refused:?}");
        // The second clean batch; the one with the refused row went the general way.
        assert_eq!(made_ahead(&events, table), 1, "{table}");
    }

    let ups = |(i, name): (usize, &str)| {
        (String::new(), json!({"id": i, "name": format!("{name}{i}"), "amount": i}).to_string())
    };
    let first: Vec<_> = (1..=30).map(|i| (i, "a")).map(ups).collect();
    // Keys seen before and new ones, and one key twice: the last one counts.
    let mut second: Vec<_> = (15..=45).map(|i| (i, "b")).map(ups).collect();
    second.push(ups((20, "c")));
    for (table, size) in [("ups_copy", 1000), ("ups_rows", 5)] {
        let mut sink = open(table, Mode::Upsert, &["id"]).await.unwrap();
        assert!(write_in_batches(&mut sink, &first, size).await.is_empty());
        assert!(write_in_batches(&mut sink, &second, size).await.is_empty());
    }
    // Named columns: the batches after the first are encoded ahead of the
    // write (keys already there, so through the staging table).
    for (table, columns) in [("ups_named", &["amount", "name", "id"][..]), ("ups_whole", &[])] {
        let mut sink = SqlSink::open(pg_sink(pg.url(), table, Mode::Upsert, &["id"], columns), table).await.unwrap();
        assert!(write_in_batches(&mut sink, &first, 1000).await.is_empty());
        assert!(write_in_batches(&mut sink, &second, 16).await.is_empty());
        assert_eq!(made_ahead(&events, table), 2, "{table}");
    }

    let ev = |op: &str, id: usize, before: serde_json::Value, after: serde_json::Value| {
        (json!({"id": id}).to_string(), json!({"op": op, "before": before, "after": after}).to_string())
    };
    let created: Vec<_> =
        (1..=40).map(|i| ev("c", i, json!(null), json!({"id": i, "n": 1, "doc": format!("big {i}")}))).collect();
    let mut changed: Vec<_> = (1..=20)
        .map(|i| ev("u", i, json!({"id": i}), json!({"id": i, "n": 2, "doc": "__debezium_unavailable_value"})))
        .collect();
    changed.extend((21..=40).map(|i| ev("d", i, json!({"id": i, "n": null, "doc": null}), json!(null))));
    // A key move, with its TOASTed value unchanged.
    changed.push(ev("u", 100, json!({"id": 1}), json!({"id": 100, "n": 3, "doc": "__debezium_unavailable_value"})));
    let added: Vec<_> = (50..=69)
        .map(|i| ev("c", i, json!(null), json!({"id": i, "n": 4, "doc": "new", "extra": format!("x{i}")})))
        .collect();
    for (table, size) in [("cdc_copy", 1000), ("cdc_rows", 5)] {
        let mut sink = open(table, Mode::Cdc, &[]).await.unwrap();
        assert!(write_in_batches(&mut sink, &created, size).await.is_empty());
        assert!(write_in_batches(&mut sink, &changed, size).await.is_empty());
        // A column added while the sink runs: its staging table follows (a
        // `COPY` naming a column the staging table lacks would fail the batch).
        pg.sql(&format!("ALTER TABLE {table} ADD COLUMN extra text"));
        assert!(write_in_batches(&mut sink, &added, size).await.is_empty());
    }
    // Named columns: after the first, batches are encoded ahead of the write
    // unless a row moves to a new key or the database refuses one.
    let full = |op: &str, id: usize, n: serde_json::Value, doc: &str| {
        let row = json!({"id": id, "n": n, "doc": format!("{doc} {id}")});
        // Only its key is read; its other fields never refuse an event.
        let before = json!({"id": id, "unnamed": {"x": [1]}});
        let (before, after) = if op == "d" { (before, json!(null)) } else { (before, row) };
        let event = json!({"op": op, "before": before, "after": after, "source": {"table": "t", "lsn": id}});
        (json!({"id": id}).to_string(), event.to_string())
    };
    let mut mixed: Vec<_> = (1..=10).map(|i| full("u", i, json!(2), "upd")).collect();
    mixed.extend((11..=15).map(|i| full("d", i, json!(0), "")));
    mixed.extend([full("d", 16, json!(0), ""), full("c", 16, json!(3), "again"), full("c", 17, json!(3), "replayed")]);
    mixed.extend([full("u", 5, json!(4), "twice"), (String::new(), String::new())]);
    // Keys written alike in JSON but one row in the table: deletes go before
    // upserts, and updates and creates in the order they first came.
    let written = |op: &str, before: serde_json::Value, after: serde_json::Value| {
        (String::new(), json!({"op": op, "before": before, "after": after}).to_string())
    };
    mixed.extend([
        written("d", json!({"id": "38"}), json!(null)),
        written("c", json!(null), json!({"id": 38, "n": 9, "doc": "back"})),
        written("u", json!(null), json!({"id": "39", "n": 7, "doc": "text key"})),
        written("c", json!(null), json!({"id": 39, "n": 8, "doc": "number key"})),
    ]);
    mixed.extend((41..=60).map(|i| full("c", i, json!(1), "new")));
    let moved = vec![full("u", 18, json!(5), "stays"); 16]
        .into_iter()
        .chain([(
            String::new(),
            json!({"op": "u", "before": {"id": 19}, "after": {"id": 119, "n": 5, "doc": "moved"}}).to_string(),
        )])
        .collect::<Vec<_>>();
    let mut bad: Vec<_> = (20..=36).map(|i| full("u", i, json!(6), "last")).collect();
    bad.push(full("u", 37, json!("six"), "bad"));
    // Against the same batches unprepared, written the general way (the
    // order of its groups depends on the batch: see the keys written alike).
    let named = ["doc", "id", "n"];
    for (table, columns, prepared) in
        [("cdc_named", &named[..], true), ("cdc_whole", &[], true), ("cdc_named_rows", &named, false)]
    {
        let named = pg_sink(pg.url(), table, Mode::Cdc, &["id"], columns);
        let mut sink = SqlSink::open(named, table).await.unwrap();
        for batch in [&created, &mixed, &moved] {
            assert!(write_batches(&mut sink, batch, 1000, prepared).await.is_empty(), "{table}");
        }
        let refused = write_batches(&mut sink, &bad, 1000, prepared).await;
        assert_eq!(refused.len(), 1, "{table}: {refused:?}");
        assert!(refused[0].contains("invalid input syntax for type integer"), "{refused:?}");
    }
    assert_eq!(
        [made_ahead(&events, "cdc_named"), made_ahead(&events, "cdc_whole"), made_ahead(&events, "cdc_named_rows")],
        [1, 1, 0]
    );

    // Tables where COPY would not do what INSERT does take the statements:
    // a value for a GENERATED ALWAYS identity is refused, not written.
    pg.sql("CREATE TABLE ident (id int GENERATED ALWAYS AS IDENTITY, v text)");
    let mut sink = open("ident", Mode::Insert, &[]).await.unwrap();
    let records: Vec<_> = (1..=40).map(|i| (String::new(), json!({"id": i, "v": "x"}).to_string())).collect();
    let mut b = flowgate_sdk::Batch::with_capacity(0, records.len());
    b.records.extend(records.iter().map(|(_, v)| flowgate_sdk::Record::from_value(v.clone())));
    let refused = flowgate_sdk::Sink::write(&mut sink, &mut b).await.expect_err("an identity value is refused");
    assert!(format!("{refused:?}").contains("428C9"), "{refused:?}");
    assert_eq!(pg.sql("SELECT count(*) FROM ident"), "0");

    let dump = |table: &str| pg.sql(&format!("SELECT string_agg(t::text, E'\\n' ORDER BY id) FROM {table} t"));
    for (copied, rows) in [
        ("ins_copy", "ins_rows"),
        ("ins_named", "ins_rows"),
        ("ins_whole", "ins_rows"),
        ("ups_copy", "ups_rows"),
        ("ups_named", "ups_rows"),
        ("ups_whole", "ups_rows"),
        ("cdc_copy", "cdc_rows"),
        ("cdc_named", "cdc_named_rows"),
        ("cdc_whole", "cdc_named_rows"),
    ] {
        assert_eq!(dump(copied), dump(rows), "{copied} and {rows} differ");
    }
    assert_eq!(pg.sql("SELECT count(*) FROM ins_copy"), "59");
    assert_eq!(pg.sql("SELECT note FROM ins_copy WHERE id = 3"), "\\N");
    assert_eq!(
        pg.sql("SELECT string_agg(name, ',' ORDER BY id) FROM ups_copy WHERE id IN (14, 15, 20, 45)"),
        "a14,b15,c20,b45"
    );
    assert_eq!(
        pg.sql(
            "SELECT string_agg(id || ':' || n || ':' || doc, ',' ORDER BY id) FROM cdc_copy WHERE id IN (2, 20, 100)"
        ),
        "2:2:big 2,20:2:big 20,100:3:big 1"
    );
    assert_eq!(pg.sql("SELECT count(*) || ' ' || count(extra) FROM cdc_copy"), "40 20");
    assert_eq!(
        pg.sql(
            "SELECT string_agg(id || ':' || n || ':' || doc, ',' ORDER BY id) FROM cdc_named WHERE id IN \
                (1, 5, 11, 16, 17, 18, 19, 20, 37, 38, 39, 41, 119)"
        ),
        "1:2:upd 1,5:4:twice 5,16:3:again 16,17:3:replayed 17,18:5:stays 18,20:6:last 20,37:1:big 37,38:9:back,\
         39:8:number key,41:1:new 41,119:5:moved"
    );

    // The big batches went by COPY (the one with a refused row went row by row),
    // the small ones never did.
    let text = metrics.render();
    let copied = |pipeline: &str| {
        let line = format!("flowgate_sql_copied_rows_total{{pipeline=\"{pipeline}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .unwrap_or_else(|| panic!("no {line}in\n{text}"))
            .to_string()
    };
    // Inserts: the clean 40. Upserts: 30, then 31 keys. Changes: 40 creates,
    // 20 updates and 20 deletes, 20 rows with the new column.
    assert_eq!(
        [copied("ins_copy"), copied("ins_named"), copied("ups_copy"), copied("cdc_copy")],
        ["40", "40", "61", "100"]
    );
    assert_eq!([copied("ins_rows"), copied("ups_rows"), copied("cdc_rows")], ["0", "0", "0"]);
}

/// Columns whose types have a binary `COPY` form take it when a batch is
/// encoded ahead, and end exactly as the statements write them: integers at
/// their types' limits, floats the statements round from decimal text,
/// numbers, booleans and JSON into text columns, JSON and strings into JSON
/// columns. A value whose binary form could differ from what the input
/// function reads (a string for a number, a fraction for an integer) sends
/// the batch as text; a value the database refuses, the general way.
#[tokio::test]
async fn binary_copy_writes_what_statements_write() {
    use flowgate_sql::{Mode, SqlSink};
    let pg = Postgres::start();
    let (_events, events) = sink_events();
    pg.sql(
        "CREATE TABLE bin_rows (i2 smallint, i4 integer, i8 bigint PRIMARY KEY, f float8, b boolean, t text, \
         v varchar(3), j json, jb jsonb); CREATE TABLE bin_named (LIKE bin_rows INCLUDING ALL); \
         CREATE TABLE bin_ups (LIKE bin_rows INCLUDING ALL); CREATE TABLE bin_ups_rows (LIKE bin_rows INCLUDING ALL)",
    );
    let texts = [json!("tab\there\\"), json!(12), json!(1.5), json!(true), json!({"a": [1, "x"]}), json!([1, null])];
    let floats = [json!(7), json!(0.1), json!(1e300), json!(-0.0), json!(9007199254740993u64), json!(5e-324)];
    // The limits, and NULLs, in the second batch (the first describes the table).
    let row = |i: i64| {
        let i4 = match i {
            22 => json!(2147483647),
            _ if i % 7 == 0 => json!(null),
            _ => json!(-i),
        };
        let f = if i % 5 == 0 { json!(null) } else { floats[i as usize % floats.len()].clone() };
        json!({"i2": if i == 21 { json!(-32768) } else { json!(i) }, "i4": i4,
               "i8": if i == 23 { i64::MIN } else { i }, "f": f,
               "b": if i % 3 == 0 { json!(null) } else { json!(i % 2 == 0) }, "t": texts[i as usize % texts.len()],
               "v": if i % 4 == 0 { json!(null) } else { json!("é✓") },
               "j": texts[(i as usize + 1) % texts.len()], "jb": texts[(i as usize + 2) % texts.len()]})
    };
    let batch =
        |ids: std::ops::RangeInclusive<i64>, edit: &dyn Fn(i64, &mut serde_json::Value)| -> Vec<(String, String)> {
            ids.map(|i| {
                let mut v = row(i);
                edit(i, &mut v);
                (String::new(), v.to_string())
            })
            .collect()
        };
    let first = batch(1..=20, &|_, _| {});
    let binary = batch(21..=40, &|_, _| {});
    // Read as the text path writes them: a string for an integer, a fraction
    // that is whole.
    let as_text = batch(41..=60, &|i, v| {
        if i == 45 {
            v["i4"] = json!("42");
            v["i2"] = json!(1.0);
        }
    });
    // Refused: too long for `varchar(3)` (a batch in binary), out of
    // `integer`'s range (a batch as text).
    let too_long = batch(61..=80, &|i, v| {
        if i == 65 {
            v["v"] = json!("long");
        }
    });
    let out_of_range = batch(81..=100, &|i, v| {
        if i == 90 {
            v["i4"] = json!(3_000_000_000u64);
        }
    });
    let whole_f = |i: i64, v: &mut serde_json::Value| v["f"] = json!(i);
    let (altered, after) = (batch(101..=120, &whole_f), batch(121..=140, &whole_f));
    let columns = ["i2", "i4", "i8", "f", "b", "t", "v", "j", "jb"];
    for (table, prepared) in [("bin_named", true), ("bin_rows", false)] {
        let mut sink = SqlSink::open(pg_sink(pg.url(), table, Mode::Insert, &[], &columns), table).await.unwrap();
        for b in [&first, &binary, &as_text] {
            assert!(write_batches(&mut sink, b, 20, prepared).await.is_empty(), "{table}");
        }
        let refused = write_batches(&mut sink, &too_long, 20, prepared).await;
        assert_eq!(refused.len(), 1, "{table}: {refused:?}");
        assert!(refused[0].contains("value too long for type character varying(3)"), "{refused:?}");
        let refused = write_batches(&mut sink, &out_of_range, 20, prepared).await;
        assert_eq!(refused.len(), 1, "{table}: {refused:?}");
        assert!(refused[0].contains("out of range for type integer"), "{refused:?}");
        // A column's type changed while the sink runs: binary data would be
        // misread (a float's bits as an integer), so the first batch after
        // goes the general way with the table described again, the next in
        // binary for the new type.
        pg.sql(&format!(
            "ALTER TABLE {table} ALTER COLUMN f TYPE bigint USING least(greatest(f, -1e18), 1e18)::bigint"
        ));
        for b in [&altered, &after] {
            assert!(write_batches(&mut sink, b, 20, prepared).await.is_empty(), "{table}");
        }
    }
    // Upserts: new keys straight in, then keys already there through the
    // staging table, in binary both times.
    // And a column's type changed before the last: its staging table is made
    // again for the new type.
    let again = batch(31..=50, &|i, v| v["t"] = json!(format!("again {i}")));
    let later = batch(41..=60, &|i, v| v["t"] = json!(format!("later {i}")));
    for (table, prepared) in [("bin_ups", true), ("bin_ups_rows", false)] {
        let mut sink = SqlSink::open(pg_sink(pg.url(), table, Mode::Upsert, &["i8"], &columns), table).await.unwrap();
        for b in [&first, &binary, &again] {
            assert!(write_batches(&mut sink, b, 20, prepared).await.is_empty(), "{table}");
        }
        pg.sql(&format!("ALTER TABLE {table} ALTER COLUMN i2 TYPE integer"));
        assert!(write_batches(&mut sink, &later, 20, prepared).await.is_empty(), "{table}");
    }
    let log = String::from_utf8_lossy(&events.lock().unwrap()).into_owned();
    let ahead = |table: &str, binary: bool| {
        let (table, binary) = (format!("table=\"{table}\""), format!("binary={binary}"));
        log.lines().filter(|l| l.contains("made ahead") && l.contains(&table) && l.contains(&binary)).count()
    };
    // In binary: the second batch and the last; as text: the third.
    assert_eq!([ahead("bin_named", true), ahead("bin_named", false)], [2, 1], "{log}");
    assert_eq!([ahead("bin_ups", true), ahead("bin_ups", false)], [2, 0], "{log}");
    assert_eq!([ahead("bin_rows", true), ahead("bin_rows", false), ahead("bin_ups_rows", true)], [0, 0, 0]);

    let dump = |table: &str| pg.sql(&format!("SELECT string_agg(t::text, E'\\n' ORDER BY i8) FROM {table} t"));
    assert_eq!(dump("bin_named"), dump("bin_rows"));
    assert_eq!(dump("bin_ups"), dump("bin_ups_rows"));
    assert_eq!(pg.sql("SELECT count(*) FROM bin_named"), "138");
    assert_eq!(pg.sql("SELECT count(*) FROM bin_named WHERE i8 BETWEEN 101 AND 140 AND f = i8"), "40");
    assert_eq!(
        pg.sql("SELECT i2 || ' ' || i4 || ' ' || i8 || ' ' || f || ' ' || t || ' ' || jb FROM bin_named WHERE i8 = 26"),
        "26 -26 26 1000000000000000000 1.5 {\"a\": [1, \"x\"]}"
    );
    assert_eq!(pg.sql("SELECT t FROM bin_ups WHERE i8 = 40"), "again 40");
    assert_eq!(pg.sql("SELECT t FROM bin_ups WHERE i8 = 60"), "later 60");
}

/// A connection lost between batches: the next batch, made ahead in binary,
/// begins its transaction on a new connection, and its commit is sent there.
#[tokio::test]
async fn a_binary_batch_after_a_lost_connection_is_committed() {
    use flowgate_sdk::Sink;
    use flowgate_sql::{Mode, SqlSink};
    let pg = Postgres::start();
    pg.sql("CREATE TABLE lost (id bigint, v text)");
    let mut sink = SqlSink::open(pg_sink(pg.url(), "lost", Mode::Insert, &[], &["id", "v"]), "lost").await.unwrap();
    let rows = |from: i64| -> Vec<(String, String)> {
        (from..from + 20).map(|i| (String::new(), json!({"id": i, "v": "x"}).to_string())).collect()
    };
    // The first batch describes the table.
    assert!(write_batches(&mut sink, &rows(0), 20, true).await.is_empty());
    pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()");
    let mut b = flowgate_sdk::Batch::with_capacity(0, 20);
    b.records.extend(rows(100).into_iter().map(|(_, v)| flowgate_sdk::Record::from_value(v)));
    sink.preparer().unwrap().prepare(&mut b);
    let gone = sink.write(&mut b).await.expect_err("the connection is gone");
    assert!(gone.is_retryable(), "{gone:?}");
    assert!(write_batches(&mut sink, &rows(200), 20, true).await.is_empty());
    assert_eq!(pg.sql("SELECT count(*) FROM lost WHERE id >= 200"), "20");
}

/// Keys that differ as JSON but are one key in the table (`0` and `-0.0` for
/// a `bigint`) in one batch: `ON CONFLICT` refuses a statement that touches a
/// row twice, so the batch goes row by row (each JSON key's last change, in
/// the order the keys first came), whether by statements or by `COPY`,
/// instead of stopping the pipeline.
#[tokio::test]
async fn keys_one_in_the_table_but_two_in_json_are_written_in_order() {
    use flowgate_sql::{Mode, SqlSink};
    let pg = Postgres::start();
    pg.sql("CREATE TABLE few (id bigint PRIMARY KEY, v text); CREATE TABLE many (LIKE few INCLUDING ALL)");
    for (table, size) in [("few", 4), ("many", 40)] {
        let mut records: Vec<_> = (1..size).map(|i| (String::new(), json!({"id": i, "v": "x"}).to_string())).collect();
        records.insert(1, (String::new(), r#"{"id":0,"v":"first"}"#.to_string()));
        records.push((String::new(), r#"{"id":-0.0,"v":"last"}"#.to_string()));
        for prepared in [false, true] {
            let mut sink = SqlSink::open(pg_sink(pg.url(), table, Mode::Upsert, &["id"], &[]), table).await.unwrap();
            let refused = write_batches(&mut sink, &records, records.len(), prepared).await;
            assert!(refused.is_empty(), "{table}: {refused:?}");
            assert_eq!(pg.sql(&format!("SELECT v FROM {table} WHERE id = 0")), "last", "{table}");
            pg.sql(&format!("DELETE FROM {table}"));
        }
    }
}

/// A role granted columns but nothing table-wide may not `LOCK` the table,
/// which binary `COPY` into it and an upsert's try at going straight in
/// take: its inserts go as `COPY` text, its upserts through the staging
/// table, encoded ahead all the same, and every row is written. A role
/// granted a partitioned table, and not its partitions, may lock it.
#[tokio::test]
async fn a_role_granted_only_columns_writes_without_locking_the_table() {
    use flowgate_sql::{Mode, SqlSink};
    let pg = Postgres::start();
    pg.sql(
        "CREATE TABLE ins (a int, b int, v text); CREATE TABLE ups (a int, b int, v text, PRIMARY KEY (a, b)); \
         CREATE TABLE part (a int, b int, v text) PARTITION BY RANGE (a); \
         CREATE TABLE part_low PARTITION OF part FOR VALUES FROM (MINVALUE) TO (MAXVALUE); \
         CREATE ROLE cols LOGIN; GRANT INSERT (a, b, v) ON ins TO cols; GRANT INSERT ON part TO cols; \
         GRANT SELECT (a, b, v), INSERT (a, b, v), UPDATE (a, b, v) ON ups TO cols",
    );
    let url = pg.url().replace("postgres@", "cols@");
    let rows = |v: &str| -> Vec<(String, String)> {
        (0..120).map(|i| (String::new(), json!({"a": i, "b": i % 3, "v": format!("{v}{i}")}).to_string())).collect()
    };
    let (_events, events) = sink_events();
    let mut ins = SqlSink::open(pg_sink(url.clone(), "ins", Mode::Insert, &[], &["a", "b", "v"]), "ins").await.unwrap();
    assert!(write_batches(&mut ins, &rows("a"), 40, true).await.is_empty());
    assert_eq!(pg.sql("SELECT count(*) || ' ' || max(v) FROM ins"), "120 a99");
    // Granted the partitioned table only: since Postgres 13, its lock asks
    // no more, and its inserts go binary under it.
    let mut part =
        SqlSink::open(pg_sink(url.clone(), "part", Mode::Insert, &[], &["a", "b", "v"]), "part").await.unwrap();
    assert!(write_batches(&mut part, &rows("p"), 40, true).await.is_empty());
    assert_eq!(pg.sql("SELECT count(*) FROM part"), "120");
    let text = String::from_utf8_lossy(&events.lock().unwrap()).into_owned();
    let binary =
        text.lines().filter(|l| l.contains("made ahead") && l.contains("table=\"part\"") && l.contains("binary=true"));
    assert_eq!(binary.count(), 2);
    let mut ups = SqlSink::open(pg_sink(url, "ups", Mode::Upsert, &["a", "b"], &["a", "b", "v"]), "ups").await.unwrap();
    for v in ["a", "b"] {
        assert!(write_batches(&mut ups, &rows(v), 40, true).await.is_empty());
    }
    assert_eq!(pg.sql("SELECT count(*) || ' ' || min(v) || ' ' || max(v) FROM ups"), "120 b0 b99");
    // Every batch after each sink's first.
    assert_eq!((made_ahead(&events, "ins"), made_ahead(&events, "ups")), (2, 5));
}

/// Upserts go straight into the table with `COPY` while their keys are new,
/// which an `ON CONFLICT ... DO UPDATE` would only insert; a key already there
/// sends the batch through the staging table, and the next batches skip the
/// try. A statement-level update trigger tells the two apart: `COPY` fires
/// none. So for parsed rows and for rows encoded ahead of the write (named
/// columns), and for change events, whose creates go straight in while their
/// updates do not. Without a unique index `ON CONFLICT` takes, nothing goes
/// straight in, and the upsert fails as it always did.
#[tokio::test]
async fn upserts_go_straight_in_while_their_keys_are_new() {
    use flowgate_sql::{Mode, SqlSink};
    let pg = Postgres::start();
    pg.sql(
        "CREATE TABLE fired (t text); \
         CREATE FUNCTION fire() RETURNS trigger LANGUAGE plpgsql AS $$ \
           BEGIN INSERT INTO fired VALUES (TG_TABLE_NAME); RETURN NULL; END $$; \
         CREATE TABLE keyed (a int, b int, v text, PRIMARY KEY (b, a) INCLUDE (v)); \
         CREATE TRIGGER updated AFTER UPDATE ON keyed FOR EACH STATEMENT EXECUTE FUNCTION fire(); \
         CREATE TABLE named (LIKE keyed INCLUDING ALL); \
         CREATE TRIGGER updated AFTER UPDATE ON named FOR EACH STATEMENT EXECUTE FUNCTION fire(); \
         CREATE TABLE changed (a int, b int, v text, PRIMARY KEY (a, b)); \
         CREATE TRIGGER updated AFTER UPDATE ON changed FOR EACH STATEMENT EXECUTE FUNCTION fire(); \
         CREATE TABLE changed_ahead (LIKE changed INCLUDING ALL); \
         CREATE TRIGGER updated AFTER UPDATE ON changed_ahead FOR EACH STATEMENT EXECUTE FUNCTION fire(); \
         CREATE TABLE nokey (a int, b int, v text); \
         CREATE TABLE deferred (a int, b int, v text, PRIMARY KEY (a, b) DEFERRABLE); \
         CREATE TABLE partial (a int, b int, v text); CREATE UNIQUE INDEX ON partial (a, b) WHERE a > 0",
    );
    let open = |table: &'static str, columns: &[&str]| {
        SqlSink::open(pg_sink(pg.url(), table, Mode::Upsert, &["a", "b"], columns), table)
    };
    let rows = |keys: std::ops::Range<usize>, v: &str| -> Vec<(String, String)> {
        keys.map(|i| (String::new(), json!({"a": i, "b": i % 3, "v": format!("{v}{i}")}).to_string())).collect()
    };
    let (_events, events) = sink_events();
    // Parsed rows (unprepared batches, the general path) and rows encoded
    // ahead of the write (named columns).
    for (table, columns, prepared) in [("keyed", &[][..], false), ("named", &["v", "b", "a"][..], true)] {
        let mut sink = open(table, columns).await.unwrap();
        let fired = || pg.sql(&format!("SELECT count(*) FROM fired WHERE t = '{table}'"));
        // (batch, update statements fired after it): new keys go straight in;
        // a batch with 20 keys already there does not, nor do the two after it.
        for (batch, after) in
            [(rows(0..40, "a"), 0), (rows(20..60, "b"), 1), (rows(60..100, "c"), 2), (rows(100..140, "d"), 3)]
        {
            assert!(write_batches(&mut sink, &batch, 1000, prepared).await.is_empty());
            assert_eq!(fired(), after.to_string(), "{table}");
        }
        // The try comes back after two batches without one.
        assert!(write_batches(&mut sink, &rows(140..180, "e"), 1000, prepared).await.is_empty());
        assert_eq!(fired(), "3", "{table}");
        assert_eq!(pg.sql(&format!("SELECT count(*) FROM {table}")), "180");
        assert_eq!(
            pg.sql(&format!("SELECT string_agg(v, ',' ORDER BY a) FROM {table} WHERE a IN (19, 20, 59, 60)")),
            "a19,b20,b59,c60"
        );
        // Every batch after the first.
        assert_eq!(made_ahead(&events, table), if prepared { 4 } else { 0 });
        // The key's index is looked up at each try (for a batch encoded
        // ahead, in its first round trip): dropped while the sink runs, the
        // next upsert fails as `ON CONFLICT` does, writing nothing.
        pg.sql(&format!("ALTER TABLE {table} DROP CONSTRAINT {table}_pkey"));
        let mut b = flowgate_sdk::Batch::with_capacity(0, 40);
        b.records.extend(rows(180..220, "f").into_iter().map(|(_, v)| flowgate_sdk::Record::from_value(v)));
        if let Some(preparer) = flowgate_sdk::Sink::preparer(&sink).filter(|_| prepared) {
            preparer.prepare(&mut b);
        }
        assert_eq!(b.prepared.is_some(), prepared, "{table}");
        let refused = flowgate_sdk::Sink::write(&mut sink, &mut b).await.expect_err("no arbiter any more");
        assert!(format!("{refused:?}").contains("ON CONFLICT"), "{table}: {refused:?}");
        assert_eq!(pg.sql(&format!("SELECT count(*) FROM {table}")), "180");
        assert_eq!(made_ahead(&events, table), if prepared { 4 } else { 0 });
    }

    // Change events: creates go straight in, beside updates that cannot, and
    // a key deleted and created again in one batch goes with the updates. As
    // parsed rows, and encoded ahead (the table's columns, `columns:` not set).
    let event = |op: &str, i: usize, v: &str| {
        let row = json!({"a": i, "b": i % 3, "v": format!("{v}{i}")});
        let (before, after) =
            if op == "d" { (row, serde_json::Value::Null) } else { (json!({"a": i, "b": i % 3}), row) };
        (String::new(), json!({"op": op, "before": before, "after": after}).to_string())
    };
    let creates = |keys: std::ops::Range<usize>, v: &str| keys.map(|i| event("c", i, v)).collect::<Vec<_>>();
    let mut mixed = creates(40..80, "b");
    mixed.extend((0..20).map(|i| event("u", i, "u")));
    mixed.extend([event("d", 30, ""), event("c", 30, "again")]);
    for (table, prepared) in [("changed", false), ("changed_ahead", true)] {
        let mut sink = SqlSink::open(pg_sink(pg.url(), table, Mode::Cdc, &["a", "b"], &[]), table).await.unwrap();
        let fired = || pg.sql(&format!("SELECT count(*) FROM fired WHERE t = '{table}'"));
        // (batch, update statements fired after it): a replayed create misses,
        // and the creates after it skip their try.
        for (batch, after) in [
            (creates(0..40, "a"), 0),
            (mixed.clone(), 1),
            (creates(80..120, "c"), 1),
            (creates(0..20, "r"), 2),
            (creates(120..160, "d"), 3),
        ] {
            assert!(write_batches(&mut sink, &batch, 1000, prepared).await.is_empty());
            assert_eq!(fired(), after.to_string(), "{table}");
        }
        assert_eq!(pg.sql(&format!("SELECT count(*) FROM {table}")), "160");
        assert_eq!(
            pg.sql(&format!(
                "SELECT string_agg(v, ',' ORDER BY a) FROM {table} WHERE a IN (0, 19, 20, 30, 40, 80, 120)"
            )),
            "r0,r19,a20,again30,b40,c80,d120"
        );
        assert_eq!(made_ahead(&events, table), if prepared { 4 } else { 0 }, "{table}");
    }

    for table in ["nokey", "deferred", "partial"] {
        let mut sink = open(table, &[]).await.unwrap();
        let mut b = flowgate_sdk::Batch::with_capacity(0, 40);
        b.records.extend(rows(0..40, "a").into_iter().map(|(_, v)| flowgate_sdk::Record::from_value(v)));
        let refused = flowgate_sdk::Sink::write(&mut sink, &mut b).await.expect_err("no arbiter for ON CONFLICT");
        assert!(format!("{refused:?}").contains("ON CONFLICT"), "{table}: {refused:?}");
        assert_eq!(pg.sql(&format!("SELECT count(*) FROM {table}")), "0", "{table}");
    }
}

/// A row whose foreign key is checked only at `COMMIT` (`DEFERRABLE
/// INITIALLY DEFERRED`, as Django makes them) used to fail the commit as
/// fatal, after the row isolation had passed it: the pipeline stopped on the
/// same batch at every start. The failed commit now makes the engine write
/// the batch again with constraints checked at each statement, where the row
/// is refused alone; the batch after it defers again.
#[tokio::test]
async fn a_row_breaking_a_deferred_constraint_is_refused_alone() {
    use flowgate_sdk::{Batch, Record, Sink};
    use flowgate_sql::{Mode, SqlSink};
    let (_events, events) = sink_events();
    let pg = Postgres::start();
    pg.sql(
        "CREATE TABLE parent (id bigint PRIMARY KEY); INSERT INTO parent VALUES (1); \
         CREATE TABLE child (id bigint, parent bigint REFERENCES parent DEFERRABLE INITIALLY DEFERRED)",
    );
    let mut sink =
        SqlSink::open(pg_sink(pg.url(), "child", Mode::Insert, &[], &["id", "parent"]), "child").await.unwrap();
    let preparer = sink.preparer().unwrap();
    let batch = |from: i64, orphan: Option<i64>| {
        let mut b = Batch::with_capacity(0, 40);
        b.records.extend(
            (from..from + 40)
                .map(|i| json!({"id": i, "parent": if Some(i) == orphan { 99 } else { 1 }}).to_string())
                .map(Record::from_value),
        );
        // As the engine does: encoded ahead, for `COPY`.
        preparer.prepare(&mut b);
        b
    };
    // The first batch describes the table, so that the next is encoded
    // ahead and goes by binary `COPY` (its second try goes by statements).
    let mut b = batch(1000, None);
    sink.write(&mut b).await.unwrap();
    sink.commit(&mut b).await.unwrap();
    for (from, prepared) in [(0, true), (100, false)] {
        let mut b = batch(from, Some(from + 7));
        if !prepared {
            b.prepared = None;
        }
        sink.write(&mut b).await.unwrap();
        assert!(b.rejected.is_empty(), "deferred: nothing refused yet");
        let refused = sink.commit(&mut b).await.expect_err("the commit checks the foreign key");
        assert!(refused.is_retryable(), "{refused:?}");
        // As the engine does: the batch again.
        sink.write(&mut b).await.unwrap();
        sink.commit(&mut b).await.unwrap();
        assert_eq!(b.rejected.len(), 1, "{:?}", b.rejected);
        assert!(b.rejected[0].reason.contains("foreign key"), "{}", b.rejected[0].reason);
        let value = String::from_utf8_lossy(&b.rejected[0].record.value).into_owned();
        assert!(value.contains(&format!("\"id\":{}", from + 7)), "{value}");
    }
    assert_eq!(pg.sql("SELECT count(*) FROM child"), "118");
    assert_eq!(made_ahead(&events, "child"), 1, "the first try at the first batch went by binary `COPY`");
    // Deferred again: a child written before its parent is there passes
    // once the parent is there at `COMMIT`.
    let mut b = batch(200, Some(207));
    sink.write(&mut b).await.unwrap();
    pg.sql("INSERT INTO parent VALUES (99)");
    sink.commit(&mut b).await.unwrap();
    assert!(b.rejected.is_empty(), "{:?}", b.rejected);
    assert_eq!(pg.sql("SELECT count(*) FROM child"), "158");
    assert_eq!(made_ahead(&events, "child"), 2);
}

/// A TCP proxy to `port`. Once `cut` is set, it passes on the next `COMMIT`
/// a client sends and closes the client's side without passing the answer
/// back. The server's side stays open, its session there for the client to
/// end.
async fn commit_cutting_proxy(port: u16, cut: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u16 {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let cut = Arc::clone(&cut);
            tokio::spawn(async move {
                let ((mut from_client, mut to_client), (mut from_server, mut to_server)) =
                    (client.into_split(), server.into_split());
                let deaf = Arc::new(AtomicBool::new(false));
                let back = tokio::spawn({
                    let deaf = Arc::clone(&deaf);
                    async move {
                        let mut buf = vec![0; 64 * 1024];
                        while let Ok(n @ 1..) = from_server.read(&mut buf).await {
                            if !deaf.load(SeqCst) && to_client.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                });
                let mut buf = vec![0; 64 * 1024];
                while let Ok(n @ 1..) = from_client.read(&mut buf).await {
                    let commit = buf[..n].windows(6).any(|w| w == b"COMMIT");
                    // Deaf before the `COMMIT` goes: its answer comes after.
                    let cutting = commit && cut.swap(false, SeqCst);
                    if cutting {
                        deaf.store(true, SeqCst);
                    }
                    if to_server.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    if cutting {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        back.abort();
                        drop(from_client);
                        std::future::pending::<()>().await;
                        return;
                    }
                }
                back.abort();
            });
        }
    });
    proxy
}

/// Effectively-once: the connection breaks after `COMMIT` went out and before
/// its answer came back, and the engine writes the batch again. When the
/// commit went through, the sink finds its position stored and writes
/// nothing. When it is still under way (a deferred trigger sleeps in it
/// here), the sink first ends that session, which undoes it, then writes the
/// batch. Either way each row is in the table once; an insert would
/// otherwise be there twice. Postgres both ways, MariaDB with the commit done.
#[tokio::test]
async fn an_effectively_once_commit_whose_answer_was_lost_is_not_written_again() {
    let pg = Postgres::start();
    pg.sql(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$",
    );
    for table in ["quick", "slow"] {
        pg.sql(&format!("CREATE TABLE {table} (id bigint, v text)"));
        if table == "slow" {
            // The second batch's commit takes 2 s.
            pg.sql(
                "CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON slow DEFERRABLE INITIALLY DEFERRED \
                 FOR EACH ROW WHEN (NEW.id = 200) EXECUTE FUNCTION slow()",
            );
        }
        write_through_a_lost_commit(&pg.url(), pg.port, table, table == "quick", &|sql| pg.sql(sql)).await;
    }
    let maria = MariaDb::start();
    maria.sql("CREATE TABLE quick (id BIGINT, v TEXT)");
    write_through_a_lost_commit(&maria.url(), maria.port, "quick", true, &|sql| maria.sql(sql)).await;
}

/// Writes three batches effectively-once into `table` (id, v) through a
/// proxy that loses the answer to the second one's `COMMIT`, and the second
/// again as the engine does; `done`: that commit has gone through when the
/// sink hears of it. Checks that each row is in the table once.
async fn write_through_a_lost_commit(url: &str, port: u16, table: &str, done: bool, sql: &dyn Fn(&str) -> String) {
    use flowgate_sdk::{Batch, Position, Record, Sink};
    use flowgate_sql::{Delivery, Mode, SqlSink};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let cut = Arc::new(AtomicBool::new(false));
    let proxy = commit_cutting_proxy(port, Arc::clone(&cut)).await;
    let url = url.replace(&format!(":{port}/"), &format!(":{proxy}/"));
    let config = flowgate_sql::SqlSinkConfig {
        delivery: Delivery::EffectivelyOnce,
        ..pg_sink(url, table, Mode::Insert, &[], &["id", "v"])
    };
    let mut sink = SqlSink::open(config, table).await.unwrap();
    let preparer = sink.preparer().unwrap();
    let batch = |n: i64| {
        let mut b = Batch::with_capacity(0, 20);
        b.records.extend((n * 100..n * 100 + 20).map(|i| Record::from_value(json!({"id": i, "v": "x"}).to_string())));
        let mut position = Position::default();
        position.set("at", n.to_string());
        b.position = Some(position);
        preparer.prepare(&mut b);
        b
    };
    let mut first = batch(1);
    sink.write(&mut first).await.unwrap();
    sink.commit(&mut first).await.unwrap();
    let mut second = batch(2);
    sink.write(&mut second).await.unwrap();
    cut.store(true, SeqCst);
    let lost = sink.commit(&mut second).await.expect_err("the answer never came");
    assert!(lost.is_retryable(), "{lost:?}");
    assert!(!cut.load(SeqCst), "the proxy cut the commit");
    let count = format!("SELECT count(*) FROM {table}");
    if done {
        assert_eq!(sql(&count), "40", "the commit went through");
    }
    // As the engine does: the batch again, then the next one.
    sink.write(&mut second).await.unwrap();
    sink.commit(&mut second).await.unwrap();
    let mut third = batch(3);
    sink.write(&mut third).await.unwrap();
    sink.commit(&mut third).await.unwrap();
    assert_eq!(sql(&count), "60", "{table}");
    assert_eq!(sql(&format!("SELECT count(DISTINCT id) FROM {table}")), "60", "{table}");
    let position = format!("SELECT position FROM flowgate_source_positions WHERE pipeline = '{table}'");
    assert_eq!(sql(&position), "3", "{table}");
}
