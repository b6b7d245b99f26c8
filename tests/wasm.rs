//! WebAssembly plugins end to end: every example in every language, hostile
//! plugins contained, contract violations refused at `validate`, the compile
//! cache, and the `plugin` subcommands.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::pipeline::{Part, Pipeline, sink, source, transform};
use common::{flowgate, log, plugin, records, repo, spawn_run, wait_exit};
use serde_json::{Value, json};

/// Runs `transforms` over `input` lines (as text, so that non-JSON reaches the
/// plugin): (records written, dead-lettered records, log).
fn run_pipeline(input: &str, transforms: Vec<Part>, batch: usize) -> (Vec<Value>, Vec<Value>, String) {
    run_pipeline_with("", input, transforms, batch)
}

/// [`run_pipeline`] with `extra` lines added to the pipeline file.
fn run_pipeline_with(
    extra: &str,
    input: &str,
    transforms: Vec<Part>,
    batch: usize,
) -> (Vec<Value>, Vec<Value>, String) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("in.jsonl"), input).unwrap();
    let pipeline = Pipeline::new("t")
        .source(source::file("in.jsonl").with("format", "text"))
        .transforms(transforms)
        .sink(sink::file("out.jsonl").with("format", "record"))
        .dead_letter(sink::file("dlq.jsonl"))
        .batch(json!({"size": batch}))
        .write(d, "p.yaml");
    let text = std::fs::read_to_string(&pipeline).unwrap() + extra;
    std::fs::write(&pipeline, text).unwrap();
    let mut child = spawn_run(d, &pipeline, &["--progress", "0s"]);
    let status = wait_exit(&mut child, Duration::from_secs(180));
    assert!(status.success(), "{}", log(d));
    (records(&d.join("out.jsonl")), records(&d.join("dlq.jsonl")), log(d))
}

const INPUT: &str = r#"{"id":1,"email":"a@x.io","items":[1,2],"amount":5}
{"id":2,"email":"b@x.io","items":[],"amount":50}
not json
{"id":3,"items":"nope","amount":500}
"#;

fn values(out: &[Value]) -> Vec<Value> {
    out.iter().map(|r| r["value"].clone()).collect()
}

fn reasons(dlq: &[Value]) -> Vec<String> {
    dlq.iter().map(|d| d["reason"].as_str().unwrap().to_string()).collect()
}

fn check_examples(lang: &str) {
    let wasm = |name: &str| transform::wasm(plugin(&format!("{lang}-{name}.wasm")));

    let (out, dlq, log) = run_pipeline(
        INPUT,
        vec![wasm("pii-mask").with("config", json!({"fields": ["email"], "flag": "processed"}))],
        10,
    );
    assert_eq!(
        values(&out),
        [
            json!({"id":1,"email":"***","items":[1,2],"amount":5,"processed":true}),
            json!({"id":2,"email":"***","items":[],"amount":50,"processed":true}),
            json!({"id":3,"items":"nope","amount":500,"processed":true}),
        ],
        "{lang} pii-mask"
    );
    assert_eq!(dlq.len(), 1, "{lang}");
    assert!(reasons(&dlq)[0].contains("not a JSON object"), "{lang}: {dlq:?}");
    assert_eq!(dlq[0]["record"]["value"], "not json");
    assert!(log.contains("pii-mask ready"), "{lang}: the init log line is missing:\n{log}");

    let (out, dlq, _) = run_pipeline(
        INPUT,
        vec![wasm("filter").with("config", json!({"field": "amount", "op": "gt", "value": 10}))],
        10,
    );
    let ids: Vec<&Value> = out.iter().map(|r| &r["value"]["id"]).collect();
    assert_eq!(ids, [2, 3], "{lang} filter");
    // Kept records are the input bytes, untouched.
    assert_eq!(out[0]["value"], json!({"id":2,"email":"b@x.io","items":[],"amount":50}));
    assert_eq!(reasons(&dlq).len(), 1, "{lang}");

    let (out, dlq, _) = run_pipeline(INPUT, vec![wasm("split").with("config", json!({"field": "items"}))], 10);
    assert_eq!(
        values(&out),
        [json!({"id":1,"email":"a@x.io","items":1,"amount":5}), json!({"id":1,"email":"a@x.io","items":2,"amount":5})],
        "{lang} split"
    );
    let idx: Vec<&Value> = out.iter().map(|r| &r["headers"]["flowgate.split.index"]).collect();
    assert_eq!(idx, ["0", "1"], "{lang}");
    let mut why = reasons(&dlq);
    why.sort();
    assert_eq!(why.len(), 2, "{lang}: {why:?}");
    assert!(why.iter().any(|r| r.contains("is not an array")), "{lang}: {why:?}");
    assert!(why.iter().any(|r| r.contains("not a JSON object")), "{lang}: {why:?}");
    // A dead-lettered record keeps where it came from.
    assert!(dlq.iter().all(|d| d["record"]["source"]["path"] == "in.jsonl"));

    let (out, dlq, _) =
        run_pipeline(INPUT, vec![wasm("add-header").with("config", json!({"name": "x-src", "value": "flowgate"}))], 10);
    assert_eq!(out.len(), 4, "{lang} add-header");
    assert!(dlq.is_empty());
    assert!(out.iter().all(|r| r["headers"]["x-src"] == "flowgate"), "{lang}: {out:?}");
    assert_eq!(out[2]["value"], "not json", "add-header never parses values");
}

