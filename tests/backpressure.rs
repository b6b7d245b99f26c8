//! A slow sink keeps memory flat: a generator that could produce a million records
//! a second feeds a sink that takes one batch every 50 ms. The runner's resident
//! memory must stay flat and the records in flight bounded by the batch buffer.
//! Also checks `/metrics`, `/health` and a graceful stop on SIGTERM.

mod common;

use std::time::{Duration, Instant};

use common::pipeline::{Pipeline, sink, source};
use common::{expect_metric, http_get, log, metrics_port, rss_kib, signal, spawn_run, wait_exit, wait_for};
use serde_json::json;

#[test]
fn a_slow_sink_holds_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = Pipeline::new("slow")
        .source(source::generate(r#"{"id":${seq},"pad":"${rand_str(200)}"}"#))
        .sink(sink::null().with("delay", "50ms"))
        .batch(json!({"size": 1000, "buffer": 4}))
        .write(d, "slow.yaml");
    let mut child = spawn_run(d, &file, &["--metrics-addr", "127.0.0.1:0", "--progress", "1s"]);
    let port = metrics_port(d);
    assert!(wait_for(Duration::from_secs(30), || http_get(port, "/health").is_some()), "{}", log(d));

    std::thread::sleep(Duration::from_secs(1));
    let baseline = rss_kib(child.id());
    let mut peak = baseline;
    let mut max_in_flight = 0.0f64;
    let (mut samples, mut written) = (0, 0.0);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        peak = peak.max(rss_kib(child.id()));
        if let Some((200, body)) = http_get(port, "/metrics") {
            let read = expect_metric(&body, "flowgate_records_in_total");
            written = expect_metric(&body, "flowgate_records_out_total");
            max_in_flight = max_in_flight.max(read - written);
            samples += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The bounds below mean something only if the pipeline was measured, and moving.
    assert!(samples >= 30, "only {samples} readings of /metrics");
    assert!(written >= 20_000.0, "the sink wrote only {written} records in 6 s");
    // The process's own figures, as the operating system counts them.
    let (_, body) = http_get(port, "/metrics").unwrap();
    let rss = expect_metric(&body, "process_resident_memory_bytes");
    let now = rss_kib(child.id()) as f64 * 1024.0;
    assert!((rss - now).abs() < 16.0 * 1024.0 * 1024.0, "process_resident_memory_bytes {rss}, ps says {now}");
    assert!(expect_metric(&body, "process_open_fds") >= 3.0);
    assert!(expect_metric(&body, "process_threads") >= 2.0);
    // Counted in whole seconds: present, though this run may not have used one yet.
    expect_metric(&body, "process_cpu_seconds_total");
    let (code, health) = http_get(port, "/health").unwrap();
    assert_eq!(code, 200, "{health}");
    assert!(health.contains(r#""slow":{"state":"running"}"#), "{health}");

    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(20));
    let log = log(d);
    assert!(status.success(), "{log}");
    assert!(log.contains("draining"), "{log}");
    assert!(log.contains("(20.0k/s)") || log.contains("/s)"), "no progress line:\n{log}");

    eprintln!("RSS {baseline} KiB after 1 s, peak {peak} KiB; at most {max_in_flight} records in flight");
    // At 20 batches/s the sink takes 120k records in 6 s; an unbounded source
    // would have produced millions (hundreds of MiB) by then.
    assert!(peak < baseline + 16 * 1024, "memory grew from {baseline} to {peak} KiB");
    assert!(peak < 128 * 1024, "peak RSS {peak} KiB");
    // Queue of 4 batches, one in the sink, one being handed over, counters
    // updated per batch: never more than 7 batches between reading and writing.
    assert!(max_in_flight <= 7000.0, "{max_in_flight} records in flight");
}
