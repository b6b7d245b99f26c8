use flowgate_guest::{Outcome, Record, Transform, host};
use serde::Deserialize;
use serde_json::Value;

fn default_field() -> String {
    "items".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Split {
    #[serde(default = "default_field")]
    field: String,
}

impl Transform for Split {
    fn init(config: &str) -> Result<Self, String> {
        let split: Split = flowgate_guest::config(config)?;
        host::info(&format!("split ready: one record per element of `{}`", split.field));
        Ok(split)
    }

    fn on_batch(&mut self, records: usize) {
        host::counter("records", records as u64);
    }

    fn process(&mut self, record: &Record<'_>) -> Outcome {
        let Ok(Value::Object(doc)) = serde_json::from_slice(record.value) else {
            return Outcome::fail("value is not a JSON object");
        };
        let Some(Value::Array(items)) = doc.get(&self.field) else {
            return Outcome::fail(format!("field \"{}\" is not an array", self.field));
        };
        let emitted = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let mut one = doc.clone();
                one.insert(self.field.clone(), item.clone());
                let mut out = record.with_value(serde_json::to_vec(&one).expect("JSON serializes"));
                out.set_header("flowgate.split.index", i.to_string());
                out
            })
            .collect();
        Outcome::Emit(emitted)
    }
}

flowgate_guest::export!(Split);
