//! Write Flowgate transform plugins in Rust.
//!
//! ```ignore
//! use flowgate_guest::{Outcome, Record, Transform};
//!
//! struct Upper;
//!
//! impl Transform for Upper {
//!     fn init(_config: &str) -> Result<Self, String> {
//!         Ok(Upper)
//!     }
//!
//!     fn process(&mut self, record: &Record<'_>) -> Outcome {
//!         Outcome::Value(record.value.to_ascii_uppercase())
//!     }
//! }
//!
//! flowgate_guest::export!(Upper);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`. The batch format
//! (wit/BATCH-FORMAT.md) stays out of sight: a transform sees one typed record at
//! a time and returns what becomes of it. A panic traps the instance; the host
//! then finds the record that caused it and sends it to the error policy.

use std::any::Any;
use std::cell::RefCell;

#[cfg(all(feature = "talc", target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static TALC: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../transform.wit",
        world: "transform",
        pub_export_macro: true,
        export_macro_name: "__export_transform",
        default_bindings_module: "flowgate_guest::bindings",
    });
}

pub use bindings::flowgate::transform::host::Level;

/// The host's log and counters.
pub mod host {
    use super::Level;
    use super::bindings::flowgate::transform::host as imp;

    /// A line in Flowgate's log under this plugin's name (rate-limited by the host).
    pub fn log(level: Level, message: &str) {
        imp::log(level, message);
    }

    pub fn info(message: &str) {
        imp::log(Level::Info, message);
    }

    pub fn warn(message: &str) {
        imp::log(Level::Warn, message);
    }

    pub fn error(message: &str) {
        imp::log(Level::Error, message);
    }

    /// Adds `delta` to this plugin's counter `name` (a Prometheus metric on the host).
    pub fn counter(name: &str, delta: u64) {
        imp::counter(name, delta);
    }
}

/// Reads the plugin's config (JSON text, `{}` when the pipeline gives none) into
/// `T`. The config must be a JSON object; an error names the offending key.
#[cfg(feature = "serde")]
pub fn config<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let value: serde_json::Value = match text.trim() {
        "" | "null" => serde_json::Value::Object(Default::default()),
        t => serde_json::from_str(t).map_err(|e| format!("invalid config: {e}"))?,
    };
    if !value.is_object() {
        return Err("invalid config: expected a JSON object".into());
    }
    serde_path_to_error::deserialize(value).map_err(|e| match e.path().to_string().as_str() {
        "." => format!("invalid config: {}", e.inner()),
        path => format!("invalid config: `{path}`: {}", e.inner()),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: &'a str,
    pub value: &'a [u8],
}

/// The headers of an input record, read from the batch as they are iterated
/// (no allocation per record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers<'a> {
    count: usize,
    raw: &'a [u8],
}

impl<'a> Headers<'a> {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = Header<'a>> + 'a {
        let mut input = Input { buf: self.raw, pos: 0 };
        (0..self.count).map(move |_| {
            let name = input.str16();
            let n = input.u32();
            Header { name, value: input.take(n) }
        })
    }

    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.iter().find(|h| h.name == name).map(|h| h.value)
    }
}

/// The value of a metadata field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Meta<'a> {
    Int(i64),
    Text(&'a str),
}

impl<'a> Meta<'a> {
    fn read(kind: u8, value: &'a [u8]) -> Self {
        match kind {
            0 => Meta::Int(i64::from_le_bytes(value.try_into().unwrap())),
            _ => Meta::Text(utf8(value)),
        }
    }
}

/// Where an input record came from (read-only): the named fields its source
/// declares (BATCH-FORMAT.md lists them), read from the batch as they are iterated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metadata<'a> {
    count: usize,
    raw: &'a [u8],
}

