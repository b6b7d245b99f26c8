//! Avro: the validation step, the Confluent wire format on Kafka both ways with
//! Confluent's own Python client as the other side, Flowgate's registry driven
//! by `schema_registry_converter` and by the Python client, registry outages,
//! and Postgres changes through Avro.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::kafka::{Broker, Reader};
use common::pipeline::{Pipeline, sink, source, transform};
use common::postgres::Postgres;
use common::registry::{Registry, run_python};
use common::{Guard, flowgate, log, records, records_so_far, spawn_run, stop, wait_for, write_file};
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_all_subjects, get_all_versions, get_schema_by_id, get_schema_by_subject_and_version,
    is_compatible_schema, post_schema,
};
use schema_registry_converter::schema_registry_common::{SchemaType, SubjectNameStrategy, SuppliedSchema};
use serde_json::{Value, json};

/// A plain HTTP/1.1 request to a loopback port: status and body.
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (status, body)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn avro(schema: &str) -> SuppliedSchema {
    SuppliedSchema::new(None, SchemaType::Avro, schema.to_string())
}

const V1: &str = r#"{"type":"record","name":"Conv","namespace":"t","fields":[{"name":"a","type":"int"}]}"#;
const V2: &str = r#"{"type":"record","name":"Conv","namespace":"t","fields":[{"name":"a","type":"int"},{"name":"b","type":"string","default":"x"}]}"#;
const V3: &str = r#"{"type":"record","name":"Conv","namespace":"t","fields":[{"name":"a","type":"int"},{"name":"b","type":"string","default":"x"},{"name":"c","type":"long"}]}"#;

