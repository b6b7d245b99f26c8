use flowgate_sdk::{Record, RecordTemplate};
use serde_json::Value;
use sqlx::{AnyConnection, AssertSqlSafe, Connection, Row};

use super::*;
use crate::config::{Columns, Mode};

fn config(dir: &tempfile::TempDir, mode: Mode) -> SqlSinkConfig {
    SqlSinkConfig {
        url: dir.path().join("t.db").display().to_string(),
        table: "t".parse::<RecordTemplate>().unwrap(),
        mode,
        key: Vec::new(),
        columns: None,
        create_table: true,
        delivery: Delivery::AtLeastOnce,
        synchronous: Synchronous::Normal,
        unknown_fields: UnknownFields::DeadLetter,
        tables_allowed: None,
    }
}

/// Inserts into `t`, effectively-once.
fn effectively_once(dir: &tempfile::TempDir) -> SqlSinkConfig {
    SqlSinkConfig { delivery: Delivery::EffectivelyOnce, ..config(dir, Mode::Insert) }
}

fn batch(records: &[(&str, &str)]) -> Batch {
    let mut b = Batch::with_capacity(0, records.len());
    for (k, v) in records {
        let mut r = Record::from_value(v.to_string());
        r.key = (!k.is_empty()).then(|| k.to_string().into());
        b.records.push(r);
    }
    b
}

async fn put(sink: &mut SqlSink, records: &[(&str, &str)]) -> Batch {
    let mut b = batch(records);
    sink.write(&mut b).await.unwrap();
    sink.commit(&mut b).await.unwrap();
    b
}

async fn rows(dir: &tempfile::TempDir, sql: &str) -> Vec<String> {
    sqlx::any::install_default_drivers();
    let url = format!("sqlite:{}", dir.path().join("t.db").display());
    let mut c = AnyConnection::connect(&url).await.unwrap();
    let rows = sqlx::query(AssertSqlSafe(sql.to_string())).fetch_all(&mut c).await.unwrap();
    rows.iter().map(|r| r.try_get::<String, _>(0).unwrap()).collect()
}