#[test]
fn rust_examples_transform_records_end_to_end() {
    check_examples("rust");
}

#[test]
fn python_examples_transform_records_end_to_end() {
    check_examples("python");
}

#[test]
fn js_examples_transform_records_end_to_end() {
    check_examples("js");
}

/// An example component as the first release built it, against `flowgate:transform@0.1.0`.
fn first_contract(name: &str) -> PathBuf {
    repo().join("tests/fixtures/0.1/plugins").join(name)
}

/// Dead letters without the time they failed at.
fn dead(dlq: &[Value]) -> Vec<(&Value, &Value)> {
    dlq.iter().map(|d| (&d["reason"], &d["record"])).collect()
}

#[test]
fn plugins_built_against_the_first_contract_keep_working() {
    let pii_mask =
        |path: PathBuf| vec![transform::wasm(path).with("config", json!({"fields": ["email"], "flag": "processed"}))];
    let (out, dlq, _) = run_pipeline(INPUT, pii_mask(first_contract("rust-pii-mask.wasm")), 10);
    assert_eq!(
        values(&out),
        [
            json!({"id":1,"email":"***","items":[1,2],"amount":5,"processed":true}),
            json!({"id":2,"email":"***","items":[],"amount":50,"processed":true}),
            json!({"id":3,"items":"nope","amount":500,"processed":true}),
        ]
    );
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert!(reasons(&dlq)[0].contains("not a JSON object"), "{dlq:?}");
    let (now, now_dlq, _) = run_pipeline(INPUT, pii_mask(plugin("rust-pii-mask.wasm")), 10);
    assert_eq!(out, now, "records differ from the current build's");
    assert_eq!(dead(&dlq), dead(&now_dlq));

    // Emitted records, headers and KEEP, with plugins of both contracts in one pipeline.
    let chain = |split: PathBuf, add_header: PathBuf, filter: PathBuf| {
        let parts = vec![
            transform::wasm(split).with("config", json!({"field": "items"})),
            transform::wasm(add_header).with("config", json!({"name": "x-src", "value": "flowgate"})),
            transform::wasm(filter).with("config", json!({"field": "items", "op": "gt", "value": 1})),
        ];
        run_pipeline(INPUT, parts, 10)
    };
    let (out, dlq, _) =
        chain(first_contract("rust-split.wasm"), plugin("rust-add-header.wasm"), first_contract("rust-filter.wasm"));
    assert_eq!(values(&out), [json!({"id":1,"email":"a@x.io","items":2,"amount":5})]);
    assert_eq!(out[0]["headers"], json!({"flowgate.split.index": "1", "x-src": "flowgate"}));
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    let (now, now_dlq, _) =
        chain(plugin("rust-split.wasm"), first_contract("rust-add-header.wasm"), plugin("rust-filter.wasm"));
    assert_eq!(out, now);
    assert_eq!(dead(&dlq), dead(&now_dlq));
}

