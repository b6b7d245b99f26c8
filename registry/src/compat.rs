//! Whether a reader schema can read data written with a writer schema, as
//! apache-avro's `SchemaCompatibility::can_read` decides it, in time linear in
//! the schemas' size: apache-avro finds each reader field by a scan of the
//! writer's fields (quadratic: 50k fields took 4 s), and describes a type
//! mismatch by pretty-printing both whole schemas. Leaf types (primitives,
//! logical types, fixed, references) are still judged by apache-avro.

use std::collections::{HashMap, HashSet};

use apache_avro::Schema;
use apache_avro::error::CompatibilityError;
use apache_avro::schema::{ArraySchema, EnumSchema, MapSchema, RecordSchema};
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};

pub fn can_read(writer: &Schema, reader: &Schema) -> Result<Compatibility, CompatibilityError> {
    if let (Some(w), Some(r)) = (writer.name(), reader.name())
        && w.name() != r.name()
    {
        return Err(CompatibilityError::NameMismatch { writer_name: w.name().into(), reader_name: r.name().into() });
    }
    match (writer, reader) {
        (Schema::Union(w), Schema::Union(r)) => {
            let (mut any, mut all) = (false, true);
            for w in w.variants() {
                let mut local_any = false;
                all &= r.variants().iter().any(|r| match can_read(w, r) {
                    Ok(Compatibility::Full) => {
                        local_any = true;
                        true
                    }
                    Ok(Compatibility::Partial) => {
                        local_any = true;
                        false
                    }
                    Err(_) => false,
                });
                any |= local_any;
            }
            if all {
                Ok(Compatibility::Full)
            } else if any {
                Ok(Compatibility::Partial)
            } else {
                Err(CompatibilityError::MissingUnionElements)
            }
        }
        (Schema::Union(w), _) => {
            let (mut any, mut all) = (false, true);
            for w in w.variants() {
                match can_read(w, reader) {
                    Ok(Compatibility::Full) => any = true,
                    Ok(Compatibility::Partial) => (any, all) = (true, false),
                    Err(_) => all = false,
                }
            }
            if all {
                Ok(Compatibility::Full)
            } else if any {
                Ok(Compatibility::Partial)
            } else {
                Err(CompatibilityError::SchemaMismatchAllUnionElements)
            }
        }
        (_, Schema::Union(r)) => {
            let mut partial = false;
            let full = r.variants().iter().any(|r| match can_read(writer, r) {
                Ok(Compatibility::Full) => true,
                Ok(Compatibility::Partial) => {
                    partial = true;
                    false
                }
                Err(_) => false,
            });
            if full {
                Ok(Compatibility::Full)
            } else if partial {
                Ok(Compatibility::Partial)
            } else {
                Err(CompatibilityError::SchemaMismatchAllUnionElements)
            }
        }
        (Schema::Array(ArraySchema { items: w, .. }), Schema::Array(ArraySchema { items: r, .. })) => can_read(w, r),
        (Schema::Map(MapSchema { types: w, .. }), Schema::Map(MapSchema { types: r, .. })) => can_read(w, r),
        (Schema::Enum(EnumSchema { symbols: w, .. }), Schema::Enum(EnumSchema { symbols: r, default, .. })) => {
            if default.is_some() {
                return Ok(Compatibility::Full);
            }
            let readable: HashSet<&str> = r.iter().map(String::as_str).collect();
            let found = w.iter().filter(|s| readable.contains(s.as_str())).count();
            if found == w.len() {
                Ok(Compatibility::Full)
            } else if found > 0 {
                Ok(Compatibility::Partial)
            } else {
                Err(CompatibilityError::MissingSymbols)
            }
        }
        (Schema::Record(RecordSchema { fields: w, .. }), Schema::Record(RecordSchema { fields: r, .. })) => {
            // By the writer's field names only: a writer's aliases never match.
            let by_name: HashMap<&str, &apache_avro::schema::RecordField> =
                w.iter().map(|f| (f.name.as_str(), f)).collect();
            let mut compatibility = Compatibility::Full;
            for field in r {
                let found = std::iter::once(&field.name)
                    .chain(field.aliases.iter())
                    .find_map(|name| by_name.get(name.as_str()));
                match found {
                    Some(w) => match can_read(&w.schema, &field.schema) {
                        Ok(c) => compatibility &= c,
                        Err(e) => return Err(CompatibilityError::FieldTypeMismatch(field.name.clone(), Box::new(e))),
                    },
                    None if field.default.is_none() => {
                        return Err(CompatibilityError::MissingDefaultValue(field.name.clone()));
                    }
                    None => {}
                }
            }
            Ok(compatibility)
        }
        (w, r) if !is_composite(w) && !is_composite(r) => SchemaCompatibility::can_read(w, r),
        (w, r) => Err(CompatibilityError::WrongType { writer_schema_type: kind(w), reader_schema_type: kind(r) }),
    }
}