#[tokio::test]
async fn inserts_create_the_table_and_isolate_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = SqlSink::open(config(&dir, Mode::Insert), "p").await.unwrap();
    put(&mut sink, &[("", r#"{"id":1,"name":"a"}"#), ("", r#"{"id":2}"#)]).await;
    assert_eq!(rows(&dir, "SELECT group_concat(name, ',') FROM pragma_table_info('t')").await, ["id,name"]);
    sink.conn().await.unwrap().raw("CREATE UNIQUE INDEX t_id ON t(id)").await.unwrap();
    let b = put(
        &mut sink,
        &[("", r#"{"id":3,"name":"c"}"#), ("", r#"{"id":1,"name":"dup"}"#), ("", "[1]"), ("", r#"{"id":4}"#)],
    )
    .await;
    assert_eq!(b.records.len(), 2);
    assert!(b.rejected[0].reason.contains("UNIQUE constraint failed"), "{:?}", b.rejected);
    assert!(b.rejected[1].reason.contains("not a JSON object"), "{:?}", b.rejected);
    assert_eq!(
        rows(&dir, "SELECT group_concat(id || ':' || coalesce(name, '-'), ' ') FROM t").await,
        ["1:a 2:- 3:c 4:-"]
    );
    let many: Vec<String> = (10..1300).map(|i| format!(r#"{{"id":{i},"name":"n{i}"}}"#)).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|v| ("", v.as_str())).collect();
    put(&mut sink, &many).await;
    assert_eq!(rows(&dir, "SELECT CAST(count(*) AS TEXT) FROM t").await, ["1294"]);
}

#[tokio::test]
async fn upserts_replace_rows_by_key_and_map_columns() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&dir, Mode::Upsert);
    c.key = vec!["id".into()];
    c.columns = Some(Columns::Map([("id".into(), "order.id".into()), ("total".into(), "order.total".into())].into()));
    let mut sink = SqlSink::open(c, "p").await.unwrap();
    put(&mut sink, &[("", r#"{"order":{"id":1,"total":5}}"#), ("", r#"{"order":{"id":2,"total":6}}"#)]).await;
    // The same key twice in one batch: the last one counts.
    put(&mut sink, &[("", r#"{"order":{"id":1,"total":7}}"#), ("", r#"{"order":{"id":1,"total":8}}"#)]).await;
    assert_eq!(rows(&dir, "SELECT group_concat(id || '=' || total, ' ') FROM t").await, ["1=8 2=6"]);
}

#[tokio::test]
async fn change_events_are_applied_in_order_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = SqlSink::open(config(&dir, Mode::Cdc), "p").await.unwrap();
    let ev = |op: &str, before: &str, after: &str| format!(r#"{{"op":"{op}","before":{before},"after":{after}}}"#);
    let events = [
        (r#"{"id":1}"#, ev("r", "null", r#"{"id":1,"n":1,"doc":"big"}"#)),
        (r#"{"id":2}"#, ev("c", "null", r#"{"id":2,"n":1,"doc":"x"}"#)),
        (r#"{"id":3}"#, ev("c", "null", r#"{"id":3,"n":1,"doc":"y"}"#)),
        (r#"{"id":2}"#, ev("u", r#"{"id":2,"n":null,"doc":null}"#, r#"{"id":2,"n":2,"doc":"x2"}"#)),
        (r#"{"id":3}"#, ev("d", r#"{"id":3,"n":null,"doc":null}"#, "null")),
    ];
    let batch1: Vec<(&str, &str)> = events.iter().map(|(k, v)| (*k, v.as_str())).collect();
    put(&mut sink, &batch1).await;
    // Next batch: an unchanged TOAST value, a key change, a tombstone, a bad event.
    let events = [
        (
            r#"{"id":1}"#,
            ev("u", r#"{"id":1,"n":null,"doc":null}"#, r#"{"id":1,"n":2,"doc":"__debezium_unavailable_value"}"#),
        ),
        (r#"{"id":4}"#, ev("u", r#"{"id":2,"n":null,"doc":null}"#, r#"{"id":4,"n":3,"doc":"x2"}"#)),
        (r#"{"id":4}"#, String::new()),
        (r#"{"id":5}"#, r#"{"op":"c"}"#.to_string()),
    ];
    let batch2: Vec<(&str, &str)> = events.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let b = put(&mut sink, &batch2).await;
    assert_eq!(b.rejected.len(), 1, "{:?}", b.rejected);
    assert!(b.rejected[0].reason.contains("`after`"));
    assert_eq!(rows(&dir, "SELECT group_concat(id || ':' || n || ':' || doc, ' ') FROM t").await, ["1:2:big 4:3:x2"]);
    // A key change whose TOASTed value was not sent moves the row in place.
    let moved = ev("u", r#"{"id":4,"n":null,"doc":null}"#, r#"{"id":6,"n":4,"doc":"__debezium_unavailable_value"}"#);
    put(&mut sink, &[(r#"{"id":6}"#, moved.as_str())]).await;
    assert_eq!(rows(&dir, "SELECT group_concat(id || ':' || n || ':' || doc, ' ') FROM t").await, ["1:2:big 6:4:x2"]);
    put(&mut sink, &[(r#"{"id":1}"#, r#"{"op":"t","before":null,"after":null}"#)]).await;
    assert_eq!(rows(&dir, "SELECT CAST(count(*) AS TEXT) FROM t").await, ["0"]);
}

#[tokio::test]
async fn effectively_once_keeps_the_position_with_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let c = effectively_once(&dir);
    let mut sink = SqlSink::open(c.clone(), "p").await.unwrap();
    assert_eq!(sink.stored_position().await.unwrap(), None);
    let mut b = batch(&[("", r#"{"id":1}"#)]);
    // Opaque to the sink: a source's parts, stored and given back as they are.
    let position = Position::default().with("kafka:in:2", "41@7").with("postgres", "0/1:2");
    b.position = Some(position.clone());
    // A pipeline batch (it has an acknowledgement) is committed by `commit`.
    let tracker = flowgate_sdk::AckTracker::new();
    b.ack = Some(tracker.begin());
    sink.write(&mut b).await.unwrap();
    // Written but not committed: neither the row nor the position is there.
    assert_eq!(rows(&dir, "SELECT CAST(count(*) AS TEXT) FROM t").await, ["0"]);
    sink.commit(&mut b).await.unwrap();
    let mut again = SqlSink::open(c, "p").await.unwrap();
    assert_eq!(again.stored_position().await.unwrap(), Some(position));
    assert_eq!(rows(&dir, "SELECT CAST(count(*) AS TEXT) FROM t").await, ["1"]);
}

#[tokio::test]
async fn positions_stored_by_0_1_are_read_until_new_ones_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let c = effectively_once(&dir);
    // The table and rows as 0.1 left them (tests/fixtures/0.1/flowgate_positions.sql).
    let fixture = include_str!("../../../../tests/fixtures/0.1/flowgate_positions.sql");
    let url = format!("sqlite:{}?mode=rwc", dir.path().join("t.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(fixture)).execute(&mut conn).await.unwrap();
    drop(conn);
    let mut sink = SqlSink::open(c.clone(), "orders-to-db").await.unwrap();
    let stored = sink.stored_position().await.unwrap().expect("the 0.1 rows");
    let parts: Vec<(&str, &str)> = stored.parts().collect();
    assert_eq!(parts, [("kafka:orders:0", "1042"), ("kafka:orders:3", "877")]);
    let mut b = batch(&[("", r#"{"id":1}"#)]);
    b.position = Some(Position::default().with("kafka:orders:0", "1043@1"));
    sink.write(&mut b).await.unwrap();
    sink.commit(&mut b).await.unwrap();
    // Once the pipeline stores a position of its own, that is the one.
    let mut again = SqlSink::open(c, "orders-to-db").await.unwrap();
    let parts: Vec<(String, String)> = again
        .stored_position()
        .await
        .unwrap()
        .expect("stored")
        .parts()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(parts, [("kafka:orders:0".to_string(), "1043@1".to_string())]);
}

#[tokio::test]
async fn records_whose_names_cannot_be_columns_are_refused_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = SqlSink::open(config(&dir, Mode::Insert), "p").await.unwrap();
    // The first records would have made the table; each is refused alone.
    let b = put(
        &mut sink,
        &[
            ("", r#"{"id":1,"nul\u0000col":3}"#),
            ("", r#"{"id":1,"Name":"a","name":"b"}"#),
            ("", r#"{"":1}"#),
            ("", r#"{"id":2,"name":"x"}"#),
        ],
    )
    .await;
    let reasons: Vec<&str> = b.rejected.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("control character"), "{reasons:?}");
    assert!(reasons[1].contains("would be one column"), "{reasons:?}");
    assert!(reasons[2].contains("empty name"), "{reasons:?}");
    assert_eq!(rows(&dir, "SELECT group_concat(name, ',') FROM pragma_table_info('t')").await, ["id,name"]);
    // Fields with no column are refused with their names, never dropped.
    let b = put(&mut sink, &[("", r#"{"ID2":2}"#), ("", r#"{"id":3,"Name":"y"}"#), ("", r#"{"id":4}"#)]).await;
    let reasons: Vec<&str> = b.rejected.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "fields without a column in table t: `ID2`",
            "fields without a column in table t: `Name` (the column is `name`)"
        ]
    );
    assert_eq!(rows(&dir, "SELECT group_concat(id, ',') FROM t").await, ["2,4"]);
    // A column added since is found, not refused.
    sink.conn().await.unwrap().raw("ALTER TABLE t ADD COLUMN extra TEXT").await.unwrap();
    let b = put(&mut sink, &[("", r#"{"id":5,"extra":"e"}"#)]).await;
    assert!(b.rejected.is_empty(), "{:?}", b.rejected);
}

#[tokio::test]
async fn unknown_fields_can_be_ignored_or_stop_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&dir, Mode::Insert);
    c.unknown_fields = UnknownFields::Ignore;
    let mut sink = SqlSink::open(c.clone(), "p").await.unwrap();
    put(&mut sink, &[("", r#"{"id":1}"#)]).await;
    let b = put(&mut sink, &[("", r#"{"id":2,"more":1}"#)]).await;
    assert!(b.rejected.is_empty());
    assert_eq!(rows(&dir, "SELECT group_concat(id, ',') FROM t").await, ["1,2"]);
    c.unknown_fields = UnknownFields::Fail;
    let mut sink = SqlSink::open(c, "p").await.unwrap();
    let err = sink.write(&mut batch(&[("", r#"{"id":3,"more":1}"#)])).await.unwrap_err();
    assert!(!err.is_retryable());
    assert!(err.message.contains("`more`"), "{}", err.message);
}

#[tokio::test]
async fn a_record_cannot_pick_a_table_outside_the_allowed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = effectively_once(&dir);
    c.table = "t_${value.t}".parse().unwrap();
    let mut sink = SqlSink::open(c.clone(), "p").await.unwrap();
    let b = put(&mut sink, &[("", r#"{"t":"a","id":1}"#), ("", r#"{"t":"a.b","id":2}"#)]).await;
    assert_eq!(b.rejected.len(), 1);
    assert!(b.rejected[0].reason.contains("no schema part"), "{:?}", b.rejected);
    c.table = "${value.t}".parse().unwrap();
    let mut sink = SqlSink::open(c.clone(), "p").await.unwrap();
    let b = put(
        &mut sink,
        &[
            ("", r#"{"t":"flowgate_source_positions","pipeline":"p","source":"x","position":"1"}"#),
            ("", r#"{"t":"../../etc","id":1}"#),
            ("", r#"{"t":"main.orders","id":1}"#),
            ("", r#"{"t":"sqlite_master","id":1}"#),
            ("", "{\"t\":\"evil\\nline\",\"id\":1}"),
            ("", r#"{"t":"ok","id":1}"#),
        ],
    )
    .await;
    assert_eq!(b.rejected.len(), 5, "{:?}", b.rejected);
    assert_eq!(b.records.len(), 1);
    assert_eq!(
        rows(&dir, "SELECT CAST(count(*) AS TEXT) FROM flowgate_source_positions WHERE source = 'x'").await,
        ["0"]
    );
    c.tables_allowed = Some(vec!["t_*".into()]);
    let mut sink = SqlSink::open(c, "p").await.unwrap();
    let b = put(&mut sink, &[("", r#"{"t":"t_b","id":1}"#), ("", r#"{"t":"ok","id":1}"#)]).await;
    assert_eq!(b.rejected.len(), 1);
    assert!(b.rejected[0].reason.contains("tables_allowed"), "{:?}", b.rejected);
}

fn json() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("(op|before|after|id|\\PC{0,70})", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 500, failure_persistence: None, ..Default::default() })]

    /// Any JSON record through the row builder of every dialect and mode:
    /// a plan or a refusal with a reason, never a panic.
    #[test]
    fn any_record_is_planned_or_refused(value in json(), key in json(), t in "\\PC{0,70}") {
        let dir = tempfile::tempdir().unwrap();
        let mut record = Record::from_value(serde_json::to_vec(&value).unwrap());
        record.key = Some(serde_json::to_vec(&key).unwrap().into());
        let records = [record];
        for dialect in [Dialect::Postgres, Dialect::MySql, Dialect::Sqlite] {
            for mode in [Mode::Insert, Mode::Upsert, Mode::Cdc] {
                let mut c = config(&dir, mode);
                c.key = if mode == Mode::Upsert { vec!["id".into()] } else { Vec::new() };
                c.table = "${value.t}".parse().unwrap();
                let filter = TableFilter::new(vec![t.clone(), "*".into()]);
                let (tables, refused) = plan::plan(&records, &c, dialect, Some(&filter));
                proptest::prop_assert_eq!(tables.iter().map(|(_, o)| o.ops.len().min(1)).sum::<usize>() + refused.len().min(1), 1);
                for (_, ops) in &tables {
                    for (_, op) in &ops.ops {
                        for (column, v) in op.row().into_iter().flatten() {
                            for ty in ["text", "bigint", "jsonb", "text[]", "bytea", "DATETIME(6)", "LONGBLOB"] {
                                let _ = dialect.cell(Some(v), ty);
                            }
                            proptest::prop_assert!(dialect.check_name(column).is_ok());
                        }
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn a_missing_table_without_create_is_a_clear_fatal_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&dir, Mode::Insert);
    c.create_table = false;
    let mut sink = SqlSink::open(c, "p").await.unwrap();
    let err = sink.write(&mut batch(&[("", r#"{"a":1}"#)])).await.unwrap_err();
    assert!(!err.is_retryable());
    assert!(err.message.contains("create_table"), "{}", err.message);
}

#[tokio::test]
async fn rows_for_tables_joined_by_a_foreign_key_keep_their_order_and_others_go_by_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&dir, Mode::Insert);
    // The record's key names its table.
    c.table = "${key}".parse().unwrap();
    c.tables_allowed = Some(vec!["*".into()]);
    c.create_table = false;
    let mut sink = SqlSink::open(c, "p").await.unwrap();
    sink.conn()
        .await
        .unwrap()
        .raw(
            "CREATE TABLE parent (id INTEGER PRIMARY KEY); \
             CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER NOT NULL REFERENCES parent(id)); \
             CREATE TABLE a (id INTEGER); CREATE TABLE b (id INTEGER)",
        )
        .await
        .unwrap();
    // Both tables described by the first batch; the second starts with the
    // child table, so taking each table's rows together would write child 2
    // before parent 2.
    put(&mut sink, &[("parent", r#"{"id":1}"#), ("child", r#"{"id":1,"parent":1}"#)]).await;
    let b = put(
        &mut sink,
        &[("child", r#"{"id":3,"parent":1}"#), ("parent", r#"{"id":2}"#), ("child", r#"{"id":2,"parent":2}"#)],
    )
    .await;
    assert!(b.rejected.is_empty(), "{:?}", b.rejected);
    assert!(sink.tables.values().all(|t| t.linked));
    assert_eq!(rows(&dir, "SELECT group_concat(id || '>' || parent, ' ') FROM child").await, ["1>1 2>2 3>1"]);
    // A foreign key the sink has not seen yet (the child table made again
    // with one): written by table first, refused, then written again in the
    // records' order, where every row fits.
    let sql = "CREATE TABLE mom (id INTEGER PRIMARY KEY); CREATE TABLE kid (id INTEGER PRIMARY KEY, mom INTEGER)";
    sink.conn().await.unwrap().raw(sql).await.unwrap();
    put(&mut sink, &[("mom", r#"{"id":1}"#), ("kid", r#"{"id":1,"mom":1}"#)]).await;
    assert!(!sink.tables["mom"].linked && !sink.tables["kid"].linked);
    let sql = "DROP TABLE kid; CREATE TABLE kid (id INTEGER PRIMARY KEY, mom INTEGER NOT NULL REFERENCES mom(id)); \
               INSERT INTO kid VALUES (1, 1)";
    sink.conn().await.unwrap().raw(sql).await.unwrap();
    let b =
        put(&mut sink, &[("kid", r#"{"id":3,"mom":1}"#), ("mom", r#"{"id":7}"#), ("kid", r#"{"id":4,"mom":7}"#)]).await;
    assert!(b.rejected.is_empty(), "{:?}", b.rejected);
    assert!(sink.tables["kid"].linked);
    assert_eq!(rows(&dir, "SELECT group_concat(id || '>' || mom, ' ') FROM kid").await, ["1>1 3>1 4>7"]);
    // Interleaved rows for tables without foreign keys: each table's in order.
    let interleaved: Vec<(String, String)> =
        (0..40).map(|i| (["a", "b"][i % 2].to_string(), format!(r#"{{"id":{i}}}"#))).collect();
    let interleaved: Vec<(&str, &str)> = interleaved.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    put(&mut sink, &interleaved[..2]).await;
    let b = put(&mut sink, &interleaved[2..]).await;
    assert!(b.rejected.is_empty(), "{:?}", b.rejected);
    assert!(!sink.tables["a"].linked && !sink.tables["b"].linked);
    let evens: Vec<String> = (0..40).step_by(2).map(|i| i.to_string()).collect();
    assert_eq!(rows(&dir, "SELECT group_concat(id, ',') FROM a").await, [evens.join(",")]);
}

#[test]
fn runs_for_one_table_are_joined_in_order_at_its_first_place() {
    let run = |t: &str, i: usize| (t.to_string(), TableOps { ops: vec![(i, Op::Truncate)] });
    let joined = by_table(vec![run("a", 0), run("b", 1), run("a", 2), run("c", 3), run("b", 4)]);
    let shape: Vec<(String, Vec<usize>)> =
        joined.into_iter().map(|(t, o)| (t, o.ops.into_iter().map(|(i, _)| i).collect())).collect();
    let expected = [("a", vec![0, 2]), ("b", vec![1, 4]), ("c", vec![3])];
    assert_eq!(shape, expected.map(|(t, i)| (t.to_string(), i)));
}

#[tokio::test]
async fn a_prepared_plan_is_taken_once_and_one_made_for_other_records_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = SqlSink::open(config(&dir, Mode::Insert), "p").await.unwrap();
    let prepare = sink.preparer().expect("the SQL sink prepares its batches");
    let mut b = batch(&[("", r#"{"id":1}"#), ("", "[1]")]);
    prepare.prepare(&mut b);
    assert!(b.prepared.is_some());
    // What is written is what was planned: the value changed since is not read.
    b.records[0].value = r#"{"id":9}"#.into();
    sink.write(&mut b).await.unwrap();
    sink.commit(&mut b).await.unwrap();
    assert!(b.prepared.is_none());
    assert_eq!(b.records.len(), 1);
    assert_eq!(b.rejected.len(), 1);
    assert_eq!(b.rejected[0].reason, "value is not a JSON object but an array");
    // Planned for one record, written with two: planned again.
    let mut b = batch(&[("", r#"{"id":2}"#)]);
    prepare.prepare(&mut b);
    b.records.push(Record::from_value(r#"{"id":3}"#.to_string()));
    sink.write(&mut b).await.unwrap();
    sink.commit(&mut b).await.unwrap();
    assert_eq!(rows(&dir, "SELECT group_concat(id, ',') FROM t").await, ["1,2,3"]);
}

#[tokio::test]
async fn a_batch_with_every_record_refused_commits_cleanly_and_still_stores_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let eo = effectively_once(&dir);
    let mut sink = SqlSink::open(eo, "p").await.unwrap();
    let mut b = batch(&[("", "[1]")]);
    b.position = Some(Position::default().with("file", "7"));
    sink.write(&mut b).await.unwrap();
    sink.commit(&mut b).await.unwrap();
    // Its position is stored all the same, in a transaction of its own.
    assert_eq!(sink.stored_position().await.unwrap(), b.position);
    let mut plain = config(&dir, Mode::Insert);
    plain.table = "u".parse::<RecordTemplate>().unwrap();
    let mut sink = SqlSink::open(plain, "q").await.unwrap();
    let mut b = batch(&[("", "[1]")]);
    sink.write(&mut b).await.unwrap();
    assert!(matches!(sink.tx, Tx::Pending(_)), "{:?}", sink.tx);
    // SQLite refuses a COMMIT with no transaction: none is sent.
    sink.commit(&mut b).await.unwrap();
    assert_eq!(sink.tx, Tx::None);
    put(&mut sink, &[("", r#"{"id":1}"#)]).await;
    assert_eq!(rows(&dir, "SELECT group_concat(id, ',') FROM u").await, ["1"]);
}
