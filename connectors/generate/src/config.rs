use schemars::JsonSchema;
use serde::Deserialize;

use crate::Template;

/// Produces records from a template, as fast as possible or at a fixed rate.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    /// The record value, with placeholders: `${seq}` (0, 1, 2...), `${uuid}`,
    /// `${now_ms}`, `${rand_int(MIN,MAX)}`, `${rand_float(MIN,MAX)}` (two
    /// decimals), `${rand_str(LEN)}`, `${pick(a,b,c)}`.
    pub template: Template,
    /// The record key, with the same placeholders. No key when omitted.
    #[serde(default)]
    pub key: Option<Template>,
    /// Stop after this many records. Runs until stopped when omitted.
    #[serde(default)]
    pub count: Option<u64>,
    /// Records per second. As fast as the pipeline takes them when omitted.
    #[serde(default)]
    #[schemars(range(min = 0.001))]
    pub rate: Option<f64>,
    /// Seed for the random placeholders, for repeatable data.
    #[serde(default)]
    pub seed: Option<u64>,
}
