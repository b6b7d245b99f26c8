//! Reading `kind: {settings}` through the connector registry: the JSON Schema
//! of one role's kinds, and deserializing the kind the file names.

use std::fmt;

use flowgate_sdk::{Configured, Entry};
use schemars::{Schema, SchemaGenerator, json_schema};
use serde::de::{self, DeserializeSeed, EnumAccess, VariantAccess, Visitor};
use serde_json::json;

/// One alternative per kind, each `{kind: settings}`: the shape `schemars`
/// gives an externally tagged enum, which the file checker reads as one.
pub fn schema<T: ?Sized>(generator: &mut SchemaGenerator, doc: &str, entries: &[Entry<T>]) -> Schema {
    let alternatives: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            json!({
                "type": "object",
                "properties": { e.kind: e.schema(generator).to_value() },
                "required": [e.kind],
                "additionalProperties": false,
            })
        })
        .collect();
    let kinds: Vec<String> = entries.iter().map(|e| format!("`{}`", e.kind)).collect();
    json_schema!({
        "description": format!("{doc} One of {}.", kinds.join(", ")),
        "oneOf": alternatives,
    })
}

/// Deserializes the kind named by an enum-shaped value with its entry's type.
pub fn deserialize<'de, D: de::Deserializer<'de>, T: ?Sized>(
    d: D,
    name: &'static str,
    entries: &'static [Entry<T>],
) -> Result<Configured<T>, D::Error> {
    d.deserialize_enum(name, &[], Kinds { entries })
}

struct Kinds<T: ?Sized + 'static> {
    entries: &'static [Entry<T>],
}

impl<'de, T: ?Sized> Visitor<'de> for Kinds<T> {
    type Value = Configured<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("one kind with its settings")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        let (kind, settings): (String, _) = data.variant()?;
        let Some(entry) = self.entries.iter().find(|e| e.kind == kind) else {
            let known: Vec<&'static str> = self.entries.iter().map(|e| e.kind).collect();
            return Err(de::Error::custom(format!("unknown kind `{kind}`, expected one of {}", known.join(", "))));
        };
        settings.newtype_variant_seed(Settings(entry))
    }
}

struct Settings<'a, T: ?Sized>(&'a Entry<T>);

impl<'de, T: ?Sized> DeserializeSeed<'de> for Settings<'_, T> {
    type Value = Configured<T>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let mut d = <dyn flowgate_sdk::erased_serde::Deserializer>::erase(d);
        self.0.parse(&mut d).map_err(de::Error::custom)
    }
}