#[test]
fn the_registry_serves_schema_registry_converter_and_keeps_everything_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::start(dir.path());
    let sr = SrSettings::new(registry.url());
    let rt = runtime();
    let (id1, id2, framed) = rt.block_on(async {
        let id1 = post_schema(&sr, "conv-value".into(), avro(V1)).await.unwrap().id;
        assert_eq!(post_schema(&sr, "conv-value".into(), avro(V1)).await.unwrap().id, id1, "same schema, same id");
        let by_id = get_schema_by_id(id1, &sr).await.unwrap();
        assert_eq!(serde_json::from_str::<Value>(&by_id.schema).unwrap(), serde_json::from_str::<Value>(V1).unwrap());
        let id2 = post_schema(&sr, "conv-value".into(), avro(V2)).await.unwrap().id;
        assert_ne!(id1, id2);
        assert_eq!(get_all_versions(&sr, "conv-value".into()).await.unwrap(), vec![1, 2]);
        assert!(get_all_subjects(&sr).await.unwrap().contains(&"conv-value".to_string()));
        let latest = get_schema_by_subject_and_version(&sr, "conv-value", None).await.unwrap();
        assert_eq!((latest.id, latest.version), (id2, Some(2)));
        let first = get_schema_by_subject_and_version(&sr, "conv-value", Some(1)).await.unwrap();
        assert_eq!(first.id, id1);

        // Default BACKWARD: a new field without a default is refused.
        assert!(!is_compatible_schema(&sr, "conv-value".into(), avro(V3)).await.unwrap());
        let refused = post_schema(&sr, "conv-value".into(), avro(V3)).await.unwrap_err();
        assert!(
            refused.error.contains("409") || refused.cause.as_deref().unwrap_or("").contains("incompatible"),
            "{refused:?}"
        );

        // The crate's own encoder and decoder, against this registry.
        let encoder = AvroEncoder::new(SrSettings::new(registry.url()));
        let values =
            vec![("a", apache_avro::types::Value::Int(7)), ("b", apache_avro::types::Value::String("y".into()))];
        let framed =
            encoder.encode(values, SubjectNameStrategy::TopicNameStrategy("conv".into(), false)).await.unwrap();
        assert_eq!(framed[..5], [&[0u8][..], &id2.to_be_bytes()].concat()[..]);
        let decoded = AvroDecoder::new(SrSettings::new(registry.url())).decode(Some(&framed)).await.unwrap();
        assert_eq!(
            decoded.value,
            apache_avro::types::Value::Record(vec![
                ("a".into(), apache_avro::types::Value::Int(7)),
                ("b".into(), apache_avro::types::Value::String("y".into()))
            ])
        );
        (id1, id2, framed)
    });
    // Compatibility per subject, then a restart on the same store. (A new
    // client each time: this runtime does not drive the pool between calls.)
    assert_eq!(http(registry.port, "PUT", "/config/conv-value", r#"{"compatibility":"NONE"}"#).0, 200);
    let sr = SrSettings::new(registry.url());
    let id3 = rt.block_on(post_schema(&sr, "conv-value".into(), avro(V3))).unwrap().id;
    assert_eq!(http(registry.port, "PUT", "/config", r#"{"compatibility":"FULL_TRANSITIVE"}"#).0, 200);
    registry.stop();
    registry.start_again();
    let sr = SrSettings::new(registry.url());
    rt.block_on(async {
        assert_eq!(get_all_versions(&sr, "conv-value".into()).await.unwrap(), vec![1, 2, 3]);
        for (id, text) in [(id1, V1), (id2, V2), (id3, V3)] {
            let s = get_schema_by_id(id, &sr).await.unwrap();
            assert_eq!(serde_json::from_str::<Value>(&s.schema).unwrap(), serde_json::from_str::<Value>(text).unwrap());
        }
        let decoded = AvroDecoder::new(SrSettings::new(registry.url())).decode(Some(&framed)).await.unwrap();
        assert!(matches!(decoded.value, apache_avro::types::Value::Record(_)));
    });
    assert_eq!(http(registry.port, "GET", "/config/conv-value", "").1, r#"{"compatibilityLevel":"NONE"}"#);
    assert_eq!(http(registry.port, "GET", "/config", "").1, r#"{"compatibilityLevel":"FULL_TRANSITIVE"}"#);
    // A new subject now gets the global level.
    let (status, body) = http(registry.port, "GET", "/config/other?defaultToGlobal=true", "");
    assert_eq!((status, body.as_str()), (200, r#"{"compatibilityLevel":"FULL_TRANSITIVE"}"#));
    let (status, body) = http(registry.port, "GET", "/schemas/ids/999", "");
    assert_eq!(status, 404);
    assert!(body.contains("40403"), "{body}");
    // Versions: soft delete, again (refused), then for good; the id stays readable.
    assert_eq!(http(registry.port, "DELETE", "/subjects/conv-value/versions/1", ""), (200, "1".into()));
    let (status, body) = http(registry.port, "DELETE", "/subjects/conv-value/versions/1", "");
    assert_eq!(status, 404);
    assert!(body.contains("40406"), "{body}");
    assert_eq!(http(registry.port, "DELETE", "/subjects/conv-value/versions/1?permanent=true", ""), (200, "1".into()));
    assert_eq!(http(registry.port, "GET", "/subjects/conv-value/versions", "").1, "[2,3]");
    assert_eq!(http(registry.port, "GET", &format!("/schemas/ids/{id1}"), "").0, 200);
    let (status, body) = http(registry.port, "PATCH", "/config", "");
    assert_eq!(status, 405);
    assert!(body.contains("error_code"), "{body}");
}

#[test]
fn the_registry_passes_the_confluent_python_client_suite_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = common::reserve_port();
    let metrics = metrics_port.port;
    let store = format!("sqlite:{}", dir.path().join("registry.db").display());
    let mut registry =
        Registry::start_with_args(dir.path(), &store, &["--metrics-addr", &format!("127.0.0.1:{metrics}")]);
    let out = run_python("registry_suite.py", &[&registry.url()]);
    assert!(out.contains("python registry suite: ok"), "{out}");
    let (_, body) = common::http_get(metrics, "/metrics").unwrap();
    let refused = common::metric(&body, r#"flowgate_registry_requests_total{method="POST",status="409"}"#);
    assert_eq!(refused, Some(4.0), "four refused registrations\n{body}");
    assert_eq!(common::http_get(metrics, "/health").unwrap().0, 200);
    registry.stop();
    registry.start_again();
    assert_eq!(http(registry.port, "GET", "/subjects/py-value/versions", "").1, "[1,2]");
    assert_eq!(http(registry.port, "GET", "/config/py-fwd", "").1, r#"{"compatibilityLevel":"FORWARD"}"#);
    let (status, subjects) = http(registry.port, "GET", "/subjects", "");
    assert_eq!(status, 200);
    let subjects: Vec<String> = serde_json::from_str(&subjects).unwrap();
    assert!(!subjects.contains(&"py-other".to_string()), "{subjects:?}");
}

const PAYMENT: &str = r#"{
  "type": "record", "name": "Payment", "namespace": "shop",
  "fields": [
    {"name": "id", "type": "long"},
    {"name": "payer", "type": "string"},
    {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}},
    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "day", "type": {"type": "int", "logicalType": "date"}},
    {"name": "ref", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["CARD", "BANK"]}},
    {"name": "memo", "type": ["null", "string"], "default": null},
    {"name": "raw", "type": "bytes", "default": ""},
    {"name": "items", "type": {"type": "array", "items": {"type": "record", "name": "Item", "fields": [
      {"name": "sku", "type": "string"},
      {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}}
    ]}}, "default": []}
  ]
}"#;

fn payment(i: u64) -> Value {
    json!({
        "id": i,
        "payer": format!("pä-{i} 🙂"),
        "amount": format!("{}.{:02}", i * 3, i % 100),
        "at": if i.is_multiple_of(2) { "1969-12-31T23:59:59.999999Z".to_string() } else { format!("2024-05-01T12:00:{:02}.5Z", i % 60) },
        "day": "1969-07-20",
        "ref": format!("00000000-0000-0000-0000-{:012x}", i),
        "kind": if i.is_multiple_of(2) { "CARD" } else { "BANK" },
        "memo": if i.is_multiple_of(3) { Value::Null } else { json!("") },
        "raw": "AP8Q",
        "items": [{"sku": "a", "price": "0.10"}, {"sku": "b", "price": "-99999999.99"}],
    })
}

/// A file -> avro step -> Kafka (Avro) pipeline; `registry` is the `registry:`
/// settings, `sink_extra` settings added to the Kafka sink's.
fn file_to_kafka(
    dir: &Path,
    input: &Path,
    broker: &Broker,
    topic: &str,
    registry: Value,
    sink_extra: Value,
) -> PathBuf {
    let schema = write_file(dir, "payment.avsc", PAYMENT);
    Pipeline::new("to-kafka")
        .source(source::file(input).with("follow", true))
        .transform(transform::avro(json!({"file": schema.display().to_string()})))
        .sink(sink::kafka(&broker.addr(), topic).with("format", "avro").extend(sink_extra))
        .dead_letter(sink::file(dir.join("dead.jsonl")))
        .registry(registry)
        .batch(json!({"size": 100, "linger": "20ms"}))
        .write(dir, "to-kafka.yaml")
}

#[test]
fn avro_written_by_flowgate_is_read_by_the_python_client_with_the_embedded_registry() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::with_topics(&[("payments", 2)]);
    let n = 50;
    let mut lines: Vec<String> = (0..n).map(|i| payment(i).to_string()).collect();
    // One that the step refuses: it goes to the dead letters, the others go on.
    let mut bad = payment(999);
    bad["items"][1]["price"] = json!("abc");
    lines.insert(10, bad.to_string());
    let input = write_file(dir.path(), "in.jsonl", &(lines.join("\n") + "\n"));
    let listen = common::reserve_port();
    let port = listen.port;
    let registry = json!({"serve": {
        "listen": format!("127.0.0.1:{port}"),
        "store": format!("sqlite:{}", dir.path().join("reg.db").display()),
    }});
    let file = file_to_kafka(dir.path(), &input, &broker, "payments", registry, json!({}));
    let mut run = spawn_run(dir.path(), &file, &[]);
    let url = format!("http://127.0.0.1:{port}");
    let out = run_python("avro_consume.py", &[&broker.addr(), "payments", &url, &n.to_string()]);
    let mut got: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    got.sort_by_key(|v| v["id"].as_u64());
    assert_eq!(got.len() as u64, n);
    for (i, v) in got.iter().enumerate() {
        let want = payment(i as u64);
        // Python's own renderings: Decimal, datetime.isoformat, date, UUID, base64 of bytes.
        assert_eq!(v["payer"], want["payer"]);
        assert_eq!(v["amount"], want["amount"]);
        assert_eq!(v["items"][1]["price"], "-99999999.99");
        assert_eq!(v["day"], "1969-07-20");
        assert_eq!(v["ref"], want["ref"]);
        assert_eq!(v["kind"], want["kind"]);
        assert_eq!(v["memo"], want["memo"]);
        assert_eq!(v["raw"], "AP8Q");
        let at = if i.is_multiple_of(2) {
            "1969-12-31T23:59:59.999999+00:00".to_string()
        } else {
            format!("2024-05-01T12:00:{:02}.500000+00:00", i % 60)
        };
        assert_eq!(v["at"], at.as_str());
    }
    stop(&mut run, dir.path());
    let dead = records(&dir.path().join("dead.jsonl"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["reason"], r#"$.items[1].price: expected decimal(10,2), got "abc""#);
    // The embedded registry stored the subject.
    let reg = Registry::start_with(dir.path(), &format!("sqlite:{}", dir.path().join("reg.db").display()));
    assert_eq!(http(reg.port, "GET", "/subjects", "").1, r#"["payments-value"]"#);
}

#[test]
fn avro_written_by_the_python_client_is_read_by_flowgate() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::with_topics(&[("py-payments", 1)]);
    let registry = Registry::start(dir.path());
    run_python("avro_produce.py", &[&broker.addr(), "py-payments", &registry.url(), "30"]);
    let output = dir.path().join("out.jsonl");
    let file = Pipeline::new("from-kafka")
        .source(source::kafka_quick_group(&broker.addr(), &["py-payments"], "fg").with("format", "avro"))
        .sink(sink::file(&output))
        .registry(json!({"url": registry.url()}))
        .batch(json!({"size": 10, "linger": "20ms"}))
        .write(dir.path(), "from-kafka.yaml");
    let mut run = spawn_run(dir.path(), &file, &[]);
    let arrived = wait_for(Duration::from_secs(60), || records_so_far(&output).len() >= 30);
    stop(&mut run, dir.path());
    assert!(arrived, "{}", log(dir.path()));
    let got = records(&output);
    assert_eq!(
        got[0],
        json!({
            "id": 0, "payer": "pä-0", "amount": "-5.00", "at": "1969-12-31T23:59:50Z", "day": "1969-12-25",
            "ref": "00000000-0000-0000-0000-000000000000", "kind": "CARD", "memo": null
        })
    );
    assert_eq!(got[29]["amount"], "-4.71");
    assert_eq!(got[29]["at"], "1970-01-01T00:00:19.000029Z");
    assert_eq!(got[29]["memo"], "m29");
}

#[test]
fn each_kind_of_mismatch_reaches_the_dead_letters_with_its_field_path() {
    let dir = tempfile::tempdir().unwrap();
    let schema = write_file(dir.path(), "payment.avsc", PAYMENT);
    let good = payment(1);
    let with = |path: &[&str], v: Value| {
        let mut r = good.clone();
        let mut at = &mut r;
        for p in &path[..path.len() - 1] {
            at = match p.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[*p],
            };
        }
        at[path[path.len() - 1]] = v;
        r
    };
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("payer");
    let cases: Vec<(Value, &str)> = vec![
        (
            with(&["amount"], json!("12.345")),
            r#"$.amount: expected decimal(12,2), got "12.345" (too many decimal places)"#,
        ),
        (with(&["items", "1", "price"], json!("abc")), r#"$.items[1].price: expected decimal(10,2), got "abc""#),
        (with(&["id"], json!("7")), r#"$.id: expected long, got "7""#),
        (with(&["kind"], json!("CASH")), r#"$.kind: expected enum `shop.Kind` (CARD, BANK), got "CASH""#),
        (with(&["at"], json!("soon")), r#"$.at: expected timestamp-micros (ISO 8601), got "soon""#),
        (with(&["day"], json!("1969-02-30")), r#"$.day: expected date (YYYY-MM-DD), got "1969-02-30""#),
        (with(&["ref"], json!("xyz")), r#"$.ref: expected uuid, got "xyz""#),
        (with(&["memo"], json!(5)), "$.memo: expected string, got 5"),
        (with(&["raw"], json!("%%%")), r#"$.raw: expected bytes (base64), got "%%%""#),
        (with(&["items"], json!({})), "$.items: expected array of record `shop.Item`, got an object"),
        (missing, "$.payer: missing; expected string (the field has no default)"),
        (with(&["extra"], json!(1)), "$.extra: not a field of record `shop.Payment`"),
    ];
    let mut lines: Vec<String> = cases.iter().map(|(v, _)| v.to_string()).collect();
    lines.push("not json".into());
    lines.push(good.to_string());
    let input = write_file(dir.path(), "in.jsonl", &(lines.join("\n") + "\n"));
    let file = Pipeline::new("check")
        .source(source::file(input).with("format", "text"))
        .transform(transform::avro(json!({"file": schema.display().to_string()})))
        .sink(sink::file(dir.path().join("out.jsonl")))
        .dead_letter(sink::file(dir.path().join("dead.jsonl")))
        .write(dir.path(), "check.yaml");
    let out = flowgate().arg("run").arg(&file).arg("--state-dir").arg(dir.path().join("state")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dead = records(&dir.path().join("dead.jsonl"));
    let reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    let mut want: Vec<&str> = cases.iter().map(|(_, r)| *r).collect();
    want.push("the value is not JSON: expected ident at line 1 column 2");
    assert_eq!(reasons, want);
    assert!(dead.iter().all(|d| d["stage"].as_str().unwrap().starts_with("transform[0]:avro(")));
    assert_eq!(records(&dir.path().join("out.jsonl")), vec![good]);
}

#[test]
fn a_registry_outage_makes_the_sink_and_the_source_wait_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::with_topics(&[("pay", 1)]);
    let mut registry = Registry::start(dir.path());
    registry.stop();
    let n = 200;
    let input = dir.path().join("in.jsonl");
    let lines: Vec<String> = (0..n).map(|i| payment(i).to_string()).collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let file =
        file_to_kafka(dir.path(), &input, &broker, "pay", json!({"url": registry.url(), "timeout": "1s"}), json!({}));
    let flags = ["--metrics-addr", "127.0.0.1:0", "--degraded-after", "1s"];
    let mut writer = spawn_run(dir.path(), &file, &flags);
    let port = common::metrics_port(dir.path());
    let mut reader = Reader::new(&broker.addr(), "pay", false);
    // Down: nothing goes out, nothing is dropped, and health says why.
    assert!(!reader.read_until(Duration::from_secs(4), |r| r.total > 0));
    assert!(log(dir.path()).contains("the schema registry is out of reach"), "{}", log(dir.path()));
    let health = || common::http_get(port, "/health/ready");
    let degraded = || health().is_some_and(|(c, b)| c == 503 && b.contains("degraded") && b.contains("registry"));
    assert!(wait_for(Duration::from_secs(20), degraded), "{:?}", health());
    registry.start_again();
    assert!(reader.read_until(Duration::from_secs(60), |r| r.total >= n), "{}", log(dir.path()));
    assert!(wait_for(Duration::from_secs(20), || health().is_some_and(|(c, _)| c == 200)), "{:?}", health());
    stop(&mut writer, dir.path());

    // A reader pipeline started while the registry is down waits for it too.
    registry.stop();
    let output = dir.path().join("out.jsonl");
    let read_file = kafka_to_file(dir.path(), &broker, &registry);
    let mut run = spawn_run(dir.path(), &read_file, &[]);
    // Longer than max.poll.interval.ms: the waiting consumer keeps polling, its
    // partitions paused, and stays in its group.
    std::thread::sleep(Duration::from_secs(10));
    assert!(records(&output).is_empty());
    registry.start_again();
    let all = wait_for(Duration::from_secs(60), || records_so_far(&output).len() as u64 >= n);
    stop(&mut run, dir.path());
    let text = log(dir.path());
    assert!(all, "{text}");
    assert!(!text.contains("maximum poll interval"), "the consumer left its group while waiting:\n{text}");
    let mut ids: Vec<u64> = records(&output).iter().map(|v| v["id"].as_u64().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len() as u64, n);
    assert_eq!(records(&output).len() as u64, n, "records after the wait were read twice");
}

/// A Kafka (`format: avro`) -> file pipeline in group `g`.
fn kafka_to_file(dir: &Path, broker: &Broker, registry: &Registry) -> PathBuf {
    Pipeline::new("from-kafka")
        .source(source::kafka_quick_group(&broker.addr(), &["pay"], "g").with("format", "avro"))
        .sink(sink::file(dir.join("out.jsonl")))
        .policy("fail")
        .registry(json!({"url": registry.url(), "timeout": "1s"}))
        .batch(json!({"size": 50, "linger": "20ms"}))
        .write(dir, "from-kafka.yaml")
}

#[test]
fn partitions_paused_for_the_registry_are_read_again_after_a_rebalance() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let broker = Broker::with_topics(&[("pay", 2)]);
    let mut registry = Registry::start(dir.path());
    let input = dir.path().join("in.jsonl");
    let write = |ids: std::ops::Range<u64>| {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&input).unwrap();
        for i in ids {
            std::io::Write::write_all(&mut f, format!("{}\n", payment(i)).as_bytes()).unwrap();
        }
    };
    write(0..200);
    // Keyed, so that both partitions have records.
    let registry_settings = json!({"url": registry.url(), "timeout": "1s"});
    let to_kafka = file_to_kafka(dir.path(), &input, &broker, "pay", registry_settings, json!({"key": "k${value.id}"}));
    let mut writer = spawn_run(dir.path(), &to_kafka, &[]);
    let mut reader = Reader::new(&broker.addr(), "pay", false);
    assert!(reader.read_until(Duration::from_secs(60), |r| r.total >= 200), "{}", log(dir.path()));
    let ids = |dirs: &[&Path]| {
        let mut ids: Vec<u64> =
            dirs.iter().flat_map(|d| records(&d.join("out.jsonl"))).map(|v| v["id"].as_u64().unwrap()).collect();
        ids.sort();
        ids.dedup();
        ids.len() as u64
    };
    // Both members hold records while the registry is down, each with its
    // partitions paused; B takes one of A's paused partitions in the rebalance.
    registry.stop();
    let mut run_a = spawn_run(&a, &kafka_to_file(&a, &broker, &registry), &[]);
    assert!(wait_for(Duration::from_secs(30), || log(&a).contains("out of reach")), "{}", log(&a));
    let mut run_b = spawn_run(&b, &kafka_to_file(&b, &broker, &registry), &[]);
    assert!(wait_for(Duration::from_secs(60), || log(&b).contains("out of reach")), "{}", log(&b));
    registry.start_again();
    // B's own held records written too: stopped while its decoding still
    // waits for the registry, a run reports the records it could not write.
    let written = || ids(&[&a, &b]) == 200 && ids(&[&b]) > 0;
    assert!(wait_for(Duration::from_secs(60), written), "{}\n{}", log(&a), log(&b));
    // B leaves: its partition goes back to A, which paused it before and must
    // read it again, including what is written after.
    stop(&mut run_b, &b);
    write(200..300);
    let all = wait_for(Duration::from_secs(60), || ids(&[&a, &b]) == 300);
    stop(&mut run_a, &a);
    stop(&mut writer, dir.path());
    assert!(all, "{} of 300 read\n{}\n{}", ids(&[&a, &b]), log(&a), log(&b));
}

#[test]
fn an_incompatible_schema_is_refused_at_validate_and_at_registration() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::with_topics(&[("inc", 1)]);
    let registry = Registry::start(dir.path());
    // The subject holds a schema that the pipeline's cannot evolve from (a
    // required field the new schema adds without default).
    let old = r#"{"type":"record","name":"Payment","namespace":"shop","fields":[{"name":"id","type":"long"}]}"#;
    runtime().block_on(post_schema(&SrSettings::new(registry.url()), "inc-value".into(), avro(old))).unwrap();
    let input = write_file(dir.path(), "in.jsonl", &(payment(1).to_string() + "\n"));
    let file = file_to_kafka(dir.path(), &input, &broker, "inc", json!({"url": registry.url()}), json!({}));
    let out = flowgate().args(["validate", "--check", "--message-format", "short"]).arg(&file).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is incompatible with subject `inc-value` in the registry"), "{err}");

    let mut run = spawn_run(dir.path(), &file, &[]);
    let exited = wait_for(Duration::from_secs(30), || run.try_wait().unwrap().is_some());
    assert!(exited, "the pipeline should stop\n{}", log(dir.path()));
    assert!(!run.try_wait().unwrap().unwrap().success());
    let log = log(dir.path());
    assert!(log.contains("incompatible with an earlier schema for subject \"inc-value\""), "{log}");
}

#[test]
fn postgres_changes_round_trip_through_avro_on_kafka_with_a_new_version_per_table_change() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    let broker = Broker::with_topics(&[("public.edge", 1)]);
    pg.sql(
        "CREATE TABLE edge (id int8 PRIMARY KEY, price numeric(10,2), free numeric, at timestamptz, \
         local timestamp, day date, t time, name text, flag bool, ratio float4, raw bytea, doc jsonb, \
         tags text[], ref uuid);
         INSERT INTO edge VALUES
          (1, -12345678.90, 3.14159265358979323846, '1969-12-31 23:59:59.999999+00', '1900-01-01 00:00:00.25',
           '0001-01-01', '23:59:59.999999', 'ü€𝄞 \"q\"', false, 'NaN', '\\x00ff', '{\"a\": [1, null]}',
           '{a,\"\",NULL}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'),
          (2, 0.01, 0, '2024-05-01 12:00:00.5+00', '2024-05-01 12:00:00', '2024-02-29', '00:00:00', '', true,
           0.1, '', 'null', '{}', NULL),
          (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
    );
    let listen = common::reserve_port();
    let port = listen.port;
    let registry = json!({"serve": {
        "listen": format!("127.0.0.1:{port}"),
        "store": format!("sqlite:{}", dir.path().join("reg.db").display()),
    }});
    let out_path = dir.path().join("decoded.jsonl");
    let cdc = Pipeline::new("cdc-avro")
        .source(source::postgres_cdc(pg.url(), &["edge"]))
        .sink(sink::kafka(&broker.addr(), "${meta.schema}.${meta.table}").with("format", "avro"))
        .registry(registry.clone())
        .batch(json!({"size": 100, "linger": "20ms"}))
        .write(dir.path(), "cdc.yaml");
    let decode = Pipeline::new("decode")
        .source(source::kafka_quick_group(&broker.addr(), &["public.edge"], "dec").with("format", "avro"))
        .sink(sink::file(&out_path))
        .registry(registry)
        .batch(json!({"size": 100, "linger": "20ms"}))
        .write(dir.path(), "decode.yaml");
    // Both pipelines in one process share the embedded registry.
    let mut run = Guard(
        common::flowgate()
            .arg("run")
            .arg(&cdc)
            .arg(&decode)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .current_dir(dir.path())
            .stderr(std::fs::File::create(dir.path().join("flowgate.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    assert!(wait_for(Duration::from_secs(60), || records_so_far(&out_path).len() >= 3), "{}", log(dir.path()));
    pg.sql("ALTER TABLE edge ADD COLUMN note text; INSERT INTO edge (id, note) VALUES (4, 'added');");
    assert!(wait_for(Duration::from_secs(60), || records_so_far(&out_path).len() >= 4), "{}", log(dir.path()));
    let versions = http(port, "GET", "/subjects/public.edge-value/versions", "").1;
    stop(&mut run, dir.path());

    let after: Vec<Value> = records(&out_path).into_iter().map(|v| v["after"].clone()).collect();
    assert_eq!(
        after[0],
        json!({"id": 1, "price": "-12345678.90", "free": "3.14159265358979323846", "at": "1969-12-31T23:59:59.999999Z",
               "local": "1900-01-01T00:00:00.25", "day": "0001-01-01", "t": "23:59:59.999999", "name": "ü€𝄞 \"q\"",
               "flag": false, "ratio": "NaN", "raw": "AP8=", "doc": {"a": [1, null]}, "tags": ["a", "", null],
               "ref": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"})
    );
    assert_eq!(
        after[1],
        json!({"id": 2, "price": "0.01", "free": "0", "at": "2024-05-01T12:00:00.5Z", "local": "2024-05-01T12:00:00",
               "day": "2024-02-29", "t": "00:00:00", "name": "", "flag": true, "ratio": 0.1, "raw": "", "doc": null,
               "tags": [], "ref": null})
    );
    assert!(after[2].as_object().unwrap().iter().all(|(k, v)| k == "id" || v.is_null()), "{}", after[2]);
    assert_eq!(after[3]["note"], "added");
    assert_eq!(versions, "[1,2]", "a new schema version after ALTER TABLE");
}

#[test]
fn the_shipped_postgres_to_kafka_avro_pipeline_is_read_by_the_python_client() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    pg.create_shop();
    pg.sql("INSERT INTO shop.orders (customer, amount, placed_at) VALUES (1, 12.50, '1969-07-20 20:17:40+00')");
    let broker = Broker::with_topics(&[("shop.customers", 1), ("shop.orders", 1), ("shop-dead-letters", 1)]);
    let listen_port = common::reserve_port();
    let listen = format!("127.0.0.1:{}", listen_port.port);
    let shipped = common::repo().join("pipelines/postgres-to-kafka-avro.yaml");
    let env = [("POSTGRES_URL", pg.url()), ("KAFKA_BROKERS", broker.addr()), ("REGISTRY_LISTEN", listen.clone())];
    let mut run = common::spawn_run_with_env(dir.path(), &shipped, &[], &env);
    pg.wait_streaming("flowgate_shop_avro", dir.path());
    // The snapshot is incremental: once both tables are read, the change
    // after it follows the row.
    let read = || common::log(dir.path()).matches("incremental snapshot written").count() == 2;
    assert!(common::wait_for(std::time::Duration::from_secs(30), read), "{}", common::log(dir.path()));
    pg.sql("UPDATE shop.orders SET status = 'paid' WHERE id = 1");
    let out = run_python("avro_consume.py", &[&broker.addr(), "shop.orders", &format!("http://{listen}"), "2"]);
    let events: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    stop(&mut run, dir.path());
    assert_eq!(events[0]["op"], "r");
    assert_eq!(events[1]["op"], "u");
    let after = &events[1]["after"];
    assert_eq!(after["amount"], "12.50", "decimal(10,2) as Python's Decimal");
    assert_eq!(after["placed_at"], "1969-07-20T20:17:40+00:00");
    assert_eq!(after["status"], "paid");
    assert_eq!(events[1]["source"]["table"], "orders");
}

#[test]
fn the_registry_keeps_its_schemas_in_postgres_too() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    let mut registry = Registry::start_with(dir.path(), &pg.url());
    let out = run_python("registry_suite.py", &[&registry.url()]);
    assert!(out.contains("python registry suite: ok"), "{out}");
    registry.stop();
    registry.start_again();
    assert_eq!(http(registry.port, "GET", "/subjects/py-value/versions", "").1, "[1,2]");
    assert_eq!(http(registry.port, "GET", "/config/py-fwd", "").1, r#"{"compatibilityLevel":"FORWARD"}"#);
    let rows = pg.sql("SELECT count(*) FROM flowgate_registry_versions WHERE subject = 'py-value'");
    assert_eq!(rows.trim(), "2");
}

#[test]
fn a_schema_from_a_registry_subject_and_each_subject_naming() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::with_topics(&[("named", 1)]);
    let registry = Registry::start(dir.path());
    let sr = SrSettings::new(registry.url());
    let old = r#"{"type":"record","name":"Payment","namespace":"shop","fields":[{"name":"id","type":"long"}]}"#;
    let rt = runtime();
    let v1 = rt.block_on(post_schema(&sr, "payments-value".into(), avro(old))).unwrap().id;
    assert_eq!(http(registry.port, "PUT", "/config/payments-value", r#"{"compatibility":"NONE"}"#).0, 200);
    let sr = SrSettings::new(registry.url());
    let v2 = rt.block_on(post_schema(&sr, "payments-value".into(), avro(PAYMENT))).unwrap().id;
    let input = write_file(dir.path(), "in.jsonl", &format!("{}\n{}\n", payment(1), json!({"id": 2})));
    let run = |name: &str, version: Value, sink_extra: Value| {
        let file = Pipeline::new(name)
            .source(source::file(&input))
            .transform(transform::avro(json!({"subject": "payments-value", "version": version})))
            .sink(sink::kafka(&broker.addr(), "named").with("format", "avro").extend(sink_extra))
            .dead_letter(sink::file(dir.path().join(format!("{name}-dead.jsonl"))))
            .registry(json!({"url": registry.url()}))
            .write(dir.path(), &format!("{name}.yaml"));
        let out = flowgate().arg("run").arg(&file).arg("--state-dir").arg(dir.path().join(name)).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // Version 1 has only `id`: the full payment is refused, `{"id": 2}` fits.
    let (ok, log) = run("pinned", json!(1), json!({}));
    assert!(ok, "{log}");
    let dead = records(&dir.path().join("pinned-dead.jsonl"));
    assert_eq!(dead.len(), 1);
    assert!(dead[0]["reason"].as_str().unwrap().ends_with("not a field of record `shop.Payment`"), "{dead:?}");
    // Latest is the full schema; the sink names subjects by record, and by topic and record.
    let (ok, log) = run("latest", json!("latest"), json!({"avro": {"subject_name": "record"}}));
    assert!(ok, "{log}");
    let (ok, log) = run("topic-record", json!("latest"), json!({"avro": {"subject_name": "topic_record"}}));
    assert!(ok, "{log}");
    let subjects: Vec<String> = serde_json::from_str(&http(registry.port, "GET", "/subjects", "").1).unwrap();
    assert_eq!(subjects, ["named-shop.Payment", "named-value", "payments-value", "shop.Payment"]);
    // The same schema text keeps its id under every subject.
    let latest = |s: &str| -> Value {
        serde_json::from_str(&http(registry.port, "GET", &format!("/subjects/{s}/versions/latest"), "").1).unwrap()
    };
    assert_eq!(latest("shop.Payment")["id"], v2);
    assert_eq!(latest("named-value")["id"], v1);
    // Without registration a schema the subject lacks is a clear error.
    let (ok, log) =
        run("no-register", json!("latest"), json!({"avro": {"subject_name": "topic", "auto_register": false}}));
    assert!(!ok);
    assert!(log.contains("named-value") && log.contains("40403"), "{log}");
    let mut reader = Reader::new(&broker.addr(), "named", false);
    reader.read_until(Duration::from_secs(3), |r| r.total > 3);
    // One record fits each schema: `{"id": 2}` version 1, the full payment the latest.
    assert_eq!(reader.total, 3);
}

#[test]
fn a_killed_avro_pipeline_loses_nothing_and_its_embedded_registry_keeps_the_ids() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::with_topics(&[("killed", 2)]);
    let n = 100_000;
    let lines: Vec<String> = (0..n).map(|i| payment(i).to_string()).collect();
    let input = write_file(dir.path(), "in.jsonl", &(lines.join("\n") + "\n"));
    let listen = common::reserve_port();
    let port = listen.port;
    let registry = json!({"serve": {
        "listen": format!("127.0.0.1:{port}"),
        "store": format!("sqlite:{}", dir.path().join("reg.db").display()),
    }});
    let file = file_to_kafka(dir.path(), &input, &broker, "killed", registry, json!({"key": "k${value.id}"}));
    let mut reader = Reader::new(&broker.addr(), "killed", false);
    let mut run = spawn_run(dir.path(), &file, &[]);
    assert!(reader.read_until(Duration::from_secs(30), |r| r.total >= 5_000), "{}", log(dir.path()));
    common::kill(&mut run);
    let at_kill = reader.total;
    let mut run = spawn_run(dir.path(), &file, &[]);
    let complete = reader.read_until(Duration::from_secs(60), |r| r.counts.len() as u64 == n);
    assert!(complete, "missing {} keys\n{}", reader.missing(n).len(), log(dir.path()));
    eprintln!(
        "{n} distinct of {} records; {} duplicates; {at_kill} read at the kill",
        reader.total,
        reader.duplicates()
    );
    assert!(at_kill < n, "the kill came after the end");

    // Everything decodes with the ids the restarted registry still has.
    let output = dir.path().join("decoded.jsonl");
    let decode = Pipeline::new("decode")
        .source(source::kafka_quick_group(&broker.addr(), &["killed"], "dec").with("format", "avro"))
        .sink(sink::file(&output).with("fsync", false))
        .policy("fail")
        .registry(json!({"url": format!("http://127.0.0.1:{port}")}))
        .batch(json!({"size": 1000, "linger": "20ms"}))
        .write(dir.path(), "decode.yaml");
    let dir2 = tempfile::tempdir().unwrap();
    let mut decoder = spawn_run(dir2.path(), &decode, &[]);
    let all = wait_for(Duration::from_secs(60), || records_so_far(&output).len() as u64 >= reader.total);
    stop(&mut decoder, dir2.path());
    stop(&mut run, dir.path());
    assert!(all, "{}", log(dir2.path()));
    let mut ids: Vec<u64> = records(&output).iter().map(|v| v["id"].as_u64().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len() as u64, n);
}
