//! Postgres text-format values to JSON.
//!
//! pgoutput sends every value in its text form; the column's type (from the
//! Relation message, or the catalog for the snapshot) says how to read it. Writing
//! straight into the output buffer keeps the per-change cost to a copy.

use std::io::Write as _;

/// How a column's values are written in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Scalar(Scalar),
    Array(Scalar),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    /// int2/int4/int8/oid: a JSON number.
    Int,
    /// float4/float8: a number; NaN and infinities as strings.
    Float,
    /// numeric: a string, exact.
    Numeric,
    Bool,
    /// json/jsonb: embedded as JSON, not as a string.
    Json,
    /// bytea: base64.
    Bytea,
    /// timestamp without time zone: ISO 8601, `2024-05-01T12:00:00.5`.
    Timestamp,
    /// timestamptz: ISO 8601 in UTC, `2024-05-01T12:00:00.5Z`.
    TimestampTz,
    /// Everything else (text, varchar, uuid, date, time, interval, enums, ...): a string.
    Text,
}

/// The JSON form of a type, by its OID. Unknown types (enums, domains, extension
/// types) are written as their text.
pub fn kind_of(oid: u32) -> Kind {
    use Scalar::*;
    match oid {
        20 | 21 | 23 | 26 => Kind::Scalar(Int),
        700 | 701 => Kind::Scalar(Float),
        1700 => Kind::Scalar(Numeric),
        16 => Kind::Scalar(Bool),
        114 | 3802 => Kind::Scalar(Json),
        17 => Kind::Scalar(Bytea),
        1114 => Kind::Scalar(Timestamp),
        1184 => Kind::Scalar(TimestampTz),
        1005 | 1007 | 1016 | 1028 => Kind::Array(Int),
        1021 | 1022 => Kind::Array(Float),
        1231 => Kind::Array(Numeric),
        1000 => Kind::Array(Bool),
        199 | 3807 => Kind::Array(Json),
        1001 => Kind::Array(Bytea),
        1115 => Kind::Array(Timestamp),
        1185 => Kind::Array(TimestampTz),
        // text, varchar, bpchar, name, uuid, date, time, timetz, interval, char arrays
        1009 | 1015 | 1014 | 1003 | 2951 | 1182 | 1183 | 1270 | 1187 | 1002 => Kind::Array(Text),
        _ => Kind::Scalar(Text),
    }
}

/// Appends `s` as a JSON string.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    // Most values need no escaping: a check the compiler vectorizes, then one
    // copy, instead of serde_json's walk byte by byte (6% of a snapshot's CPU).
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // serde_json's escaping; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends the JSON form of one non-null value in Postgres text format.
pub fn write_value(out: &mut Vec<u8>, kind: Kind, text: &str) {
    match kind {
        Kind::Scalar(s) => write_scalar(out, s, text),
        Kind::Array(s) => {
            let mut p = ArrayParser { s: text.as_bytes(), i: 0 };
            // Bounds such as `[0:1]={...}` precede the braces of non-default arrays.
            if p.s.first() == Some(&b'[')
                && let Some(eq) = text.find('=')
            {
                p.i = eq + 1;
            }
            let start = out.len();
            if p.parse(out, s).is_none() {
                // Not an array literal we understand: keep the text rather than guess.
                out.truncate(start);
                write_str(out, text);
            }
        }
    }
}

fn write_scalar(out: &mut Vec<u8>, kind: Scalar, text: &str) {
    match kind {
        Scalar::Int if is_integer(text) => out.extend_from_slice(text.as_bytes()),
        Scalar::Float if text.parse::<f64>().is_ok_and(f64::is_finite) => out.extend_from_slice(text.as_bytes()),
        Scalar::Bool if text == "t" => out.extend_from_slice(b"true"),
        Scalar::Bool if text == "f" => out.extend_from_slice(b"false"),
        Scalar::Json if !text.is_empty() => out.extend_from_slice(text.as_bytes()),
        Scalar::Bytea => match decode_hex_bytea(text) {
            Some(bytes) => {
                out.push(b'"');
                let _ = write!(
                    out,
                    "{}",
                    base64::display::Base64Display::new(&bytes, &base64::engine::general_purpose::STANDARD)
                );
                out.push(b'"');
            }
            None => write_str(out, text),
        },
        Scalar::Timestamp | Scalar::TimestampTz if is_plain_timestamp(text) => {
            // The session runs with TimeZone=UTC, so the offset is always +00.
            let utc = if kind == Scalar::TimestampTz { text.strip_suffix("+00") } else { None };
            let (date, time) = utc.unwrap_or(text).split_at(10);
            // Digits and separators: written as they are, nothing to escape.
            out.push(b'"');
            out.extend_from_slice(date.as_bytes());
            out.push(b'T');
            out.extend_from_slice(&time.as_bytes()[1..]);
            if utc.is_some() {
                out.push(b'Z');
            }
            out.push(b'"');
        }
        _ => write_str(out, text),
    }
}

fn is_integer(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `2024-05-01 12:00:00[.frac][+00]`: not `infinity`, not a BC date, not a
/// year past 9999 (which ISO 8601 readers refuse).
fn is_plain_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 19
        && b[4] == b'-'
        && b[10] == b' '
        && !s.ends_with(" BC")
        && b.iter().all(|&c| c.is_ascii_digit() || b"-:. +".contains(&c))
}

