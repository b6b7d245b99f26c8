//! Throughput of the Wasm step itself, one core: `wasm_bench PLUGINS_DIR`.
//! Prints markdown table rows; run through scripts/bench.sh (taskset -c 0).
//!
//! The PII mask runs three ways on the same records: compiled natively into this
//! binary (the same source file as the plugin), as the Rust plugin, and as the
//! Python and JavaScript plugins.

#[path = "../../../examples/pii-mask/rust/src/mask.rs"]
mod mask;

use std::path::Path;
use std::time::Instant;

use flowgate_sdk::{Batch, Bytes, HumanDuration, Metadata, Record, Transform};

// The runtime's allocator, so that the native side is measured as it would run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use flowgate_wasm::{WasmConfig, WasmTransform};

fn records(n: usize) -> Vec<Record> {
    let mut rng = 42u64;
    let mut next = || {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        rng >> 33
    };
    (0..n)
        .map(|i| {
            let note: String = (0..72).map(|_| (b'a' + (next() % 26) as u8) as char).collect();
            let value = format!(
                r#"{{"id":{i},"user":"user-{}","email":"someone.{}@example.com","amount":{}.{:02},"currency":"EUR","status":"paid","note":"{note}"}}"#,
                next() % 1_000_000,
                next() % 100_000,
                next() % 10_000,
                next() % 100
            );
            let mut r = Record::from_value(value);
            r.timestamp = Some(1_700_000_000_000 + i as i64);
            r.set_header("trace-id", format!("{:016x}", next()));
            r.set_header("source", "bench");
            r.meta = Metadata::default().with("seq", i as i64);
            r
        })
        .collect()
}

fn batches(records: &[Record], size: usize) -> Vec<Batch> {
    records
        .chunks(size)
        .enumerate()
        .map(|(i, c)| {
            let mut b = Batch::with_capacity(i as u64, c.len());
            b.records.extend_from_slice(c);
            b
        })
        .collect()
}

fn row(case: &str, n: usize, secs: f64, native: Option<f64>) -> f64 {
    let rate = n as f64 / secs;
    let vs = native.map_or(String::new(), |r| format!("{:.2}x", r / rate));
    println!("| {case} | {n} | {secs:.3} | {rate:.0} | {vs} |");
    rate
}

/// Records per second of `plugin` over `n` records in batches of `size`.
fn wasm(plugin: &Path, config: serde_json::Value, n: usize, size: usize, all: &[Record]) -> (usize, f64) {
    let config = WasmConfig {
        path: plugin.to_owned(),
        config,
        timeout: HumanDuration::from_millis(10_000),
        max_memory: flowgate_sdk::ByteSize(256 << 20),
        env: Default::default(),
    };
    let mut t = WasmTransform::new(config, "bench", "transform[0]").expect("plugin loads");
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    // One warm-up batch, outside the measurement.
    rt.block_on(t.apply(&mut batches(&all[..size], size).remove(0))).unwrap();
    let mut work = batches(&all[..n], size);
    let started = Instant::now();
    let mut out = 0;
    for b in &mut work {
        rt.block_on(t.apply(b)).unwrap();
        out += b.records.len();
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(out, n, "every record comes out");
    (n, secs)
}

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: wasm_bench PLUGINS_DIR"));
    let n: usize = std::env::var("WASM_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000_000);
    let slow_n = n / 20;
    let all = records(n);
    let bytes: usize = all.iter().map(Record::size_hint).sum();
    eprintln!("{n} records, {} bytes each on average (value + two headers)", bytes / n);

    println!("| case | records | seconds | records/s | native / this |");
    println!("|---|---:|---:|---:|---:|");
    for size in [256, 1024] {
        let (n, s) = wasm(&dir.join("identity.wasm"), serde_json::json!({}), n, size, &all);
        row(&format!("identity plugin (Rust), batch {size}"), n, s, None);
    }

    let config: mask::Config = serde_json::from_str(r#"{"fields":["email"],"flag":"processed"}"#).unwrap();
    let started = Instant::now();
    let mut out = Vec::with_capacity(n);
    for r in &all {
        let value = mask::mask(&config, &r.value).unwrap();
        out.push(Record { value: Bytes::from(value), ..r.clone() });
    }
    let native =
        row("pii-mask, native (same source, compiled into the host)", n, started.elapsed().as_secs_f64(), None);
    drop(out);

    let cfg = serde_json::json!({"fields": ["email"], "flag": "processed"});
    let (n1, s) = wasm(&dir.join("rust-pii-mask.wasm"), cfg.clone(), n, 1024, &all);
    row("pii-mask, Rust plugin, batch 1024", n1, s, Some(native));
    for lang in ["python", "js"] {
        let (n2, s) = wasm(&dir.join(format!("{lang}-pii-mask.wasm")), cfg.clone(), slow_n, 1024, &all);
        row(&format!("pii-mask, {lang} plugin, batch 1024"), n2, s, Some(native));
    }
}
