use std::borrow::Cow;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer};

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Literal(String),
    Seq,
    Uuid,
    NowMs,
    RandInt(i64, i64),
    /// Bounds in hundredths, so rendering stays integer arithmetic.
    RandCents(i64, i64),
    RandStr(usize),
    Pick(Vec<String>),
}

/// The longest record a template may render: what a file source takes as one
/// record by default. Larger would be refused downstream anyway, and a huge
/// `rand_str` would take the process's memory before that.
pub const MAX_RENDERED: usize = 16 << 20;

/// A parsed generator template; parsing happens when the configuration is loaded,
/// so a bad placeholder is reported by `flowgate validate`.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

fn args<'a>(call: &'a str, name: &str) -> Option<Vec<&'a str>> {
    let inner = call.strip_prefix(name)?.strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(str::trim).collect())
}

fn number<T: FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("`{s}` is not a valid {what}"))
}

fn placeholder(p: &str) -> Result<Part, String> {
    let p = p.trim();
    Ok(match p {
        "seq" => Part::Seq,
        "uuid" => Part::Uuid,
        "now_ms" => Part::NowMs,
        _ => {
            if let Some(a) = args(p, "rand_int") {
                let [lo, hi] = a[..] else { return Err("rand_int takes two arguments: rand_int(MIN,MAX)".into()) };
                let (lo, hi) = (number(lo, "integer")?, number(hi, "integer")?);
                if lo > hi {
                    return Err(format!("rand_int({lo},{hi}): MIN is above MAX"));
                }
                Part::RandInt(lo, hi)
            } else if let Some(a) = args(p, "rand_float") {
                let [lo, hi] = a[..] else {
                    return Err("rand_float takes two arguments: rand_float(MIN,MAX)".into());
                };
                let (lo, hi): (f64, f64) = (number(lo, "number")?, number(hi, "number")?);
                // Cents must fit an i64 exactly, or bounds would silently saturate.
                if !(lo.abs() <= 1e15 && hi.abs() <= 1e15) {
                    return Err(format!("rand_float({lo},{hi}): bounds must be finite, within ±1e15"));
                }
                if lo > hi {
                    return Err(format!("rand_float({lo},{hi}): MIN is above MAX"));
                }
                Part::RandCents((lo * 100.0).round() as i64, (hi * 100.0).round() as i64)
            } else if let Some(a) = args(p, "rand_str") {
                let [n] = a[..] else { return Err("rand_str takes one argument: rand_str(LEN)".into()) };
                let n: usize = number(n, "length")?;
                if n > MAX_RENDERED {
                    return Err(format!("rand_str({n}): at most {MAX_RENDERED} characters"));
                }
                Part::RandStr(n)
            } else if let Some(a) = args(p, "pick") {
                if a.iter().any(|s| s.is_empty()) {
                    return Err("pick takes a list of values: pick(a,b,c)".into());
                }
                Part::Pick(a.into_iter().map(String::from).collect())
            } else {
                return Err(format!(
                    "unknown placeholder `${{{p}}}`; known: seq, uuid, now_ms, rand_int(MIN,MAX), \
                     rand_float(MIN,MAX), rand_str(LEN), pick(a,b,...)"
                ));
            }
        }
    })
}

impl FromStr for Template {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            let end = rest[start..].find('}').ok_or("a placeholder `${` is not closed by `}`")? + start;
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            parts.push(placeholder(&rest[start + 2..end])?);
            rest = &rest[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        let longest: usize = parts
            .iter()
            .map(|p| match p {
                Part::Literal(s) => s.len(),
                Part::RandStr(n) => *n,
                Part::Pick(options) => options.iter().map(String::len).max().unwrap_or(0),
                _ => 40,
            })
            .fold(0usize, usize::saturating_add);
        if longest > MAX_RENDERED {
            return Err(format!("a record of this template can be {longest} bytes; at most {MAX_RENDERED}"));
        }
        Ok(Template { parts })
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Cow::<str>::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Template {
    fn schema_name() -> Cow<'static, str> {
        "GenerateTemplate".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "format": "generate-template",
            "description": "Text with placeholders such as ${seq} and ${rand_int(1,100)}.",
        })
    }
}

