use apache_avro::types::Value as AvroValue;
use serde_json::json;

use super::binary::write_long;
use super::decimal::decimal_string;
use super::*;

const ORDER: &str = r#"{
  "type": "record", "name": "Order", "namespace": "shop",
  "fields": [
    {"name": "id", "type": "long"},
    {"name": "customer", "type": "string"},
    {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID", "SHIPPED"]}},
    {"name": "total", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
    {"name": "placed", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "day", "type": {"type": "int", "logicalType": "date"}},
    {"name": "ref", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "note", "type": ["null", "string"], "default": null},
    {"name": "channel", "type": "string", "default": "web"},
    {"name": "items", "type": {"type": "array", "items": {
      "type": "record", "name": "Item",
      "fields": [
        {"name": "sku", "type": "string"},
        {"name": "qty", "type": "int"},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}}
      ]}}}
  ]
}"#;

fn order() -> Value {
    json!({
        "id": 7, "customer": "c-1", "status": "PAID", "total": "19.98",
        "placed": "2024-05-01T12:00:00.5Z", "day": "1969-07-20",
        "ref": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "note": "gift",
        "items": [
            {"sku": "a", "qty": 1, "price": "9.99"},
            {"sku": "b", "qty": 1, "price": "9.99"},
            {"sku": "c", "qty": 2, "price": "0.00"}
        ]
    })
}

/// Encodes with the tree encoder, and checks that the streaming one (from the
/// JSON text) gives the same bytes or the same reason.
fn encode(codec: &Codec, v: &Value) -> Result<Vec<u8>, Mismatch> {
    let mut out = Vec::new();
    let tree = codec.encode_value(v, &mut out).map(|()| out);
    let mut streamed = Vec::new();
    let text = serde_json::to_vec(v).unwrap();
    match (&tree, codec.encode_json(&text, &mut streamed)) {
        (Ok(bytes), Ok(())) => assert_eq!(bytes, &streamed, "streamed bytes differ for {v}"),
        (Err(m), Err(reason)) => assert_eq!(m.to_string(), reason, "streamed reason differs for {v}"),
        (tree, streamed) => panic!("tree {tree:?} but streamed {streamed:?} for {v}"),
    }
    tree
}

fn reason(schema: &str, v: Value) -> String {
    let codec = Codec::parse(schema).unwrap();
    encode(&codec, &v).unwrap_err().to_string()
}

#[test]
fn streaming_takes_fields_in_any_order_and_refuses_bad_json() {
    let codec = Codec::parse(ORDER).unwrap();
    let v = order();
    let mut keys: Vec<(&String, &Value)> = v.as_object().unwrap().iter().collect();
    keys.reverse();
    let reversed = format!(
        "{{{}}}",
        keys.iter().map(|(k, v)| format!("{}:{v}", Value::String((*k).clone()))).collect::<Vec<_>>().join(",")
    );
    let (mut a, mut b) = (Vec::new(), Vec::new());
    codec.encode_value(&v, &mut a).unwrap();
    codec.encode_json(reversed.as_bytes(), &mut b).unwrap();
    assert_eq!(a, b);
    let dup = r#"{"id": 1, "id": 2}"#;
    assert_eq!(codec.encode_json(dup.as_bytes(), &mut b).unwrap_err(), "$.id: appears twice");
    let e = codec.encode_json(b"{\"id\": ", &mut b).unwrap_err();
    assert!(e.starts_with("the value is not JSON: "), "{e}");
    let e = codec.encode_json(format!("{v} trailing").as_bytes(), &mut b).unwrap_err();
    assert!(e.starts_with("the value is not JSON: "), "{e}");
}

/// What apache-avro, an independent reader, makes of our bytes.
fn read_back(codec: &Codec, bytes: &[u8]) -> AvroValue {
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(codec.schema()).build().unwrap();
    reader.read_value(&mut &bytes[..]).unwrap()
}

