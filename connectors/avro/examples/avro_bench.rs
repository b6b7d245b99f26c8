//! Validate + encode to Confluent-framed Avro on one thread: `avro_bench N OUT.jsonl`.
//! Writes the N generated records to OUT.jsonl and the schema to OUT.avsc (the
//! Python peer encodes the same ones) and prints a Markdown table of records per second.

use std::io::Write as _;
use std::time::Instant;

use flowgate_avro::{Codec, wire};
use serde_json::Value;

// The allocator of the `flowgate` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub const SCHEMA: &str = r#"{
  "type": "record", "name": "Order", "namespace": "bench",
  "fields": [
    {"name": "id", "type": "long"},
    {"name": "customer", "type": "string"},
    {"name": "email", "type": "string"},
    {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
    {"name": "currency", "type": {"type": "enum", "name": "Currency", "symbols": ["EUR", "USD", "GBP"]}},
    {"name": "quantity", "type": "int"},
    {"name": "price", "type": "double"},
    {"name": "created", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "shipped", "type": "boolean"},
    {"name": "note", "type": ["null", "string"], "default": null}
  ]
}"#;

fn record(i: u64) -> String {
    let currency = ["EUR", "USD", "GBP"][(i % 3) as usize];
    let note = if i.is_multiple_of(4) { "\"gift wrap\"".to_string() } else { "null".to_string() };
    format!(
        r#"{{"id":{i},"customer":"c-{}","email":"user{i}@example.com","amount":"{}.{:02}","currency":"{currency}","quantity":{},"price":{}.25,"created":"2024-05-01T12:{:02}:{:02}.{:06}Z","shipped":{},"note":{note}}}"#,
        i % 5000,
        i % 1000,
        i % 100,
        i % 7 + 1,
        i % 500,
        (i / 60) % 60,
        i % 60,
        i % 1_000_000,
        i.is_multiple_of(2)
    )
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().map_or(1_000_000, |s| s.parse().expect("a count"));
    let out = args.next().unwrap_or_else(|| "avro-bench-records.jsonl".into());
    let lines: Vec<Vec<u8>> = (0..n).map(|i| record(i).into_bytes()).collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(&out).unwrap());
    for l in &lines {
        f.write_all(l).unwrap();
        f.write_all(b"\n").unwrap();
    }
    f.flush().unwrap();
    std::fs::write(out.replace(".jsonl", ".avsc"), SCHEMA).unwrap();
    let codec = Codec::parse(SCHEMA).unwrap();
    let avg = lines.iter().map(Vec::len).sum::<usize>() as f64 / n as f64;
    println!("| case | records | seconds | records/s |");
    println!("|---|---:|---:|---:|");
    let report = |name: &str, secs: f64| println!("| {name} | {n} | {secs:.3} | {:.0} |", n as f64 / secs);

    // The pipeline's work: JSON bytes in, framed Avro bytes out.
    let mut buf = Vec::with_capacity(256);
    let mut total = 0usize;
    let t = Instant::now();
    for l in &lines {
        let v: Value = serde_json::from_slice(l).unwrap();
        wire::start(&mut buf, 1);
        codec.encode_value(&v, &mut buf).unwrap();
        total += buf.len();
    }
    report(&format!("flowgate: JSON text ({avg:.0} B) -> JSON tree -> framed Avro"), t.elapsed().as_secs_f64());

    // The JSON parser driving the encoder: no JSON tree (what the pipeline runs).
    let t = Instant::now();
    for l in &lines {
        wire::start(&mut buf, 1);
        codec.encode_json(l, &mut buf).unwrap();
    }
    report(&format!("flowgate: JSON text ({avg:.0} B) streamed to framed Avro"), t.elapsed().as_secs_f64());

    // Already parsed: the codec alone.
    let parsed: Vec<Value> = lines.iter().map(|l| serde_json::from_slice(l).unwrap()).collect();
    let t = Instant::now();
    for v in &parsed {
        wire::start(&mut buf, 1);
        codec.encode_value(v, &mut buf).unwrap();
    }
    report("flowgate: validate + encode + frame (parsed JSON)", t.elapsed().as_secs_f64());

    // The same through apache-avro's own Value tree, validated (what
    // schema_registry_converter's encoder does per record), from values prepared
    // up front, with one writer for all (the crate builds one per call).
    let schema = codec.schema().clone();
    let values: Vec<apache_avro::types::Value> = parsed
        .iter()
        .map(|v| {
            let bytes = {
                let mut b = Vec::new();
                codec.encode_value(v, &mut b).unwrap();
                b
            };
            let reader = apache_avro::reader::datum::GenericDatumReader::builder(&schema).build().unwrap();
            reader.read_value(&mut &bytes[..]).unwrap()
        })
        .collect();
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema).build().unwrap();
    let t = Instant::now();
    for v in &values {
        let body = writer.write_value_to_vec(v.clone()).unwrap();
        wire::start(&mut buf, 1);
        buf.extend_from_slice(&body);
    }
    report("apache-avro: GenericDatumWriter (validates) + frame, from its Value", t.elapsed().as_secs_f64());
    // The Kafka source's work with `format: avro`: framed Avro in, JSON text out.
    let framed: Vec<Vec<u8>> = lines
        .iter()
        .map(|l| {
            let mut b = Vec::new();
            wire::start(&mut b, 1);
            codec.encode_json(l, &mut b).unwrap();
            b
        })
        .collect();
    let t = Instant::now();
    for b in &framed {
        let (_, body) = wire::split(b).unwrap();
        buf.clear();
        codec.decode_json(body, &mut buf).unwrap();
    }
    report("flowgate: framed Avro -> JSON text (the Kafka source's decode)", t.elapsed().as_secs_f64());
    eprintln!("{} bytes framed per record on average", total / n as usize);
}
