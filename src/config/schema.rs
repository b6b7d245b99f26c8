//! Checks a YAML tree against the JSON Schema that `schemars` derives from the
//! configuration types, collecting every problem rather than stopping at the first,
//! and builds the typed YAML value that `serde` then deserializes.
//!
//! It understands the subset of JSON Schema that `schemars` emits for our types:
//! `$ref`, `type`, `properties`, `required`, `additionalProperties`, `items`,
//! `enum`, `const`, `oneOf`/`anyOf`, numeric bounds, and named `format`s that
//! the runtime registers (durations, generator templates...).

use std::collections::HashMap;
use std::ops::Range;

use serde_json::{Map, Value as J};
use serde_yaml::Value as Y;

use super::Diagnostic;
use super::yaml::{Node, NodeKind};

/// A check for a string `format`, returning a reason when the text does not fit.
pub type FormatCheck = fn(&str) -> Result<(), String>;

pub struct Validator<'a> {
    defs: &'a Map<String, J>,
    formats: &'a HashMap<&'static str, FormatCheck>,
    pub problems: Vec<Diagnostic>,
}

/// The closest candidate to `word`, if one is close enough to be a likely typo.
pub fn closest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1) + 1)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// A schema's description as one line (doc comments wrap).
fn description(schema: &J) -> Option<String> {
    schema.get("description").and_then(J::as_str).map(|d| d.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn one_of_list(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// How YAML 1.2's core schema reads a plain scalar.
pub fn plain_value(text: &str) -> Y {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Y::Null,
        "true" | "True" | "TRUE" => return Y::Bool(true),
        "false" | "False" | "FALSE" => return Y::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Y::Number(f64::INFINITY.into()),
        "-.inf" | "-.Inf" | "-.INF" => return Y::Number(f64::NEG_INFINITY.into()),
        ".nan" | ".NaN" | ".NAN" => return Y::Number(f64::NAN.into()),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i64>() {
            return Y::Number(i.into());
        }
        if let Ok(u) = digits.parse::<u64>()
            && !text.starts_with('-')
        {
            return Y::Number(u.into());
        }
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Y::Number(i.into());
    }
    if let Some(oct) = text.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return Y::Number(i.into());
    }
    let numeric = digits.bytes().all(|b| b.is_ascii_digit() || b"._eE+-".contains(&b))
        && digits.bytes().next().is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && digits.bytes().any(|b| b.is_ascii_digit());
    if numeric && let Ok(f) = text.parse::<f64>() {
        return Y::Number(f.into());
    }
    Y::String(text.to_string())
}

/// The value of a node when no schema says otherwise.
pub fn generic(node: &Node) -> Y {
    match &node.kind {
        NodeKind::Scalar { text, plain: true } => plain_value(text),
        NodeKind::Scalar { text, plain: false } => Y::String(text.clone()),
        NodeKind::Seq(items) => Y::Sequence(items.iter().map(generic).collect()),
        NodeKind::Map(entries) => {
            Y::Mapping(entries.iter().map(|(k, v)| (Y::String(k.as_str().unwrap_or("").into()), generic(v))).collect())
        }
    }
}

/// An enum variant with content, in the form `serde_yaml::Value` deserializes.
fn tagged(variant: &str, value: Y) -> Y {
    Y::Tagged(Box::new(serde_yaml::value::TaggedValue { tag: serde_yaml::value::Tag::new(variant), value }))
}

fn kind_name(node: &Node) -> String {
    match &node.kind {
        NodeKind::Map(_) => "a mapping".into(),
        NodeKind::Seq(_) => "a list".into(),
        NodeKind::Scalar { .. } if node.is_null() => "nothing (null)".into(),
        NodeKind::Scalar { text, plain } => match if *plain { plain_value(text) } else { Y::String(text.clone()) } {
            Y::Bool(b) => format!("the boolean {b}"),
            Y::Number(n) => format!("the number {n}"),
            _ => format!("the text \"{}\"", text.chars().take(40).collect::<String>()),
        },
    }
}

fn types_of(schema: &J) -> Vec<&str> {
    match schema.get("type") {
        Some(J::String(t)) => vec![t.as_str()],
        Some(J::Array(ts)) => ts.iter().filter_map(J::as_str).collect(),
        _ => Vec::new(),
    }
}

fn describe_types(types: &[&str]) -> String {
    let words: Vec<&str> = types
        .iter()
        .map(|t| match *t {
            "object" => "a mapping",
            "array" => "a list",
            "string" => "a text",
            "integer" => "an integer",
            "number" => "a number",
            "boolean" => "true or false",
            "null" => "nothing",
            other => other,
        })
        .collect();
    words.join(" or ")
}

/// The variants of an externally tagged enum: (name, schema of its content or None for a unit variant).
fn variants<'s>(alts: &[&'s J]) -> Option<Vec<(String, Option<&'s J>)>> {
    let mut out = Vec::new();
    for alt in alts {
        if let Some(J::Array(values)) = alt.get("enum") {
            out.extend(values.iter().filter_map(J::as_str).map(|v| (v.to_string(), None)));
        } else if let Some(J::String(c)) = alt.get("const") {
            out.push((c.clone(), None));
        } else if let (Some(J::Object(props)), Some(J::Array(req))) = (alt.get("properties"), alt.get("required")) {
            if props.len() != 1 || req.len() != 1 {
                return None;
            }
            let (name, content) = props.iter().next()?;
            out.push((name.clone(), Some(content)));
        } else if types_of(alt) == ["null"] {
            continue;
        } else {
            return None;
        }
    }
    Some(out)
}