#[test]
fn plugins_chain_in_order() {
    let (out, _, _) = run_pipeline(
        INPUT,
        vec![
            transform::wasm(plugin("rust-filter.wasm"))
                .with("config", json!({"field": "amount", "op": "lt", "value": 100})),
            transform::wasm(plugin("python-pii-mask.wasm")),
            transform::wasm(plugin("js-add-header.wasm")).with("config", json!({"name": "h", "value": "v"})),
        ],
        2,
    );
    assert_eq!(
        values(&out),
        [json!({"id":1,"email":"***","items":[1,2],"amount":5}), json!({"id":2,"email":"***","items":[],"amount":50})]
    );
    assert!(out.iter().all(|r| r["headers"]["h"] == "v"));
}

/// 1000 records, one of them poisoned, through the hostile plugin in `mode`,
/// with `extra` settings (limits) beside its `path` and `config`.
fn hostile(mode: &str, extra: Value) -> (Vec<Value>, Vec<Value>, String, Duration) {
    let input: String =
        (0..1000).map(|i| format!("{{\"id\":{i}{}}}\n", if i == 600 { ",\"p\":\"POISON\"" } else { "" })).collect();
    let started = Instant::now();
    let (out, dlq, log) = run_pipeline(
        &input,
        vec![
            transform::wasm(plugin("hostile.wasm"))
                .with("config", json!({"mode": mode, "poison": "POISON"}))
                .extend(extra),
        ],
        256,
    );
    (out, dlq, log, started.elapsed())
}

fn assert_contained(mode: &str, out: &[Value], dlq: &[Value], log: &str, why: &str) {
    assert_eq!(out.len(), 999, "{mode}: every good record is delivered");
    assert!(out.iter().all(|r| r["value"]["id"] != 600));
    assert_eq!(dlq.len(), 1, "{mode}: {dlq:?}");
    assert_eq!(dlq[0]["record"]["value"]["id"], 600);
    let reason = dlq[0]["reason"].as_str().unwrap();
    assert!(reason.contains("plugin hostile") && reason.contains(why), "{mode}: {reason}");
    assert!(log.contains("plugin failed on a record"), "{mode}: {log}");
}

#[test]
fn a_plugin_that_answers_a_record_twice_is_caught_and_the_record_isolated() {
    // Batches of 16: one poisoned record claims its neighbour's index, the other
    // (the last of its batch, if batches fill) an index past the end.
    let bad = [7, 31];
    let input: String =
        (0..50).map(|i| format!("{{\"id\":{i}{}}}\n", if bad.contains(&i) { ",\"p\":\"bad\"" } else { "" })).collect();
    let (out, dlq, _) = run_pipeline(
        &input,
        vec![transform::wasm(plugin("misanswer.wasm")).with("config", json!({"poison": "bad"}))],
        16,
    );
    let ids: Vec<&Value> = out.iter().map(|r| &r["value"]["id"]).collect();
    assert_eq!(ids, (0..50).filter(|i| !bad.contains(i)).collect::<Vec<_>>());
    let mut isolated: Vec<i64> = dlq.iter().map(|d| d["record"]["value"]["id"].as_i64().unwrap()).collect();
    isolated.sort();
    assert_eq!(isolated, bad);
    for reason in reasons(&dlq) {
        assert!(reason.contains("plugin misanswer") && reason.contains("malformed"), "{reason}");
    }
}

#[test]
fn an_infinite_loop_is_cut_off_at_the_timeout() {
    let (out, dlq, log, took) = hostile("loop", json!({"timeout": "50ms"}));
    assert_contained("loop", &out, &dlq, &log, "ran past its timeout of 50ms");
    // Bisecting 256 records around the loop: about log2(256) timeouts, not one per record.
    assert!(took < Duration::from_secs(30), "{took:?}");
}