impl<'a> Metadata<'a> {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'a str, Meta<'a>)> + 'a {
        let mut input = Input { buf: self.raw, pos: 0 };
        (0..self.count).map(move |_| {
            let (name, kind, value) = input.field();
            (utf8(name), Meta::read(kind, value))
        })
    }

    pub fn get(&self, name: &str) -> Option<Meta<'a>> {
        let mut input = Input { buf: self.raw, pos: 0 };
        // Names compare as bytes: only the value found is decoded.
        (0..self.count)
            .map(|_| input.field())
            .find(|f| f.0 == name.as_bytes())
            .map(|(_, kind, value)| Meta::read(kind, value))
    }
}

/// An input record, borrowed from the batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    /// Milliseconds since the Unix epoch.
    pub timestamp: Option<i64>,
    pub headers: Headers<'a>,
    pub metadata: Metadata<'a>,
}

impl Record<'_> {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name)
    }

    /// The metadata field `name` (`path`, `line`, `offset`, `topic`, ...), if the
    /// record's source sets it.
    pub fn meta(&self, name: &str) -> Option<Meta<'_>> {
        self.metadata.get(name)
    }

    /// An owned copy with a new value (key, timestamp and headers copied).
    pub fn with_value(&self, value: impl Into<Vec<u8>>) -> OwnedRecord {
        OwnedRecord {
            key: self.key.map(<[u8]>::to_vec),
            value: value.into(),
            timestamp: self.timestamp,
            headers: self.headers.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect(),
        }
    }

    /// An owned copy to modify and emit.
    pub fn to_owned(&self) -> OwnedRecord {
        OwnedRecord {
            key: self.key.map(<[u8]>::to_vec),
            value: self.value.to_vec(),
            timestamp: self.timestamp,
            headers: self.headers.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect(),
        }
    }
}

/// A record a transform emits. Its source metadata is the input's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnedRecord {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub timestamp: Option<i64>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl OwnedRecord {
    pub fn with_value(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.value = value.into();
        self
    }

    /// Sets a header, replacing one of the same name.
    pub fn set_header(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        let value = value.into();
        match self.headers.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => self.headers.push((name.to_string(), value)),
        }
    }
}

/// What becomes of one input record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The input record, unchanged (the cheapest answer: nothing is copied back).
    Keep,
    /// These records in its place; none drops it. At most 1000: the host fails the
    /// input record past that.
    Emit(Vec<OwnedRecord>),
    /// Refuse it; the reason goes with it to the pipeline's error policy.
    Fail(String),
    /// The input record with this value instead (key, timestamp and headers
    /// unchanged): the cheapest way to rewrite a value.
    Value(Vec<u8>),
}

impl Outcome {
    pub fn one(record: OwnedRecord) -> Self {
        Outcome::Emit(vec![record])
    }

    pub fn drop_record() -> Self {
        Outcome::Emit(Vec::new())
    }

    pub fn fail(reason: impl Into<String>) -> Self {
        Outcome::Fail(reason.into())
    }
}

/// A record transform. One value lives per plugin instance, across batches.
pub trait Transform: Sized + 'static {
    /// Builds the transform from the pipeline's `config` (JSON text; `{}` or
    /// `null` when none is given). An error stops the pipeline at start.
    fn init(config: &str) -> Result<Self, String>;

    fn process(&mut self, record: &Record<'_>) -> Outcome;

    /// Called before each batch with its number of records.
    fn on_batch(&mut self, _records: usize) {}
}

