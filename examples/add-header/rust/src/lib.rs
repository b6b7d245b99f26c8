use flowgate_guest::{Outcome, Record, Transform, host};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddHeader {
    name: String,
    value: String,
}

impl Transform for AddHeader {
    fn init(config: &str) -> Result<Self, String> {
        let add: AddHeader = flowgate_guest::config(config)?;
        host::info(&format!("add-header ready: {} = {}", add.name, add.value));
        Ok(add)
    }

    fn on_batch(&mut self, records: usize) {
        host::counter("records", records as u64);
    }

    /// Never parses the value, so it works on any record.
    fn process(&mut self, record: &Record<'_>) -> Outcome {
        let mut out = record.to_owned();
        out.set_header(&self.name, self.value.as_bytes());
        Outcome::one(out)
    }
}

flowgate_guest::export!(AddHeader);
