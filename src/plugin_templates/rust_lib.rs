//! A Flowgate transform plugin. Build: cargo build --release --target wasm32-wasip2
use flowgate_guest::{Outcome, Record, Transform, host};
use serde_json::Value;

struct Plugin {
    field: String,
}

impl Transform for Plugin {
    /// `config` is the plugin's `config:` from the pipeline file, as JSON.
    fn init(config: &str) -> Result<Self, String> {
        let config: Value = serde_json::from_str(config).map_err(|e| e.to_string())?;
        let field = config.get("field").and_then(Value::as_str).unwrap_or("processed").to_string();
        host::info(&format!("ready: marking records with `{field}`"));
        Ok(Plugin { field })
    }

    /// Return `Outcome::Keep`, `Outcome::Value(new_value)`, `Outcome::one(record)`,
    /// `Outcome::Emit(records)` (none drops it) or `Outcome::fail(reason)`.
    fn process(&mut self, record: &Record<'_>) -> Outcome {
        let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(record.value) else {
            return Outcome::fail("value is not a JSON object");
        };
        doc.insert(self.field.clone(), Value::Bool(true));
        Outcome::Value(serde_json::to_vec(&doc).expect("JSON serializes"))
    }
}

flowgate_guest::export!(Plugin);