#[test]
fn encodes_what_apache_avro_reads() {
    let codec = Codec::parse(ORDER).unwrap();
    let bytes = encode(&codec, &order()).unwrap();
    let AvroValue::Record(fields) = read_back(&codec, &bytes) else { panic!("a record") };
    let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(get("id"), AvroValue::Long(7));
    assert_eq!(get("status"), AvroValue::Enum(1, "PAID".into()));
    assert_eq!(get("total"), AvroValue::Decimal(apache_avro::Decimal::from(1998i32.to_be_bytes().to_vec())));
    assert_eq!(get("placed"), AvroValue::TimestampMicros(1_714_564_800_500_000));
    assert_eq!(get("day"), AvroValue::Date(-165));
    assert_eq!(get("note"), AvroValue::Union(1, Box::new(AvroValue::String("gift".into()))));
    assert_eq!(get("channel"), AvroValue::String("web".into()), "the default fills a missing field");
    let AvroValue::Array(items) = get("items") else { panic!("an array") };
    assert_eq!(items.len(), 3);
}

#[test]
fn decodes_to_json_text_in_the_schemas_order() {
    let codec = Codec::parse(
        r#"{"type": "record", "name": "t", "fields": [
            {"name": "z", "type": "string"}, {"name": "a", "type": {"type": "map", "values": "float"}},
            {"name": "m", "type": ["null", "double"]}, {"name": "j", "type": "string", "flowgate.json": true},
            {"name": "e", "type": {"type": "array", "items": "long"}}]}"#,
    )
    .unwrap();
    let v = json!({"a": {"x": "NaN", "y": 0.1}, "z": "q\"\n\u{e9}", "m": "-Infinity", "j": {"k": [1, 2]}, "e": []});
    let mut text = Vec::new();
    codec.decode_json(&encode(&codec, &v).unwrap(), &mut text).unwrap();
    assert_eq!(
        String::from_utf8(text).unwrap(),
        r#"{"z":"q\"\né","a":{"x":"NaN","y":0.1},"m":"-Infinity","j":{"k":[1,2]},"e":[]}"#
    );
}

#[test]
fn decodes_back_to_the_same_json() {
    let codec = Codec::parse(ORDER).unwrap();
    let mut expected = order();
    let bytes = encode(&codec, &expected).unwrap();
    expected["channel"] = json!("web");
    assert_eq!(codec.decode(&bytes).unwrap(), expected);
}

