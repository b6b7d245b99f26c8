//! Decimals: read from JSON text into unscaled base-10 digits with a scale,
//! rescaled to the schema's scale without losing digits, and written as the
//! minimal big-endian two's complement bytes Avro stores; and those bytes back
//! to text. Arbitrary precision, bounded so that a hostile value costs no more
//! than a long one.

use serde_json::Value;

/// A decimal's text: a string, or a whole JSON number. A number with a fraction
/// or an exponent has been through a double, which may have dropped digits
/// (`1.000000000000000001` reads as `1`), so it is refused rather than trusted.
pub(super) fn decimal_text(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        Value::String(s) => Some(s.as_str().into()),
        Value::Number(n) if !n.is_f64() => Some(n.to_string().into()),
        _ => None,
    }
}

/// Most digits a decimal may have (Avro itself sets no limit).
const MAX_DIGITS: usize = 1000;

/// A decimal as its unscaled digits (big-endian base 10, no leading zeros).
pub(super) struct Decimal {
    pub(super) negative: bool,
    pub(super) digits: Vec<u8>,
    pub(super) scale: usize,
}

impl Decimal {
    /// The same value with `scale` decimal places; `None` if that would cut
    /// non-zero digits.
    pub(super) fn rescale(mut self, scale: usize) -> Option<Decimal> {
        while self.scale > scale {
            if self.digits.last().is_some_and(|&d| d != 0) {
                return None;
            }
            self.digits.pop();
            self.scale -= 1;
        }
        if scale - self.scale > MAX_DIGITS {
            return None;
        }
        if !self.digits.is_empty() {
            self.digits.extend(std::iter::repeat_n(0, scale - self.scale));
        }
        self.scale = scale;
        Some(self)
    }

    pub(super) fn precision(&self) -> usize {
        self.digits.len()
    }
}

/// `-12.3400`, `5`, `1e3`, `1.5E-2`.
pub(super) fn parse_decimal(s: &str) -> Option<Decimal> {
    let (negative, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Bounds, so that a hostile value costs no more than a long one.
    if int.len() + frac.len() > MAX_DIGITS || exp.unsigned_abs() > MAX_DIGITS as u64 {
        return None;
    }
    let mut digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
    let mut scale = frac.len() as i64 - exp;
    if scale < 0 {
        digits.extend(std::iter::repeat_n(0, (-scale) as usize));
        scale = 0;
    }
    let lead = digits.iter().take_while(|&&d| d == 0).count();
    digits.drain(..lead);
    Some(Decimal { negative: negative && !digits.is_empty(), digits, scale: usize::try_from(scale).ok()? })
}

/// Base-10 digits to minimal big-endian two's complement bytes.
pub(super) fn twos_complement(digits: &[u8], negative: bool) -> Vec<u8> {
    let mut mag: Vec<u8> = Vec::new(); // little-endian base 256
    for &d in digits {
        let mut carry = u32::from(d);
        for b in mag.iter_mut() {
            let x = u32::from(*b) * 10 + carry;
            *b = x as u8;
            carry = x >> 8;
        }
        while carry > 0 {
            mag.push(carry as u8);
            carry >>= 8;
        }
    }
    if negative {
        // Two's complement: invert and add one.
        let mut carry = 1u16;
        for b in mag.iter_mut() {
            let x = u16::from(!*b) + carry;
            *b = x as u8;
            carry = x >> 8;
        }
        if mag.last().is_none_or(|&b| b & 0x80 == 0) {
            mag.push(0xff);
        }
    } else if mag.last().is_none_or(|&b| b & 0x80 != 0) {
        mag.push(0);
    }
    // Minimal: drop redundant sign bytes.
    while mag.len() > 1 {
        let (top, next) = (mag[mag.len() - 1], mag[mag.len() - 2]);
        if (top == 0 && next & 0x80 == 0) || (top == 0xff && next & 0x80 != 0) {
            mag.pop();
        } else {
            break;
        }
    }
    mag.reverse();
    mag
}

/// Big-endian two's complement bytes, `scale` decimal places, as text.
pub(super) fn decimal_string(bytes: &[u8], scale: usize) -> String {
    let negative = bytes.first().is_some_and(|&b| b & 0x80 != 0);
    let mut mag: Vec<u8> = bytes.to_vec();
    if negative {
        let mut carry = 1u16;
        for b in mag.iter_mut().rev() {
            let x = u16::from(!*b) + carry;
            *b = x as u8;
            carry = x >> 8;
        }
    }
    // Repeated division by 10 of the big-endian magnitude.
    let mut digits = Vec::new();
    while mag.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in mag.iter_mut() {
            let x = (rem << 8) | u32::from(*b);
            *b = (x / 10) as u8;
            rem = x % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    while digits.len() <= scale {
        digits.push(b'0');
    }
    digits.reverse();
    let (int, frac) = digits.split_at(digits.len() - scale);
    let mut s = String::with_capacity(digits.len() + 2);
    if negative {
        s.push('-');
    }
    s.push_str(std::str::from_utf8(int).expect("digits"));
    if scale > 0 {
        s.push('.');
        s.push_str(std::str::from_utf8(frac).expect("digits"));
    }
    s
}