#[test]
fn a_plugin_asleep_in_a_host_call_is_cut_off_at_its_deadline_and_counted() {
    // The plugin sleeps an hour on the poisoned record (WASI clocks and poll,
    // which the host grants); the epoch deadline interrupts wasm code only.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input: String =
        (0..1000).map(|i| format!("{{\"id\":{i}{}}}\n", if i == 600 { ",\"p\":\"POISON\"" } else { "" })).collect();
    std::fs::write(d.join("in.jsonl"), input).unwrap();
    let pipeline = Pipeline::new("sleepy")
        .source(source::file("in.jsonl").with("format", "text").with("follow", true))
        .transform(
            transform::wasm(plugin("hostile.wasm"))
                .with("config", json!({"mode": "sleep", "poison": "POISON"}))
                .with("timeout", "1s"),
        )
        .sink(sink::file("out.jsonl").with("format", "record"))
        .dead_letter(sink::file("dlq.jsonl"))
        .batch(json!({"size": 256}))
        .write(d, "p.yaml");
    let started = Instant::now();
    let mut run = spawn_run(d, &pipeline, &["--progress", "0s", "--metrics-addr", "127.0.0.1:0"]);
    let port = common::metrics_port(d);
    let done = || common::records_so_far(&d.join("out.jsonl")).len() == 999;
    assert!(common::wait_for(Duration::from_secs(60), done), "{}", log(d));
    // Bisecting up to 256 records around it: at most 9 calls reach the sleep,
    // each ended as it asks to wait past its deadline (an hour each without
    // that; each 1 s if cut at the deadline); 5 s for the run's start.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(9 + 5), "{took:?}");
    let dlq = common::records_so_far(&d.join("dlq.jsonl"));
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let reason = dlq[0]["reason"].as_str().unwrap();
    assert!(reason.contains("plugin hostile") && reason.contains("asked the host to wait"), "{reason}");
    let body = common::http_get(port, "/metrics").unwrap().1;
    let timeouts = body
        .lines()
        .find(|l| l.starts_with("flowgate_plugin_failures_total") && l.contains(r#"kind="timeout""#))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(timeouts.is_some_and(|t| t >= 1.0), "{timeouts:?} {body}");
    common::stop(&mut run.0, d);
    let text = log(d);
    assert!(text.contains("WARN") && text.contains("plugin failed on a record"), "{text}");
}

#[test]
fn four_workers_keep_the_order_count_each_record_once_and_isolate_a_poison_record() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input: String =
        (0..5000).map(|i| format!("{{\"id\":{i}{}}}\n", if i == 2345 { ",\"p\":\"POISON\"" } else { "" })).collect();
    std::fs::write(d.join("in.jsonl"), input).unwrap();
    let pipeline = Pipeline::new("workers")
        .source(source::file("in.jsonl").with("format", "text"))
        .transform(
            transform::wasm(plugin("hostile.wasm")).with("config", json!({"mode": "jitter", "poison": "POISON"})),
        )
        .sink(sink::file("out.jsonl").with("format", "record"))
        .dead_letter(sink::file("dlq.jsonl"))
        .batch(json!({"size": 50}))
        .write(d, "p.yaml");
    let text = std::fs::read_to_string(&pipeline).unwrap() + "workers: 4\n";
    std::fs::write(&pipeline, text).unwrap();
    let mut child = spawn_run(d, &pipeline, &["--progress", "0s"]);
    assert!(wait_exit(&mut child, Duration::from_secs(120)).success(), "{}", log(d));
    let ids: Vec<i64> = records(&d.join("out.jsonl")).iter().map(|r| r["value"]["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, (0..5000).filter(|i| *i != 2345).collect::<Vec<_>>(), "every record once, in order");
    let dlq = records(&d.join("dlq.jsonl"));
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0]["record"]["value"]["id"], 2345);
    let text = log(d);
    assert!(text.contains("in 5000 out 4999") && text.contains("dead-lettered 1"), "{text}");
    // Four instances side by side (more replaced those the poison trapped).
    assert!(text.matches("hostile instance started").count() >= 4, "{text}");
}

#[test]
fn run_starts_each_plugin_once() {
    // One worker: the check's instance is the one that runs.
    let (out, dlq, log) = run_pipeline_with(
        "workers: 1\n",
        "{\"id\":1}\n{\"id\":2}\n",
        vec![transform::wasm(plugin("hostile.wasm")).with("config", json!({"mode": "loop", "poison": "never"}))],
        10,
    );
    assert_eq!((out.len(), dlq.len()), (2, 0));
    assert_eq!(log.matches("hostile instance started").count(), 1, "{log}");
}

#[test]
fn unbounded_memory_growth_is_capped() {
    let (out, dlq, log, _) = hostile("grow", json!({"max_memory": "16MiB"}));
    assert_contained("grow", &out, &dlq, &log, "exceeded its memory limit of 16MiB");
}

#[test]
fn an_answer_past_128_mib_passes_within_max_memory() {
    // wasmtime's own cap on what one call copies out (128 MiB) is raised to
    // `max_memory`: before, this record was refused in wasmtime's words.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("in.jsonl"), "{\"p\":\"POISON\"}\n{\"id\":2}\n").unwrap();
    let config = json!({"mode": "big", "poison": "POISON", "size": "136"});
    let pipeline = Pipeline::new("t")
        .source(source::file("in.jsonl").with("format", "text"))
        .transforms(vec![
            transform::wasm(plugin("hostile.wasm"))
                .with("config", config)
                .with("max_memory", "512MiB")
                .with("timeout", "30s"),
        ])
        .sink(sink::file("out.jsonl"))
        .dead_letter(sink::file("dlq.jsonl"))
        .write(d, "p.yaml");
    let mut child = spawn_run(d, &pipeline, &["--progress", "0s"]);
    assert!(wait_exit(&mut child, Duration::from_secs(120)).success(), "{}", log(d));
    let dead = std::fs::read_to_string(d.join("dlq.jsonl")).unwrap_or_default();
    assert!(dead.is_empty(), "{}", dead.chars().take(500).collect::<String>());
    let out = std::fs::read(d.join("out.jsonl")).unwrap();
    assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 2);
    assert!(out.len() > 136 << 20, "{} bytes out", out.len());
}