#[test]
fn each_kind_of_mismatch_names_its_path() {
    let mut v = order();
    v["items"][2]["price"] = json!("abc");
    assert_eq!(reason(ORDER, v), r#"$.items[2].price: expected decimal(10,2), got "abc""#);

    let mut v = order();
    v["items"][0]["price"] = json!("1.234");
    assert_eq!(reason(ORDER, v), r#"$.items[0].price: expected decimal(10,2), got "1.234" (too many decimal places)"#);

    let mut v = order();
    v["total"] = json!("123456789.00");
    assert_eq!(reason(ORDER, v), r#"$.total: expected decimal(10,2), got "123456789.00" (more than 10 digits)"#);

    let mut v = order();
    v["status"] = json!("LOST");
    assert_eq!(reason(ORDER, v), r#"$.status: expected enum `shop.Status` (NEW, PAID, SHIPPED), got "LOST""#);

    let mut v = order();
    v["id"] = json!("7");
    assert_eq!(reason(ORDER, v), r#"$.id: expected long, got "7""#);

    let mut v = order();
    v.as_object_mut().unwrap().remove("customer");
    assert_eq!(reason(ORDER, v), "$.customer: missing; expected string (the field has no default)");

    let mut v = order();
    v["colour"] = json!("red");
    assert_eq!(reason(ORDER, v), "$.colour: not a field of record `shop.Order`");

    let mut v = order();
    v["note"] = json!(5);
    assert_eq!(reason(ORDER, v), "$.note: expected string, got 5");

    let mut v = order();
    v["placed"] = json!("yesterday");
    assert_eq!(reason(ORDER, v), r#"$.placed: expected timestamp-micros (ISO 8601), got "yesterday""#);

    let mut v = order();
    v["day"] = json!("2024-02-30");
    assert_eq!(reason(ORDER, v), r#"$.day: expected date (YYYY-MM-DD), got "2024-02-30""#);

    let mut v = order();
    v["ref"] = json!("not-a-uuid");
    assert_eq!(reason(ORDER, v), r#"$.ref: expected uuid, got "not-a-uuid""#);

    let mut v = order();
    v["items"] = json!({"sku": "a"});
    assert!(reason(ORDER, v).starts_with("$.items: expected array of record `shop.Item`, got an object"));

    assert_eq!(reason(r#""int""#, json!(3_000_000_000i64)), "$: expected int, got 3000000000 (out of range)");
    let fixed = r#"{"type": "fixed", "name": "Md5", "size": 16}"#;
    assert_eq!(reason(fixed, json!("AAEC")), "$: expected fixed `Md5` of 16 bytes (base64), got 3 bytes");
    let map = r#"{"type": "map", "values": "long"}"#;
    assert_eq!(reason(map, json!({"a b": 1.5})), r#"$["a b"]: expected long, got 1.5"#);
    let union = r#"["null", "long", "boolean"]"#;
    assert_eq!(reason(union, json!("x")), r#"$: expected one of [null, long, boolean], got "x""#);
}

#[test]
fn unions_pick_the_branch_that_fits() {
    let codec = Codec::parse(r#"["null", "long", "string", {"type": "array", "items": "int"}]"#).unwrap();
    for v in [json!(null), json!(5), json!("x"), json!([1, 2])] {
        let bytes = encode(&codec, &v).unwrap();
        assert_eq!(codec.decode(&bytes).unwrap(), v);
    }
    assert_eq!(encode(&codec, &json!(5)).unwrap(), vec![2, 10]);
}

#[test]
fn decimals_keep_scale_sign_and_size() {
    for (schema, cases) in [
        (
            r#"{"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 4}"#,
            vec![
                ("0", "0.0000"),
                ("-0.0001", "-0.0001"),
                ("1.5", "1.5000"),
                ("-128", "-128.0000"),
                ("1.25e2", "125.0000"),
                ("9999999999999999999999999999999999.9999", "9999999999999999999999999999999999.9999"),
            ],
        ),
        (
            r#"{"type": "fixed", "name": "D", "size": 8, "logicalType": "decimal", "precision": 12, "scale": 2}"#,
            vec![("-0.01", "-0.01"), ("255", "255.00"), ("12.3", "12.30")],
        ),
    ] {
        let codec = Codec::parse(schema).unwrap();
        for (input, output) in cases {
            let bytes = encode(&codec, &json!(input)).unwrap();
            assert_eq!(codec.decode(&bytes).unwrap(), json!(output), "{input}");
            let AvroValue::Decimal(d) = read_back(&codec, &bytes) else { panic!("a decimal") };
            let unscaled: Vec<u8> = d.try_into().unwrap();
            assert_eq!(decimal_string(&unscaled, codec_scale(schema)), output, "apache-avro reads {input}");
        }
    }
    // A whole number is accepted too; one with a fraction went through a double.
    let dec = r#"{"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 2}"#;
    let codec = Codec::parse(dec).unwrap();
    assert_eq!(codec.decode(&encode(&codec, &json!(12)).unwrap()).unwrap(), json!("12.00"));
    assert!(reason(dec, json!(12.5)).ends_with("give decimals as strings)"));
}

fn codec_scale(schema: &str) -> usize {
    serde_json::from_str::<Value>(schema).unwrap()["scale"].as_u64().unwrap() as usize
}

#[test]
fn primitives_and_logical_types_round_trip() {
    let cases = [
        (r#""boolean""#, json!(true)),
        (r#""int""#, json!(-2147483648)),
        (r#""long""#, json!(i64::MAX)),
        (r#""float""#, json!(0.1)),
        (r#""double""#, json!(-1.5e300)),
        (r#""double""#, json!("NaN")),
        (r#""float""#, json!("-Infinity")),
        (r#""string""#, json!("ü€𝄞 and \"quotes\"")),
        (r#""string""#, json!("")),
        (r#""bytes""#, json!("AP8Q")),
        (r#""bytes""#, json!("")),
        (r#"{"type": "int", "logicalType": "time-millis"}"#, json!("13:45:00.5")),
        (r#"{"type": "long", "logicalType": "time-micros"}"#, json!("00:00:00.000001")),
        (r#"{"type": "long", "logicalType": "timestamp-millis"}"#, json!("1969-12-31T23:59:59.999Z")),
        (r#"{"type": "long", "logicalType": "timestamp-nanos"}"#, json!("2024-05-01T12:00:00.000000001Z")),
        (r#"{"type": "long", "logicalType": "local-timestamp-micros"}"#, json!("1900-01-01T00:00:00.25")),
        (
            r#"{"type": "fixed", "name": "U", "size": 16, "logicalType": "uuid"}"#,
            json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ),
        (r#"{"type": "bytes", "logicalType": "big-decimal"}"#, json!("-12.345")),
        (r#"{"type": "map", "values": ["null", "int"]}"#, json!({"a": 1, "b": null})),
        (r#"{"type": "array", "items": "string"}"#, json!([])),
    ];
    for (schema, v) in cases {
        let codec = Codec::parse(schema).unwrap();
        let bytes = encode(&codec, &v).unwrap_or_else(|e| panic!("{schema}: {e}"));
        assert_eq!(codec.decode(&bytes).unwrap(), v, "{schema}");
        read_back(&codec, &bytes);
    }
    // Numbers in the Avro unit are accepted for logical types.
    let codec = Codec::parse(r#"{"type": "long", "logicalType": "timestamp-millis"}"#).unwrap();
    assert_eq!(codec.decode(&encode(&codec, &json!(-1)).unwrap()).unwrap(), json!("1969-12-31T23:59:59.999Z"));
}

#[test]
fn json_documents_travel_as_text() {
    let schema = r#"{"type": "record", "name": "R", "fields": [
        {"name": "doc", "type": ["null", "string"], "default": null, "flowgate.json": true}]}"#;
    let codec = Codec::parse(schema).unwrap();
    for doc in [json!({"a": [1, {"b": null}]}), json!("text"), json!(null), json!(3)] {
        let v = json!({ "doc": doc });
        let bytes = encode(&codec, &v).unwrap();
        assert_eq!(codec.decode(&bytes).unwrap(), v);
    }
    let AvroValue::Record(f) = read_back(&codec, &encode(&codec, &json!({"doc": {"a": 1}})).unwrap()) else { panic!() };
    assert_eq!(f[0].1, AvroValue::Union(1, Box::new(AvroValue::String(r#"{"a":1}"#.into()))));
}

#[test]
fn recursive_records_and_defaults_of_every_kind() {
    let schema = r#"{"type": "record", "name": "Node", "fields": [
        {"name": "value", "type": "int"},
        {"name": "next", "type": ["null", "Node"], "default": null},
        {"name": "tags", "type": {"type": "array", "items": "string"}, "default": ["x"]},
        {"name": "raw", "type": "bytes", "default": "\u00ff"},
        {"name": "kind", "type": {"type": "enum", "name": "K", "symbols": ["A", "B"]}, "default": "B"}
    ]}"#;
    let codec = Codec::parse(schema).unwrap();
    let v = json!({"value": 1, "next": {"value": 2, "next": null}});
    let bytes = encode(&codec, &v).unwrap();
    let back = codec.decode(&bytes).unwrap();
    assert_eq!(back["next"]["value"], 2);
    assert_eq!(back["tags"], json!(["x"]));
    assert_eq!(back["raw"], json!("/w=="));
    assert_eq!(back["next"]["kind"], "B");
    read_back(&codec, &bytes);

    // A record default whose own fields take their defaults.
    let nested = r#"{"type": "record", "name": "Outer", "fields": [
        {"name": "address", "type": {"type": "record", "name": "Address", "fields": [
            {"name": "zip", "type": "string"}, {"name": "city", "type": "string", "default": "Paris"}]},
         "default": {"zip": "75001"}}]}"#;
    let codec = Codec::parse(nested).unwrap();
    let back = codec.decode(&encode(&codec, &json!({})).unwrap()).unwrap();
    assert_eq!(back, json!({"address": {"zip": "75001", "city": "Paris"}}));

    let bad = r#"{"type": "record", "name": "R", "fields": [{"name": "n", "type": "int", "default": "x"}]}"#;
    let e = Codec::parse(bad).unwrap_err().to_string();
    assert!(e.contains("default") && e.contains("`n`"), "{e}");
}

#[test]
fn damaged_bytes_are_an_error_not_a_panic() {
    let codec = Codec::parse(ORDER).unwrap();
    let bytes = encode(&codec, &order()).unwrap();
    for cut in 0..bytes.len() {
        assert!(codec.decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    assert!(codec.decode(&[bytes.as_slice(), &[0]].concat()).is_err());
    assert!(Codec::parse(r#"{"type": "record"}"#).is_err());
}

#[test]
fn values_that_would_lose_information_are_refused() {
    assert_eq!(reason(r#""float""#, json!(1e300)), "$: expected float, got 1e+300 (out of range)");
    let dec = r#"{"type": "bytes", "logicalType": "decimal", "precision": 30, "scale": 2}"#;
    assert!(reason(dec, json!(123456789012345678.91)).ends_with("give decimals as strings)"));
    let codec = Codec::parse(dec).unwrap();
    assert_eq!(
        codec.decode(&encode(&codec, &json!("123456789012345678.91")).unwrap()).unwrap(),
        json!("123456789012345678.91")
    );
    let millis = r#"{"type": "long", "logicalType": "timestamp-millis"}"#;
    assert_eq!(
        reason(millis, json!("2024-05-01T12:00:00.0005Z")),
        r#"$: expected timestamp-millis (ISO 8601), got "2024-05-01T12:00:00.0005Z" (finer than millis)"#
    );
    let time = r#"{"type": "int", "logicalType": "time-millis"}"#;
    assert!(reason(time, json!("12:00:00.0005")).ends_with("(finer than millis)"));
    // Whole numbers go to long, fractions to double, in either order.
    let codec = Codec::parse(r#"["float", "double", "long"]"#).unwrap();
    assert_eq!(encode(&codec, &json!(0.1)).unwrap()[0], 2, "branch 1, double");
    assert_eq!(encode(&codec, &json!(7)).unwrap()[0], 4, "branch 2, long");
}

#[test]
fn uuid_on_bytes_is_length_prefixed() {
    let codec = Codec::parse(r#"{"type": "bytes", "logicalType": "uuid"}"#).unwrap();
    let v = json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    let bytes = encode(&codec, &v).unwrap();
    assert_eq!((bytes.len(), bytes[0]), (17, 32), "a 16-byte length, then the bytes");
    assert_eq!(codec.decode(&bytes).unwrap(), v);
}

#[test]
fn defaults_use_the_avro_json_encoding_at_every_depth() {
    let schema = r#"{"type": "record", "name": "D", "fields": [
        {"name": "blobs", "type": {"type": "array", "items": "bytes"}, "default": ["\u00ff\u0001"]},
        {"name": "inner", "type": {"type": "record", "name": "I", "fields": [{"name": "b", "type": "bytes"}]},
         "default": {"b": "A"}},
        {"name": "late_null", "type": ["string", "null"], "default": null}
    ]}"#;
    let codec = Codec::parse(schema).unwrap();
    let back = codec.decode(&encode(&codec, &json!({})).unwrap()).unwrap();
    assert_eq!(back, json!({"blobs": ["/wE="], "inner": {"b": "QQ=="}, "late_null": null}));
}

#[test]
fn hostile_values_are_refused_without_allocating() {
    let dec = r#"{"type": "bytes", "logicalType": "big-decimal"}"#;
    for v in ["1e9223372036854775807", "1e-9223372036854775808", "1e200000000", "0e-99999999999"] {
        assert!(reason(dec, json!(v)).starts_with("$: expected big-decimal"), "{v}");
    }
    let dec = r#"{"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}"#;
    assert!(reason(dec, json!("0e-99999999999")).starts_with("$: expected decimal(10,2)"));
    // A block claiming i64::MIN items, and one of 2^40 nulls in a few bytes.
    let codec = Codec::parse(r#"{"type": "array", "items": "null"}"#).unwrap();
    let mut huge = Vec::new();
    write_long(&mut huge, i64::MIN);
    assert!(codec.decode(&huge).is_err());
    let mut many = Vec::new();
    write_long(&mut many, 1 << 40);
    assert!(codec.decode(&many).is_err());
}
