//! What an operator sees: lag, health, the status page in a real browser,
//! and the shipped alert rules in a real Prometheus.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::kafka::{Broker, Reader, Writer, numbered};
use common::pipeline::{Pipeline, sink, source};
use common::postgres::Postgres;
use common::{Guard, http_get, log, metrics_port, reserve_port, spawn_run, stop, wait_for};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{Value, json};

/// The samples of `name` on a `/metrics` page with all of `labels`, summed.
fn sum_of(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in body.lines().filter(|l| l.starts_with(name)) {
        let rest = &line[name.len()..];
        if !rest.starts_with(['{', ' ']) {
            continue;
        }
        if labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))) {
            let v: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok())?;
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

fn metrics(port: u16) -> String {
    http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default()
}

/// What `kafka-consumer-groups --describe` computes: per partition, the end
/// of the partition minus the group's committed offset, asked of the broker.
/// The end is found by reading the partition to its last record: tansu's
/// ListOffsets answers the last batch's base offset + 1 as the high
/// watermark (1 after a first batch of 1000 records), while its fetch
/// responses carry the right one (docs/dev-notes/test-broker.md).
fn group_lag(addr: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
    let ends = partition_ends(addr, topic, partitions);
    (0..partitions)
        .map(|p| match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => ends[p as usize] - o,
            other => panic!("partition {p} has no committed offset: {other:?}"),
        })
        .collect()
}

/// The offset after the last record of each partition, read to the end.
fn partition_ends(addr: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", "test-ends")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).expect("assign");
    let mut ends = vec![0i64; partitions as usize];
    let mut quiet = std::time::Instant::now();
    while quiet.elapsed() < Duration::from_secs(3) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            use rdkafka::Message;
            let end = &mut ends[m.partition() as usize];
            *end = (*end).max(m.offset() + 1);
            quiet = std::time::Instant::now();
        }
    }
    ends
}

/// A Prometheus server scraping `target` every second with the shipped
/// rules, their `for:` cut to 5 s.
struct Prometheus {
    child: Child,
    port: u16,
    _reserved: common::Port,
}