fn is_composite(s: &Schema) -> bool {
    matches!(s, Schema::Record(_) | Schema::Enum(_) | Schema::Array(_) | Schema::Map(_) | Schema::Union(_))
}

/// A schema's kind, for messages that must not print a whole schema.
fn kind(s: &Schema) -> String {
    match s {
        Schema::Record(r) => format!("record {}", r.name.fullname(None)),
        Schema::Enum(e) => format!("enum {}", e.name.fullname(None)),
        Schema::Array(_) => "array".into(),
        Schema::Map(_) => "map".into(),
        Schema::Union(_) => "union".into(),
        Schema::Ref { name } => format!("reference to {}", name.fullname(None)),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Schema {
        Schema::parse_str(s).unwrap()
    }

    /// The same verdicts as apache-avro on the cases it is exercised with.
    #[test]
    fn agrees_with_apache_avro() {
        let schemas = [
            r#""int""#,
            r#""long""#,
            r#""string""#,
            r#""bytes""#,
            r#"["null","int"]"#,
            r#"["null","string","long"]"#,
            r#"{"type":"array","items":"int"}"#,
            r#"{"type":"array","items":"long"}"#,
            r#"{"type":"map","values":"string"}"#,
            r#"{"type":"enum","name":"E","symbols":["A","B"]}"#,
            r#"{"type":"enum","name":"E","symbols":["A"]}"#,
            r#"{"type":"enum","name":"E","symbols":["C"],"default":"C"}"#,
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#,
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"b","type":"string","default":"x"}]}"#,
            r#"{"type":"record","name":"R","fields":[{"name":"c","aliases":["a"],"type":"int"}]}"#,
            r#"{"type":"record","name":"R","fields":[{"name":"b","type":"string"}]}"#,
            r#"{"type":"record","name":"S","fields":[]}"#,
            r#"{"type":"record","name":"N","fields":[{"name":"next","type":["null","N"]}]}"#,
            r#"{"type":"fixed","name":"F","size":4}"#,
            r#"{"type":"bytes","logicalType":"decimal","precision":5,"scale":2}"#,
        ];
        let schemas: Vec<Schema> = schemas.iter().map(|s| parse(s)).collect();
        for w in &schemas {
            for r in &schemas {
                let ours = can_read(w, r).map_err(|e| std::mem::discriminant(&e));
                let theirs = SchemaCompatibility::can_read(w, r).map_err(|e| std::mem::discriminant(&e));
                assert_eq!(ours, theirs, "writer {w:?} reader {r:?}");
            }
        }
    }

    #[test]
    fn fifty_thousand_fields() {
        let fields: Vec<String> = (0..50_000).map(|i| format!(r#"{{"name":"f{i}","type":"long"}}"#)).collect();
        let s = parse(&format!(r#"{{"type":"record","name":"R","fields":[{}]}}"#, fields.join(",")));
        // apache-avro takes seconds here (docs/benchmarks.md has both).
        assert_eq!(can_read(&s, &s).unwrap(), Compatibility::Full);
    }
}