#[test]
fn a_panic_on_one_record_fails_only_that_record() {
    let (out, dlq, log, _) = hostile("panic", json!({}));
    assert_contained("panic", &out, &dlq, &log, "trapped");
}

#[test]
fn plugin_output_goes_to_the_log_under_its_name() {
    let (out, _, log, _) = hostile("print", json!({}));
    assert_eq!(out.len(), 1000);
    for line in ["stdout line from the plugin", "stderr line from the plugin", "a host log line"] {
        assert!(log.contains(line), "{line} missing:\n{log}");
    }
    assert!(log.contains("plugin=hostile"), "{log}");
}

/// `flowgate validate` on a pipeline using `path` with `config`: (exit code, stderr).
fn validate(path: &Path, config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(
        &p,
        format!(
            "name: v\nsource: stdin\ntransforms:\n  - wasm:\n      path: {}\n      config: {config}\nsink: stdout\n",
            path.display()
        ),
    )
    .unwrap();
    let out = flowgate().args(["validate", "--message-format", "short"]).arg(&p).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn contract_violations_are_refused_at_validate_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    for (path, config, why) in [
        (plugin("old_contract.wasm"), "{}", "built against flowgate:transform@0.0.1"),
        (
            plugin("forbidden_import.wasm"),
            "{}",
            "imports the interface `evil:plugin/exfil`, which Flowgate does not grant",
        ),
        (core, "{}", "a core WebAssembly module, not a component"),
        (plugin("hostile.wasm"), "{mode: refuse}", "refused its config: this plugin refuses to start"),
        (plugin("rust-filter.wasm"), "{op: gt, value: 1}", "refused its config: invalid config"),
        (dir.path().join("missing.wasm"), "{}", "cannot read plugin"),
    ] {
        let (code, stderr) = validate(&path, config);
        assert_eq!(code, Some(2), "{}: {stderr}", path.display());
        // The problem points at the plugin's `path` (line 5, column 13).
        assert!(stderr.contains("p.yaml:5:13: error:") && stderr.contains(why), "{}: {stderr}", path.display());
    }
    let (code, stderr) = validate(&plugin("rust-pii-mask.wasm"), "{}");
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn the_compiled_plugin_is_cached_for_the_next_start() {
    let cache = tempfile::tempdir().unwrap();
    let path = plugin("python-add-header.wasm");
    let run = || {
        flowgate()
            .env("FLOWGATE_CACHE_DIR", cache.path())
            .args(["plugin", "check"])
            .arg(&path)
            .args(["--config", r#"{"name":"x-seen","value":"yes"}"#])
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stdout));
    assert!(String::from_utf8_lossy(&first.stderr).contains("compiled plugin"));
    let second = run();
    assert!(second.status.success());
    assert!(!String::from_utf8_lossy(&second.stderr).contains("compiled plugin"), "the cache was not used");
    assert_eq!(std::fs::read_dir(cache.path().join("wasm")).unwrap().count(), 1);
}

#[test]
fn plugin_check_says_whether_a_component_fits() {
    let ok = flowgate().args(["plugin", "check"]).arg(plugin("js-split.wasm")).output().unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{stdout}");
    assert!(stdout.contains("exports: flowgate:transform/transformer@0.2.0"), "{stdout}");
    assert!(stdout.contains("ok: fits flowgate:transform@0.2.0"), "{stdout}");
    // The first contract still fits, and is named as what the component was built against.
    let old = flowgate().args(["plugin", "check"]).arg(first_contract("rust-split.wasm")).output().unwrap();
    let stdout = String::from_utf8_lossy(&old.stdout);
    assert!(old.status.success(), "{stdout}");
    assert!(stdout.contains("exports: flowgate:transform/transformer@0.1.0"), "{stdout}");
    assert!(stdout.contains("ok: fits flowgate:transform@0.1.0"), "{stdout}");
    let bad = flowgate().args(["plugin", "check"]).arg(plugin("old_contract.wasm")).output().unwrap();
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stdout.contains("does not fit") && stdout.contains("flowgate:transform@0.0.1"), "{stdout}");
}

#[test]
fn plugin_check_runs_the_plugin_and_finds_each_malformed_answer_at_its_byte() {
    let check = |wasm: &str, args: &[&str]| {
        let out = flowgate().args(["plugin", "check"]).arg(plugin(wasm)).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // Six sample records; each outcome is its index (4 bytes) and a tag, after the count.
    for (mode, problem) in [
        ("truncated", "the output ends early: 100 bytes expected at byte 18"),
        ("bad-tag", "unknown outcome tag 7 at byte 8 (outcome 0); expected 0 keep, 1 emit, 2 fail or 3 value"),
        ("wrong-count", "the output ends early: 4 bytes expected at byte 29, 0 bytes left"),
        ("leftover", "4 bytes left after the last outcome, from byte 34"),
    ] {
        let (code, stdout) = check("malformed.wasm", &["--config", &format!(r#"{{"mode":"{mode}"}}"#)]);
        assert_eq!(code, Some(1), "{mode}: {stdout}");
        assert!(stdout.contains("ok: fits flowgate:transform@0.2.0"), "{mode}: the types fit: {stdout}");
        assert!(stdout.contains("does not work: process on the sample batch (6 records)"), "{mode}: {stdout}");
        assert!(stdout.contains(problem), "{mode}: {stdout}");
    }
    let (code, stdout) = check("rust-pii-mask.wasm", &["--config", r#"{"fields":["email"]}"#]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("ok: init and process ran on the sample batch (6 records)"), "{stdout}");
    // Records of one's own, one per line.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("mine.jsonl");
    std::fs::write(&input, "{\"email\":\"a@b.c\"}\nnot json\n").unwrap();
    let (code, stdout) =
        check("rust-pii-mask.wasm", &["--config", r#"{"fields":["email"]}"#, "--input", input.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("(2 records)") && stdout.contains("1 refused"), "{stdout}");
    // A plugin refusing its config is found too.
    let (code, stdout) = check("hostile.wasm", &["--config", r#"{"mode":"refuse"}"#]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("does not work") && stdout.contains("refuses to start"), "{stdout}");
}

/// `plugin new` for `lang`, built with `build` (a command run in the project), then
/// checked and run.
fn scaffold(lang: &str, build: &[&str], wasm: &str) {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("my-plugin");
    let out = flowgate().args(["plugin", "new", "--lang", lang, "my-plugin", "--dir"]).arg(&project).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tools = std::env::var("FLOWGATE_TOOLS")
        .unwrap_or_else(|_| format!("{}/.cache/flowgate-tools", std::env::var("HOME").unwrap()));
    let path = format!("{tools}/venv/bin:{tools}/node/node_modules/.bin:{}", std::env::var("PATH").unwrap());
    // The project's own target directory, as a user building it would have.
    let built = std::process::Command::new(build[0])
        .args(&build[1..])
        .current_dir(&project)
        .env("PATH", path)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{lang} build failed:\n{}\n{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    let check = flowgate().args(["plugin", "check"]).arg(project.join(wasm)).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    let run = flowgate()
        .args(["run", "--progress", "0s", "--state-dir"])
        .arg(dir.path())
        .arg("pipeline.yaml")
        .current_dir(&project)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(stdout.lines().filter(|l| l.contains("\"processed\":true")).count(), 10, "{stdout}");
}

#[test]
fn plugin_new_c_builds_as_is() {
    scaffold("c", &["bash", "build.sh"], "my-plugin.wasm");
}

#[test]
fn a_plugin_in_c_without_a_helper_sets_a_header_end_to_end() {
    // examples/add-header/c: clang, wasi-libc, `wit-bindgen c`, wasm-tools.
    let wasm = |name: &str| transform::wasm(plugin(&format!("c-{name}.wasm")));
    let (out, dlq, log) =
        run_pipeline(INPUT, vec![wasm("add-header").with("config", json!({"name": "x-src", "value": "flowgate"}))], 10);
    assert_eq!(out.len(), 4, "{log}");
    assert!(dlq.is_empty(), "{dlq:?}");
    assert!(out.iter().all(|r| r["headers"]["x-src"] == "flowgate"), "{out:?}");
    assert_eq!(out[2]["value"], "not json", "add-header never parses values");
    assert_eq!(out[0]["value"], json!({"id":1,"email":"a@x.io","items":[1,2],"amount":5}), "the value is kept");
    assert!(log.contains("add-header ready: x-src = flowgate"), "{log}");
    // It runs on every field a record can have, and refuses a config without its keys.
    let check = |config: &str| {
        let out = flowgate()
            .args(["plugin", "check"])
            .arg(plugin("c-add-header.wasm"))
            .args(["--config", config])
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, stdout) = check(r#"{"name":"x","value":"y"}"#);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("6 emitted 6 records"), "{stdout}");
    let (code, stdout) = check("{}");
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("config key \"name\" is required"), "{stdout}");
}

#[test]
fn plugin_new_rust_builds_as_is() {
    scaffold(
        "rust",
        &["cargo", "build", "--quiet", "--release", "--target", "wasm32-wasip2"],
        "target/wasm32-wasip2/release/my_plugin.wasm",
    );
}

#[test]
fn plugin_new_python_builds_as_is() {
    scaffold("python", &["bash", "build.sh"], "my-plugin.wasm");
}

#[test]
fn plugin_new_js_builds_as_is() {
    scaffold("js", &["node", "build.mjs"], "my-plugin.wasm");
}
