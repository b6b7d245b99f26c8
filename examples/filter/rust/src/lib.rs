use flowgate_guest::{Outcome, Record, Transform, host};
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Op {
    #[default]
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    Exists,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    field: String,
    #[serde(default)]
    op: Op,
    /// `null` is a value to compare with; only a missing key means none.
    #[serde(default, deserialize_with = "present")]
    value: Option<Value>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

struct Filter(Config);

/// JSON equality, with numbers compared by value (`1` equals `1.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

impl Filter {
    fn holds(&self, doc: &Map<String, Value>) -> bool {
        let c = &self.0;
        let Some(actual) = doc.get(&c.field) else { return c.op == Op::Ne };
        let expected = c.value.as_ref().unwrap_or(&Value::Null);
        let order = || actual.as_f64()?.partial_cmp(&expected.as_f64()?);
        use std::cmp::Ordering::*;
        match c.op {
            Op::Eq => same(actual, expected),
            Op::Ne => !same(actual, expected),
            Op::Gt => order() == Some(Greater),
            Op::Gte => matches!(order(), Some(Greater | Equal)),
            Op::Lt => order() == Some(Less),
            Op::Lte => matches!(order(), Some(Less | Equal)),
            Op::Exists => true,
        }
    }
}

impl Transform for Filter {
    fn init(config: &str) -> Result<Self, String> {
        let c: Config = flowgate_guest::config(config)?;
        match (&c.op, &c.value) {
            (Op::Exists, _) => {}
            (_, None) => return Err("invalid config: `value` is required unless `op` is `exists`".into()),
            (Op::Gt | Op::Gte | Op::Lt | Op::Lte, Some(v)) if !v.is_number() => {
                return Err(format!("invalid config: `value` must be a number for `op: {:?}`", c.op).to_lowercase());
            }
            _ => {}
        }
        host::info(&format!("filter ready: {} {:?} {:?}", c.field, c.op, c.value));
        Ok(Filter(c))
    }

    fn on_batch(&mut self, records: usize) {
        host::counter("records", records as u64);
    }

    fn process(&mut self, record: &Record<'_>) -> Outcome {
        match serde_json::from_slice(record.value) {
            Ok(Value::Object(doc)) if self.holds(&doc) => Outcome::Keep,
            Ok(Value::Object(_)) => Outcome::drop_record(),
            _ => Outcome::fail("value is not a JSON object"),
        }
    }
}

flowgate_guest::export!(Filter);