impl Prometheus {
    fn start(dir: &Path, target: u16) -> Prometheus {
        let rules = std::fs::read_to_string(common::repo().join("deploy/prometheus/flowgate-rules.yml")).unwrap();
        let rules = regex_lite::Regex::new(r"for: \d+[ms]").unwrap().replace_all(&rules, "for: 5s");
        std::fs::write(dir.join("rules.yml"), rules.as_bytes()).unwrap();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [rules.yml]\n\
             scrape_configs:\n  - job_name: flowgate\n    static_configs: [{{targets: ['127.0.0.1:{target}']}}]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let reserved = reserve_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", reserved.port))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus starts (Debian's `prometheus`: scripts/setup.sh installs it)");
        let p = Prometheus { child, port: reserved.port, _reserved: reserved };
        let ready = || http_get(p.port, "/-/ready").is_some_and(|(c, _)| c == 200);
        assert!(wait_for(Duration::from_secs(30), ready), "prometheus is not ready");
        p
    }

    fn api(&self, path: &str) -> Value {
        let (code, body) = http_get(self.port, path).unwrap_or_else(|| panic!("no answer to {path}"));
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    /// The value of an instant query's first series, if any.
    fn value(&self, query: &str) -> Option<f64> {
        let q: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let v = self.api(&format!("/api/v1/query?query={q}"));
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// The alerts firing, as (alert name, pipeline).
    fn firing(&self) -> Vec<(String, String)> {
        let v = self.api("/api/v1/alerts");
        v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing")
            .map(|a| {
                let l = &a["labels"];
                (l["alertname"].as_str().unwrap_or("").to_string(), l["pipeline"].as_str().unwrap_or("").to_string())
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_stopped_sink_shows_as_lag_degraded_health_and_a_firing_alert_then_clears_with_nothing_lost() {
    const N: u64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::with_topics(&[("orders", 3)]);
    let writer = Writer::new(&broker.addr());
    writer.send("orders", numbered(0..N));
    let mut pg = Postgres::start();
    pg.sql("CREATE TABLE orders (id bigint PRIMARY KEY, email text, pad text)");
    let file = Pipeline::new("orders-to-pg")
        .source(
            source::kafka(&broker.addr(), &["orders"], "g-observe")
                .with("start", "earliest")
                .with("session_timeout", "2s")
                .with("properties", json!({"max.poll.interval.ms": "6000", "statistics.interval.ms": "500"})),
        )
        .sink(sink::postgres(pg.url(), "orders").with("mode", "upsert").with("key", json!(["id"])))
        .batch(json!({"size": 100, "linger": "10ms"}))
        .health(json!({"max_lag_records": 500}))
        .write(dir.path(), "orders.yaml");
    let flags = ["--metrics-addr", "127.0.0.1:0", "--degraded-after", "1s", "--progress", "1s"];
    let mut run: Guard = spawn_run(dir.path(), &file, &flags);
    let port = metrics_port(dir.path());
    let count = |pg: &Postgres| pg.sql("SELECT count(*) FROM orders");
    let code = |path: &str| http_get(port, path).map(|(c, _)| c);
    assert!(wait_for(Duration::from_secs(60), || count(&pg) == N.to_string()), "{}", log(dir.path()));
    let lag = |port: u16| sum_of(&metrics(port), "flowgate_lag_records", &[("pipeline", "orders-to-pg")]);
    assert!(wait_for(Duration::from_secs(20), || lag(port) == Some(0.0)), "{}", metrics(port));
    assert!(
        wait_for(Duration::from_secs(10), || code("/health/ready") == Some(200)),
        "{:?}",
        http_get(port, "/health")
    );
    let prometheus = Prometheus::start(dir.path(), port);

    // The sink's database goes away while records keep arriving.
    pg.stop();
    writer.send("orders", numbered(N..2 * N));
    let degraded = || {
        http_get(port, "/health").is_some_and(|(c, b)| {
            c == 503
                && b.contains("sink retrying")
                && b.contains("over the bound of 500")
                && b.contains(r#""state":"degraded""#)
        })
    };
    assert!(wait_for(Duration::from_secs(30), degraded), "{:?}", http_get(port, "/health"));
    assert_eq!(code("/health/ready"), Some(503));

    // Per partition, the lag is what the broker's own figures give: the
    // high watermark minus the group's committed offset.
    let expected = group_lag(&broker.addr(), "g-observe", "orders", 3);
    assert_eq!(expected.iter().sum::<i64>(), N as i64, "the new records are all behind: {expected:?}");
    let per_partition = |port: u16| -> Vec<i64> {
        let body = metrics(port);
        (0..3)
            .map(|p| {
                let labels = [("pipeline", "orders-to-pg"), ("topic", "orders"), ("partition", &*p.to_string())];
                sum_of(&body, "flowgate_kafka_consumer_lag", &labels).map_or(-1, |v| v as i64)
            })
            .collect()
    };
    assert!(
        wait_for(Duration::from_secs(10), || per_partition(port) == expected),
        "{:?} != {expected:?}",
        per_partition(port)
    );
    assert_eq!(lag(port), Some(N as f64));

    // Prometheus scraped the lag and fires the shipped alert.
    let lag_in_prometheus = || prometheus.value(r#"flowgate_lag_records{pipeline="orders-to-pg"}"#) == Some(N as f64);
    assert!(wait_for(Duration::from_secs(30), lag_in_prometheus), "{:?}", prometheus.api("/api/v1/targets"));
    let firing = || prometheus.firing().contains(&("FlowgatePipelineDegraded".into(), "orders-to-pg".into()));
    assert!(wait_for(Duration::from_secs(60), firing), "{:?}", prometheus.api("/api/v1/alerts"));

    // Back: everything arrives, the lag falls to nothing, the pipeline is ready.
    pg.start_again();
    assert!(wait_for(Duration::from_secs(120), || count(&pg) == (2 * N).to_string()), "{}", log(dir.path()));
    assert!(wait_for(Duration::from_secs(20), || lag(port) == Some(0.0)), "{}", metrics(port));
    assert!(
        wait_for(Duration::from_secs(10), || code("/health/ready") == Some(200)),
        "{:?}",
        http_get(port, "/health")
    );
    assert_eq!(group_lag(&broker.addr(), "g-observe", "orders", 3), vec![0, 0, 0]);
    stop(&mut run.0, dir.path());
    let text = log(dir.path());
    assert!(text.contains("degraded") && text.contains("recovered: running"), "{text}");
    assert!(text.contains("· lag "), "the progress line shows the lag:\n{text}");
    assert!(text.contains("partitions assigned") && text.contains("orders[0]"), "{text}");
}

#[test]
fn a_frozen_broker_degrades_the_pipeline_until_it_answers_again_and_nothing_is_lost() {
    const N: u64 = 2000;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::with_topics(&[("in", 2), ("out", 2)]);
    let writer = Writer::new(&broker.addr());
    writer.send("in", numbered(0..N));
    let stats = json!({"max.poll.interval.ms": "6000", "statistics.interval.ms": "500"});
    let file = Pipeline::new("k2k")
        .source(
            source::kafka(&broker.addr(), &["in"], "g-frozen")
                .with("start", "earliest")
                .with("session_timeout", "2s")
                .with("properties", stats),
        )
        .sink(sink::kafka(&broker.addr(), "out").with("properties", json!({"statistics.interval.ms": "500"})))
        .batch(json!({"size": 100, "linger": "10ms"}))
        .write(dir.path(), "k2k.yaml");
    let flags = ["--metrics-addr", "127.0.0.1:0", "--degraded-after", "2s"];
    let mut run = spawn_run(dir.path(), &file, &flags);
    let port = metrics_port(dir.path());
    let code = |path: &str| http_get(port, path).map(|(c, _)| c);
    let mut out = Reader::new(&broker.addr(), "out", false);
    assert!(out.read_until(Duration::from_secs(60), |r| r.total >= N), "{}", log(dir.path()));
    assert!(
        wait_for(Duration::from_secs(10), || code("/health/ready") == Some(200)),
        "{:?}",
        http_get(port, "/health")
    );

    broker.freeze();
    let degraded = || http_get(port, "/health").is_some_and(|(c, b)| c == 503 && b.contains("broker not answering"));
    let seen = wait_for(Duration::from_secs(30), degraded);
    let health = http_get(port, "/health");
    broker.thaw();
    assert!(seen, "{health:?}\n{}", log(dir.path()));

    assert!(
        wait_for(Duration::from_secs(60), || code("/health/ready") == Some(200)),
        "{:?}",
        http_get(port, "/health")
    );
    writer.send("in", numbered(N..2 * N));
    assert!(out.read_until(Duration::from_secs(60), |r| r.missing(2 * N).is_empty()), "{}", log(dir.path()));
    stop(&mut run.0, dir.path());
    let text = log(dir.path());
    assert!(text.contains("degraded") && text.contains("recovered: running"), "{text}");
}

/// Renders `url` in headless Chromium after its scripts ran for a while
/// (virtual time: the page's fetches complete before the DOM is taken).
fn chromium(url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .expect("chromium runs (Debian's `chromium`: scripts/setup.sh installs it)");
    assert!(out.status.success(), "chromium failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The part of the page that is `pipeline`'s card.
fn card<'a>(dom: &'a str, pipeline: &str) -> &'a str {
    let start =
        dom.find(&format!(r#"data-pipeline="{pipeline}""#)).unwrap_or_else(|| panic!("no card for {pipeline}:\n{dom}"));
    let rest = &dom[start..];
    let end = rest[1..].find("data-pipeline=").map_or(rest.len(), |e| e + 1);
    &rest[..end]
}

/// The number shown as `data-metric="key"` in a card.
fn figure(card: &str, key: &str) -> f64 {
    let at = card.find(&format!(r#"data-metric="{key}""#)).unwrap_or_else(|| panic!("no {key} in {card}"));
    let text = &card[at..];
    let text = &text[text.find('>').expect("tag ends") + 1..];
    let text = &text[..text.find('<').expect("element ends")];
    text.parse().unwrap_or_else(|_| panic!("{key} shows {text:?}"))
}

#[test]
fn the_status_page_in_a_real_browser_shows_each_pipeline_its_rising_counters_and_a_degraded_sink() {
    let dir = tempfile::tempdir().unwrap();
    let closed = common::closed_port();
    let orders = Pipeline::new("orders")
        .source(source::generate(r#"{"id":${seq}}"#).with("rate", 500))
        .sink(sink::file("out.jsonl"))
        .batch(json!({"size": 50, "linger": "10ms"}))
        .write(dir.path(), "orders.yaml");
    let webhook = Pipeline::new("webhook")
        .source(source::generate(r#"{"id":${seq}}"#).with("rate", 10))
        .sink(common::pipeline::Part::new("http", json!({"url": format!("http://127.0.0.1:{}/hook", closed.port)})))
        .write(dir.path(), "webhook.yaml");
    let webhook = webhook.to_str().unwrap();
    let flags = ["--metrics-addr", "127.0.0.1:0", "--degraded-after", "1s", webhook];
    let mut run = spawn_run(dir.path(), &orders, &flags);
    let port = metrics_port(dir.path());
    let degraded = || http_get(port, "/health").is_some_and(|(_, b)| b.contains("sink retrying"));
    assert!(wait_for(Duration::from_secs(30), degraded), "{:?}", http_get(port, "/health"));
    // A few samples of the chart's history (one per 2 s) have been taken.
    std::thread::sleep(Duration::from_secs(6));

    let url = format!("http://127.0.0.1:{port}/");
    let first = chromium(&url, &["--dump-dom"]);
    assert!(first.contains("<title>Flowgate status</title>"), "{first}");
    let (o, w) = (card(&first, "orders"), card(&first, "webhook"));
    assert!(o.contains(r#"class="pipeline-name">orders<"#) && o.contains("state-running"), "{o}");
    assert!(w.contains("state-degraded") && w.contains("sink retrying"), "{w}");
    assert!(w.contains("Connection refused") || w.contains("connection refused") || w.contains("error"), "{w}");
    let out_before = figure(o, "out");
    assert!(out_before > 0.0, "{o}");

    std::thread::sleep(Duration::from_secs(2));
    let second = chromium(&url, &["--dump-dom"]);
    let o = card(&second, "orders");
    let out_after = figure(o, "out");
    assert!(out_after > out_before, "the counter rose between two loads: {out_before} then {out_after}");
    assert!(o.contains("<svg") && o.contains("records out per second"), "the rate chart is drawn: {o}");

    // Kept for a person to look at.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&url, &[&format!("--screenshot={}", shot.display()), "--window-size=1280,900"]);
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "a screenshot at {} ({size} bytes)", shot.display());
    eprintln!("status page screenshot: {}", shot.display());
    common::kill(&mut run.0);
}

#[test]
fn the_shipped_alert_rules_load_and_pass_their_promtool_tests() {
    let dir = common::repo().join("deploy/prometheus");
    for args in [&["check", "rules", "flowgate-rules.yml"][..], &["test", "rules", "flowgate-rules.test.yml"]] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool runs (Debian's `prometheus`: scripts/setup.sh installs it)");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
    }
}

#[test]
fn every_metric_the_rules_and_the_dashboard_use_is_documented() {
    let repo = common::repo();
    let documented = std::fs::read_to_string(repo.join("docs/metrics.md")).unwrap();
    let used = regex_lite::Regex::new(r"\b(flowgate_[a-z_]+|process_[a-z_]+)").unwrap();
    for file in ["deploy/prometheus/flowgate-rules.yml", "deploy/grafana/flowgate-dashboard.json"] {
        let text = std::fs::read_to_string(repo.join(file)).unwrap();
        for m in used.find_iter(&text) {
            let name = m.as_str();
            let base = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
            assert!(
                documented.contains(&format!("`{base}`")),
                "{file} uses `{name}`, which docs/metrics.md does not list"
            );
        }
    }
}
