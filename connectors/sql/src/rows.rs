//! Field order of JSON records (a parsed `Map` sorts its keys).

use serde::Deserializer as _;
use serde::de::{IgnoredAny, MapAccess, Visitor};

/// The top-level field names of a JSON object, in the order they are written
/// (a parsed `Map` would sort them).
pub(crate) fn field_names(value: &[u8]) -> Vec<String> {
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
            let mut keys = Vec::new();
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                // A repeated key is one column (the parsed value keeps the last).
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
            Ok(keys)
        }
    }
    serde_json::Deserializer::from_slice(value).deserialize_map(Keys).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_written_order() {
        assert_eq!(field_names(br#"{"z":1,"a":{"n":2},"m":[3]}"#), ["z", "a", "m"]);
        assert_eq!(field_names(br#"{"a":1,"a":2,"b":3}"#), ["a", "b"]);
        assert!(field_names(b"[1]").is_empty());
    }
}