impl<'a> Validator<'a> {
    pub fn new(defs: &'a Map<String, J>, formats: &'a HashMap<&'static str, FormatCheck>) -> Self {
        Validator { defs, formats, problems: Vec::new() }
    }

    fn resolve<'s>(&self, mut schema: &'s J) -> &'s J
    where
        'a: 's,
    {
        for _ in 0..32 {
            match schema.get("$ref").and_then(J::as_str).and_then(|r| r.strip_prefix("#/$defs/")) {
                Some(name) => match self.defs.get(name) {
                    Some(s) => schema = s,
                    None => break,
                },
                None => break,
            }
        }
        schema
    }

    fn problem(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) {
        let mut p = Diagnostic::new(span, message, label);
        p.help = help;
        self.problems.push(p);
    }

    fn accepts_kind(&self, schema: &J, node: &Node) -> bool {
        let schema = self.resolve(schema);
        if let Some(J::Array(alts)) = schema.get("oneOf").or_else(|| schema.get("anyOf")) {
            return alts.iter().any(|a| self.accepts_kind(a, node));
        }
        let types = types_of(schema);
        if types.is_empty() {
            return !matches!(schema, J::Bool(false));
        }
        match &node.kind {
            NodeKind::Map(_) => types.contains(&"object"),
            NodeKind::Seq(_) => types.contains(&"array"),
            NodeKind::Scalar { .. } if node.is_null() => types.contains(&"null") || types.contains(&"object"),
            NodeKind::Scalar { .. } => types.iter().any(|t| !matches!(*t, "object" | "array" | "null")),
        }
    }

    /// Checks `node` against `schema`. `at` is where to point for problems with
    /// the node as a whole (the key that introduced it, when there is one).
    pub fn check(&mut self, node: &Node, schema: &J, at: &Range<usize>) -> Option<Y> {
        let schema = self.resolve(schema);
        match schema {
            J::Bool(true) => return Some(generic(node)),
            J::Bool(false) => {
                self.problem(node.span.clone(), "no value is allowed here", "remove this", None);
                return None;
            }
            _ => {}
        }
        if let Some(J::Array(alts)) = schema.get("oneOf").or_else(|| schema.get("anyOf")) {
            let alts: Vec<&J> = alts.iter().map(|a| self.resolve(a)).collect();
            return self.check_alternatives(node, &alts, at);
        }
        // An enum without variants (a kind with nothing available in this build).
        if schema.get("not").is_some_and(|n| n.as_object().is_some_and(Map::is_empty)) {
            return self.check_variant(node, &[], at);
        }
        if let Some(J::Array(allowed)) = schema.get("enum") {
            return self.check_enum(node, allowed);
        }
        let types = types_of(schema);
        let any = types.is_empty();
        match &node.kind {
            NodeKind::Map(entries) if any || types.contains(&"object") => self.check_object(node, entries, schema, at),
            NodeKind::Seq(items) if any || types.contains(&"array") => {
                let item_schema = schema.get("items").unwrap_or(&J::Bool(true));
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for item in items {
                    match self.check(item, item_schema, &item.span) {
                        Some(v) => out.push(v),
                        None => ok = false,
                    }
                }
                ok.then_some(Y::Sequence(out))
            }
            NodeKind::Scalar { .. } if node.is_null() && types.contains(&"null") => Some(Y::Null),
            // `key:` with nothing after it, for a mapping whose fields all have defaults.
            NodeKind::Scalar { .. } if node.is_null() && types.contains(&"object") => {
                self.check_object(node, &[], schema, at)
            }
            NodeKind::Scalar { text, plain } if !node.is_null() || any => {
                self.check_scalar(node, text, *plain, schema, &types)
            }
            _ => {
                let expected = describe_types(&types);
                self.problem(
                    node.span.clone(),
                    format!("expected {expected}, found {}", kind_name(node)),
                    format!("should be {expected}"),
                    description(schema),
                );
                None
            }
        }
    }

    fn check_scalar(&mut self, node: &Node, text: &str, plain: bool, schema: &J, types: &[&str]) -> Option<Y> {
        let typed = if plain { plain_value(text) } else { Y::String(text.to_string()) };
        let fits = |t: &str| match (&typed, t) {
            (Y::Bool(_), "boolean") => true,
            (Y::Number(n), "integer") => n.is_i64() || n.is_u64(),
            (Y::Number(_), "number") => true,
            (Y::String(_), "string") => true,
            _ => false,
        };
        let value = if types.is_empty() || types.iter().any(|t| fits(t)) {
            typed
        } else if types.contains(&"string") {
            // A plain `2024` or `true` where text is expected is taken as text.
            Y::String(text.to_string())
        } else {
            let expected = describe_types(types);
            let unquoted = plain_value(text);
            let quoted_hint = (!plain
                && types.iter().any(|t| match (&unquoted, *t) {
                    (Y::Bool(_), "boolean") | (Y::Number(_), "number") => true,
                    (Y::Number(n), "integer") => n.is_i64() || n.is_u64(),
                    _ => false,
                }))
            .then(|| "remove the quotes".to_string());
            self.problem(
                node.span.clone(),
                format!("expected {expected}, found {}", kind_name(node)),
                format!("should be {expected}"),
                quoted_hint.or_else(|| description(schema)),
            );
            return None;
        };
        if let Y::Number(n) = &value
            && let Some(x) = n.as_f64()
        {
            let bound = |k: &str| schema.get(k).and_then(J::as_f64);
            let too_low = bound("minimum").is_some_and(|m| x < m) || bound("exclusiveMinimum").is_some_and(|m| x <= m);
            let too_high = bound("maximum").is_some_and(|m| x > m) || bound("exclusiveMaximum").is_some_and(|m| x >= m);
            if too_low || too_high {
                let range = match (bound("minimum").or(bound("exclusiveMinimum")), bound("maximum")) {
                    (Some(lo), Some(hi)) => format!("between {lo} and {hi}"),
                    (Some(lo), None) => format!("at least {lo}"),
                    (None, Some(hi)) => format!("at most {hi}"),
                    (None, None) => "in range".into(),
                };
                self.problem(
                    node.span.clone(),
                    format!("{x} is out of range: it must be {range}"),
                    "out of range",
                    None,
                );
                return None;
            }
        }
        if let (Y::String(s), Some(format)) = (&value, schema.get("format").and_then(J::as_str))
            && let Some(check) = self.formats.get(format)
            && let Err(reason) = check(s)
        {
            self.problem(node.span.clone(), reason, format!("not a valid {format}"), None);
            return None;
        }
        Some(value)
    }

    fn check_enum(&mut self, node: &Node, allowed: &[J]) -> Option<Y> {
        let names: Vec<String> = allowed.iter().filter_map(J::as_str).map(String::from).collect();
        if let Some(text) = node.as_str()
            && names.iter().any(|n| n == text)
        {
            return Some(Y::String(text.to_string()));
        }
        let found = node.as_str().unwrap_or("");
        let help = match closest(found, names.iter().map(String::as_str)) {
            Some(c) => format!("did you mean `{c}`? expected one of {}", one_of_list(&names)),
            None => format!("expected one of {}", one_of_list(&names)),
        };
        self.problem(
            node.span.clone(),
            match node.as_str() {
                Some(text) => format!("unknown value `{text}`"),
                None => format!("unknown value {}", kind_name(node)),
            },
            "not one of the allowed values",
            Some(help),
        );
        None
    }

    fn check_object(&mut self, node: &Node, entries: &[(Node, Node)], schema: &J, at: &Range<usize>) -> Option<Y> {
        let empty = Map::new();
        let props = schema.get("properties").and_then(J::as_object).unwrap_or(&empty);
        let additional = schema.get("additionalProperties");
        let mut out = serde_yaml::Mapping::new();
        let mut ok = true;
        for (key, value) in entries {
            let name = key.as_str().unwrap_or("");
            let field_schema = match (props.get(name), additional) {
                (Some(s), _) => s,
                (None, Some(J::Bool(false))) => {
                    let names: Vec<&str> = props.keys().map(String::as_str).collect();
                    let valid = one_of_list(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>());
                    let help = match closest(name, names.iter().copied()) {
                        Some(c) => format!("did you mean `{c}`? valid fields: {valid}"),
                        None if names.is_empty() => "this mapping takes no fields".to_string(),
                        None => format!("valid fields: {valid}"),
                    };
                    self.problem(key.span.clone(), format!("unknown field `{name}`"), "unknown field", Some(help));
                    ok = false;
                    continue;
                }
                (None, Some(s)) => s,
                (None, None) => &J::Bool(true),
            };
            match self.check(value, field_schema, &key.span) {
                Some(v) => {
                    out.insert(Y::String(name.to_string()), v);
                }
                None => ok = false,
            }
        }
        for req in schema.get("required").and_then(J::as_array).into_iter().flatten().filter_map(J::as_str) {
            if !entries.iter().any(|(k, _)| k.as_str() == Some(req)) {
                let described = props.get(req).map(|s| self.resolve(s)).and_then(description);
                let help = described.map(|d| format!("`{req}`: {d}"));
                let at = if at.is_empty() { node.span.clone() } else { at.clone() };
                self.problem(at, format!("missing field `{req}`"), format!("`{req}` is required here"), help);
                ok = false;
            }
        }
        ok.then_some(Y::Mapping(out))
    }

    fn check_alternatives(&mut self, node: &Node, alts: &[&J], at: &Range<usize>) -> Option<Y> {
        if node.is_null() && alts.iter().any(|a| types_of(a) == ["null"]) {
            return Some(Y::Null);
        }
        if let Some(variants) = variants(alts) {
            return self.check_variant(node, &variants, at);
        }
        // Untagged alternatives: the first that fits without problems wins.
        for alt in alts {
            let mut trial = Validator::new(self.defs, self.formats);
            if let Some(v) = trial.check(node, alt, at)
                && trial.problems.is_empty()
            {
                return Some(v);
            }
        }
        match alts.iter().find(|a| self.accepts_kind(a, node)) {
            Some(best) => self.check(node, best, at),
            None => {
                let mut types: Vec<&str> = alts.iter().flat_map(|a| types_of(a)).collect();
                types.dedup();
                self.problem(
                    node.span.clone(),
                    format!("expected {}, found {}", describe_types(&types), kind_name(node)),
                    "wrong kind of value",
                    None,
                );
                None
            }
        }
    }

    /// An externally tagged enum: `kind: {settings}`, or a bare `kind` for a unit
    /// variant or a variant whose settings all have defaults.
    fn check_variant(&mut self, node: &Node, variants: &[(String, Option<&J>)], at: &Range<usize>) -> Option<Y> {
        let names: Vec<String> = variants.iter().map(|(n, _)| n.clone()).collect();
        let unknown = |v: &mut Self, span: Range<usize>, found: &str| {
            let help = match closest(found, names.iter().map(String::as_str)) {
                Some(c) => format!("did you mean `{c}`? expected one of {}", one_of_list(&names)),
                None if names.is_empty() => "no kind of this is available in this build".to_string(),
                None => format!("expected one of {}", one_of_list(&names)),
            };
            let what = if !names.is_empty() && variants.iter().all(|(_, c)| c.is_none()) { "value" } else { "kind" };
            v.problem(span, format!("unknown {what} `{found}`"), format!("unknown {what}"), Some(help));
            None
        };
        match &node.kind {
            // Matched by text first: `sink: null` names the null sink, not YAML's null.
            NodeKind::Scalar { text, .. } if !node.is_null() || variants.iter().any(|(n, _)| n == text) => {
                match variants.iter().find(|(n, _)| n == text) {
                    Some((name, None)) => Some(Y::String(name.clone())),
                    Some((name, Some(content))) => {
                        let empty = Node { kind: NodeKind::Map(Vec::new()), span: node.span.clone() };
                        let inner = self.check(&empty, content, &node.span)?;
                        Some(tagged(name, inner))
                    }
                    None => unknown(self, node.span.clone(), text),
                }
            }
            NodeKind::Map(entries) if entries.len() == 1 => {
                let (key, value) = &entries[0];
                let name = key.as_str().unwrap_or("");
                match variants.iter().find(|(n, _)| n == name) {
                    Some((name, Some(content))) => {
                        let inner = self.check(value, content, &key.span)?;
                        Some(tagged(name, inner))
                    }
                    Some((name, None)) if value.is_null() => Some(Y::String(name.clone())),
                    Some((name, None)) => {
                        self.problem(value.span.clone(), format!("`{name}` takes no settings"), "remove this", None);
                        None
                    }
                    None => unknown(self, key.span.clone(), name),
                }
            }
            _ => {
                let found = match &node.kind {
                    NodeKind::Map(entries) if !entries.is_empty() => format!("{} keys", entries.len()),
                    _ => kind_name(node),
                };
                let at =
                    if matches!(node.kind, NodeKind::Map(_)) || at.is_empty() { node.span.clone() } else { at.clone() };
                self.problem(
                    at,
                    format!("expected exactly one of {}, found {found}", one_of_list(&names)),
                    "choose one kind",
                    Some(format!("write it as `{}: {{...}}`", names.first().map_or("kind", String::as_str))),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_scalars_follow_the_core_schema() {
        assert_eq!(plain_value("~"), Y::Null);
        assert_eq!(plain_value("TRUE"), Y::Bool(true));
        assert_eq!(plain_value("-12"), Y::Number((-12).into()));
        assert_eq!(plain_value("0x1f"), Y::Number(31.into()));
        assert_eq!(plain_value("1.5e3"), Y::Number(1500.0.into()));
        assert_eq!(plain_value("18446744073709551615"), Y::Number(u64::MAX.into()));
        for s in ["inf", "nan", "1.2.3.", "e5", "100ms", "-", "1_000"] {
            assert!(matches!(plain_value(s), Y::String(_)), "{s}");
        }
    }

    #[test]
    fn closest_finds_likely_typos_only() {
        let fields = ["path", "follow", "format"];
        assert_eq!(closest("pth", fields), Some("path"));
        assert_eq!(closest("Folow", fields), Some("follow"));
        assert_eq!(closest("completely_else", fields), None);
    }
}