struct Input<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        s
    }

    fn u16(&mut self) -> usize {
        u16::from_le_bytes(self.take(2).try_into().unwrap()) as usize
    }

    fn u32(&mut self) -> usize {
        u32::from_le_bytes(self.take(4).try_into().unwrap()) as usize
    }

    fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.take(8).try_into().unwrap())
    }

    fn str16(&mut self) -> &'a str {
        let n = self.u16();
        utf8(self.take(n))
    }

    /// One metadata field: its name, type and value, undecoded.
    fn field(&mut self) -> (&'a [u8], u8, &'a [u8]) {
        let n = self.take(1)[0] as usize;
        let name = self.take(n);
        let kind = self.take(1)[0];
        let value = match kind {
            0 => self.take(8),
            1 => {
                let n = self.u32();
                self.take(n)
            }
            // Only the type tells a value's length: past an unknown one the batch cannot be read.
            _ => panic!("unknown metadata type {kind}"),
        };
        (name, kind, value)
    }

    fn record(&mut self) -> Record<'a> {
        let flags = self.take(1)[0];
        let key = if flags & 1 != 0 {
            let n = self.u32();
            Some(self.take(n))
        } else {
            None
        };
        let n = self.u32();
        let value = self.take(n);
        let timestamp = if flags & 2 != 0 { Some(self.i64()) } else { None };
        let count = self.u16();
        let start = self.pos;
        for _ in 0..count {
            let n = self.u16();
            self.take(n);
            let n = self.u32();
            self.take(n);
        }
        let headers = Headers { count, raw: &self.buf[start..self.pos] };
        let count = self.take(1)[0] as usize;
        let start = self.pos;
        for _ in 0..count {
            self.field();
        }
        let metadata = Metadata { count, raw: &self.buf[start..self.pos] };
        Record { key, value, timestamp, headers, metadata }
    }
}

fn utf8(b: &[u8]) -> &str {
    // The host writes UTF-8; a broken string is a host bug worth a trap.
    std::str::from_utf8(b).unwrap()
}

fn put32(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_record(out: &mut Vec<u8>, r: &OwnedRecord) {
    out.push(u8::from(r.key.is_some()) | (u8::from(r.timestamp.is_some()) << 1));
    if let Some(k) = &r.key {
        put32(out, k);
    }
    put32(out, &r.value);
    if let Some(t) = r.timestamp {
        out.extend_from_slice(&t.to_le_bytes());
    }
    out.extend_from_slice(&(r.headers.len() as u16).to_le_bytes());
    for (name, value) in &r.headers {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        put32(out, value);
    }
}

/// Runs a transform over one packed batch, returning the packed outcomes.
pub fn process_batch<T: Transform>(t: &mut T, batch: &[u8]) -> Vec<u8> {
    let mut input = Input { buf: batch, pos: 0 };
    let count = input.u32();
    t.on_batch(count);
    // Outcomes are usually about as large as the input: one allocation, no regrowth.
    let mut out = Vec::with_capacity(batch.len() + 64);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for index in 0..count as u32 {
        let record = input.record();
        out.extend_from_slice(&index.to_le_bytes());
        match t.process(&record) {
            Outcome::Keep => out.push(0),
            Outcome::Emit(records) => {
                out.push(1);
                out.extend_from_slice(&(records.len() as u32).to_le_bytes());
                for r in &records {
                    put_record(&mut out, r);
                }
            }
            Outcome::Fail(reason) => {
                out.push(2);
                put32(&mut out, reason.as_bytes());
            }
            Outcome::Value(value) => {
                out.push(3);
                put32(&mut out, &value);
            }
        }
    }
    out
}

#[doc(hidden)]
pub mod __private {
    use super::*;

    thread_local! {
        static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    pub fn init<T: Transform>(config: String) -> Result<(), String> {
        let t = T::init(&config)?;
        STATE.with_borrow_mut(|s| *s = Some(Box::new(t)));
        Ok(())
    }

    pub fn process<T: Transform>(batch: Vec<u8>) -> Vec<u8> {
        STATE.with_borrow_mut(|s| {
            let t = s.as_mut().and_then(|b| b.downcast_mut::<T>()).expect("the host calls init first");
            process_batch(t, &batch)
        })
    }
}

/// Exports a [`Transform`] as the plugin's `transformer`.
#[macro_export]
macro_rules! export {
    ($t:ty) => {
        struct __FlowgateExport;

        impl $crate::bindings::exports::flowgate::transform::transformer::Guest for __FlowgateExport {
            fn init(config: String) -> Result<(), String> {
                $crate::__private::init::<$t>(config)
            }

            fn process(batch: Vec<u8>) -> Vec<u8> {
                $crate::__private::process::<$t>(batch)
            }
        }

        $crate::bindings::__export_transform!(__FlowgateExport with_types_in $crate::bindings);
    };
}
