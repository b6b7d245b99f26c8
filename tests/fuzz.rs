//! Property tests over the decoders that take bytes from outside the process:
//! whatever they are given, they answer with a value or an error, never a
//! panic, and allocate in proportion to their input. Each runs a fixed number
//! of generated cases (CI runs them on every push); `PROPTEST_CASES=100000`
//! runs a longer campaign.

use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() }
}

/// Bytes that are mostly small numbers and short lengths, which is what gets a
/// decoder past its first checks.
fn framed_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop_oneof![any::<u8>(), 0u8..4, Just(0xff), Just(0x80)], 0..256)
}

/// A schema with every kind of Avro type, for the decoder.
const SCHEMA: &str = r#"{"type":"record","name":"R","fields":[
  {"name":"i","type":"int"},{"name":"l","type":"long"},{"name":"s","type":"string"},
  {"name":"b","type":"bytes"},{"name":"f","type":"float"},{"name":"d","type":"double"},
  {"name":"o","type":["null","string"]},{"name":"a","type":{"type":"array","items":"long"}},
  {"name":"m","type":{"type":"map","values":"int"}},
  {"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"]}},
  {"name":"x","type":{"type":"fixed","name":"F","size":4}},
  {"name":"dec","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
  {"name":"t","type":{"type":"long","logicalType":"timestamp-micros"}},
  {"name":"n","type":["null",{"type":"record","name":"N","fields":[{"name":"v","type":"boolean"}]}]}]}"#;

proptest! {
    #![proptest_config(config())]

    #[test]
    fn avro_framed_values_from_the_network(bytes in framed_bytes()) {
        let codec = flowgate_avro::Codec::parse(SCHEMA).unwrap();
        if let Some((_, body)) = flowgate_avro::wire::split(&bytes) {
            let mut out = Vec::new();
            if codec.decode_json(body, &mut out).is_ok() {
                // What decodes is JSON, and encodes back.
                let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
                let mut again = Vec::new();
                prop_assert!(codec.encode_json(&out, &mut again).is_ok(), "{v}");
            }
            prop_assert!(out.len() < 64 * (bytes.len() + 16));
        }
    }

    #[test]
    fn avro_encoding_of_any_json_text(text in "\\PC{0,200}") {
        let codec = flowgate_avro::Codec::parse(SCHEMA).unwrap();
        let _ = codec.encode_json(text.as_bytes(), &mut Vec::new());
    }

    #[test]
    fn plugin_batch_outputs(bytes in framed_bytes(), n in 0usize..4) {
        let inputs: Vec<flowgate_sdk::Record> = (0..n).map(|i| flowgate_sdk::Record::from_value(i.to_string())).collect();
        for contract in [flowgate_wasm::Contract::V0_1, flowgate_wasm::Contract::V0_2] {
            if let Ok(outcomes) = flowgate_wasm::format::decode_outcomes(contract, bytes.clone(), &inputs, 10) {
                prop_assert_eq!(outcomes.len(), n);
            }
        }
    }

    #[test]
    fn pgoutput_messages(kind in prop::sample::select(b"BCIUDTRYOMSEcAprsk".to_vec()), rest in framed_bytes()) {
        let mut bytes = vec![kind];
        bytes.extend(rest);
        for version in [1, 2] {
            let _ = pg_walstream::LogicalReplicationParser::with_protocol_version(version).parse_wal_message(&bytes);
        }
    }

    #[test]
    fn registry_schema_bodies(text in prop_oneof![
        "\\PC{0,120}",
        Just(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#.to_string()),
        "\\{\"type\":\"(record|enum|array|map|fixed)\",\"name\":\"[A-Za-z]{1,3}\",(\"fields\"|\"symbols\"|\"items\"|\"size\"):(\\[\\]|\"int\"|4|\\[\"A\"\\])\\}",
    ]) {
        let limits = flowgate::registry::Limits { max_schema_bytes: 100, max_fields: 3, max_versions: 1 };
        let _ = flowgate::registry::parse_schema(&text, &limits);
    }
}