const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const HEX: &[u8] = b"0123456789abcdef";

impl Template {
    /// Appends one rendering to `out`.
    pub fn render(&self, out: &mut Vec<u8>, seq: u64, now_ms: i64, rng: &mut fastrand::Rng) {
        let mut ints = itoa::Buffer::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.extend_from_slice(s.as_bytes()),
                Part::Seq => out.extend_from_slice(ints.format(seq).as_bytes()),
                Part::NowMs => out.extend_from_slice(ints.format(now_ms).as_bytes()),
                Part::RandInt(lo, hi) => out.extend_from_slice(ints.format(rng.i64(*lo..=*hi)).as_bytes()),
                Part::RandCents(lo, hi) => {
                    let c = rng.i64(*lo..=*hi);
                    if c < 0 {
                        out.push(b'-');
                    }
                    let c = c.unsigned_abs();
                    out.extend_from_slice(ints.format(c / 100).as_bytes());
                    out.push(b'.');
                    out.push(b'0' + (c % 100 / 10) as u8);
                    out.push(b'0' + (c % 10) as u8);
                }
                Part::RandStr(n) => out.extend((0..*n).map(|_| ALNUM[rng.usize(..ALNUM.len())])),
                Part::Pick(options) => out.extend_from_slice(options[rng.usize(..options.len())].as_bytes()),
                Part::Uuid => {
                    // Version 4 (random) layout: 8-4-4-4-12 hex digits.
                    let mut v = rng.u128(..);
                    v = (v & !(0xf << 76)) | (0x4 << 76);
                    v = (v & !(0x3 << 62)) | (0x2 << 62);
                    for i in 0..32 {
                        if matches!(i, 8 | 12 | 16 | 20) {
                            out.push(b'-');
                        }
                        out.push(HEX[((v >> (124 - 4 * i)) & 0xf) as usize]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str, seq: u64) -> String {
        let mut out = Vec::new();
        t.parse::<Template>().unwrap().render(&mut out, seq, 1_700_000_000_000, &mut fastrand::Rng::with_seed(7));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn renders_valid_json() {
        let t = r#"{"id":${seq},"u":"${uuid}","n":${rand_int(-5,5)},"f":${rand_float(-1,1)},"s":"${rand_str(8)}","c":"${pick(red, green)}","t":${now_ms}}"#;
        let v: serde_json::Value = serde_json::from_str(&render(t, 42)).unwrap();
        assert_eq!(v["id"], 42);
        assert_eq!(v["t"], 1_700_000_000_000i64);
        let u = v["u"].as_str().unwrap();
        assert_eq!((u.len(), &u[14..15]), (36, "4"));
        assert!((-5..=5).contains(&v["n"].as_i64().unwrap()));
        assert!((-1.0..=1.0).contains(&v["f"].as_f64().unwrap()));
        assert_eq!(v["s"].as_str().unwrap().len(), 8);
        assert!(["red", "green"].contains(&v["c"].as_str().unwrap()));
    }

    #[test]
    fn rejects_bad_placeholders() {
        for (t, msg) in [
            ("${nope}", "unknown placeholder"),
            ("${rand_int(1)}", "two arguments"),
            ("${rand_int(5,1)}", "MIN is above MAX"),
            ("${rand_str(x)}", "not a valid length"),
            ("abc ${seq", "not closed"),
            ("${rand_str(18446744073709551615)}", "at most 16777216 characters"),
            ("${rand_str(99999999999)}", "at most"),
            ("${rand_str(99999999999999999999999)}", "not a valid length"),
            ("${rand_str(10000000)}${rand_str(10000000)}", "can be 20000000 bytes"),
            ("${rand_float(-inf,1)}", "finite"),
            ("${rand_float(1,1e300)}", "finite"),
        ] {
            let err = t.parse::<Template>().unwrap_err();
            assert!(err.contains(msg), "{t}: {err}");
        }
    }
}
