//! The masking logic, free of plugin plumbing: the benchmark compiles this same
//! file natively to compare with the plugin.

use serde::Deserialize;
use serde_json::{Map, Value};

fn default_fields() -> Vec<String> {
    vec!["email".into()]
}

fn default_mask() -> String {
    "***".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Top-level fields whose values are replaced.
    #[serde(default = "default_fields")]
    pub fields: Vec<String>,
    /// What they are replaced with.
    #[serde(default = "default_mask")]
    pub mask: String,
    /// A top-level field set to `true` on every record, when given.
    #[serde(default)]
    pub flag: Option<String>,
}

pub fn mask(config: &Config, value: &[u8]) -> Result<Vec<u8>, String> {
    let mut doc: Map<String, Value> = match serde_json::from_slice(value) {
        Ok(Value::Object(doc)) => doc,
        _ => return Err("value is not a JSON object".into()),
    };
    for field in &config.fields {
        if let Some(v) = doc.get_mut(field) {
            *v = Value::String(config.mask.clone());
        }
    }
    if let Some(flag) = &config.flag {
        doc.insert(flag.clone(), Value::Bool(true));
    }
    serde_json::to_vec(&doc).map_err(|e| e.to_string())
}