/// bytea's default `hex` output, `\x0a0b`.
fn decode_hex_bytea(s: &str) -> Option<Vec<u8>> {
    let hex = s.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let nibble = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    hex.chunks(2).map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?)).collect()
}

/// Reads an array literal, `{1,2,NULL}` or `{{"a b","c\"d"},{e,f}}`, writing a
/// (nested) JSON array. `None` on anything malformed.
struct ArrayParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl ArrayParser<'_> {
    fn parse(&mut self, out: &mut Vec<u8>, kind: Scalar) -> Option<()> {
        self.array(out, kind)?;
        (self.i == self.s.len()).then_some(())
    }

    fn array(&mut self, out: &mut Vec<u8>, kind: Scalar) -> Option<()> {
        self.expect(b'{')?;
        out.push(b'[');
        if self.peek() == Some(b'}') {
            self.i += 1;
            out.push(b']');
            return Some(());
        }
        loop {
            match self.peek()? {
                b'{' => self.array(out, kind)?,
                b'"' => {
                    let text = self.quoted()?;
                    write_scalar(out, kind, &text);
                }
                _ => {
                    let text = self.bare()?;
                    if text.eq_ignore_ascii_case("NULL") {
                        out.extend_from_slice(b"null");
                    } else {
                        write_scalar(out, kind, text);
                    }
                }
            }
            match self.next()? {
                b',' => out.push(b','),
                b'}' => {
                    out.push(b']');
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn quoted(&mut self) -> Option<String> {
        self.expect(b'"')?;
        let mut buf = Vec::new();
        loop {
            match self.next()? {
                b'"' => return String::from_utf8(buf).ok(),
                b'\\' => buf.push(self.next()?),
                b => buf.push(b),
            }
        }
    }

    fn bare(&mut self) -> Option<&str> {
        let start = self.i;
        while let Some(b) = self.peek() {
            if b == b',' || b == b'}' {
                break;
            }
            self.i += 1;
        }
        std::str::from_utf8(&self.s[start..self.i]).ok().map(str::trim)
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        (self.next()? == b).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(oid: u32, text: &str) -> String {
        let mut out = Vec::new();
        write_value(&mut out, kind_of(oid), text);
        let s = String::from_utf8(out).unwrap();
        serde_json::from_str::<serde_json::Value>(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
        s
    }

    #[test]
    fn strings_are_escaped_as_serde_json_does() {
        for s in ["", "plain", "é ü 日本", "tab\there", "quote\" back\\", "\u{0}\u{1f}\u{7f}", "\u{7f}", "end\\"] {
            let mut out = b"x".to_vec();
            write_str(&mut out, s);
            assert_eq!(out, [b"x".as_slice(), serde_json::to_string(s).unwrap().as_bytes()].concat(), "{s:?}");
        }
    }

    #[test]
    fn scalars() {
        assert_eq!(json(23, "-42"), "-42");
        assert_eq!(json(20, "9223372036854775807"), "9223372036854775807");
        assert_eq!(json(701, "1.5e+30"), "1.5e+30");
        assert_eq!(json(701, "NaN"), r#""NaN""#);
        assert_eq!(json(700, "-Infinity"), r#""-Infinity""#);
        assert_eq!(json(1700, "12345678901234567890.000001"), r#""12345678901234567890.000001""#);
        assert_eq!(json(16, "t"), "true");
        assert_eq!(json(16, "f"), "false");
        assert_eq!(json(3802, r#"{"a": [1, null]}"#), r#"{"a": [1, null]}"#);
        assert_eq!(json(17, "\\x00ff10"), r#""AP8Q""#);
        assert_eq!(json(25, "say \"hi\"\n"), r#""say \"hi\"\n""#);
        assert_eq!(json(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), r#""a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11""#);
        assert_eq!(json(1082, "1969-07-20"), r#""1969-07-20""#);
    }

    #[test]
    fn timestamps_become_iso_8601() {
        assert_eq!(json(1184, "2024-05-01 12:00:00.5+00"), r#""2024-05-01T12:00:00.5Z""#);
        assert_eq!(json(1114, "1969-12-31 23:59:59.999999"), r#""1969-12-31T23:59:59.999999""#);
        assert_eq!(json(1184, "infinity"), r#""infinity""#);
        assert_eq!(json(1184, "0044-03-15 12:00:00+00 BC"), r#""0044-03-15 12:00:00+00 BC""#);
    }

    #[test]
    fn arrays() {
        assert_eq!(json(1007, "{1,2,NULL}"), "[1,2,null]");
        assert_eq!(json(1007, "{}"), "[]");
        assert_eq!(json(1007, "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
        assert_eq!(json(1009, r#"{"a b","c\"d",NULL,"NULL",e}"#), r#"["a b","c\"d",null,"NULL","e"]"#);
        assert_eq!(json(1000, "{t,f}"), "[true,false]");
        assert_eq!(json(1231, "{1.10,NaN}"), r#"["1.10","NaN"]"#);
        assert_eq!(json(3807, r#"{"{\"a\": 1}",null}"#), r#"[{"a": 1},null]"#);
        assert_eq!(json(1007, "[0:1]={1,2}"), "[1,2]");
        assert_eq!(json(1007, "{1,2"), r#""{1,2""#);
    }
}
