//! `${VAR}` and `${VAR:-default}` from the environment.
//!
//! Only upper-case names (`[A-Z_][A-Z0-9_]*`) are environment variables; any other
//! `${...}` (such as `${seq}` or `${meta.table}`) is left for the connector that
//! fills it per record. `$${` writes a literal `${`.

use super::Diagnostic;
use super::yaml::{Node, NodeKind};

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Why a string could not be expanded.
#[derive(Debug, PartialEq)]
pub enum ExpandError {
    /// This variable is unset and has no default.
    Unset(String),
    /// A default holds another `${...}`, which is not supported.
    NestedDefault(String),
}

/// Expands one string.
pub fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    if !text.contains('$') {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
            continue;
        }
        let expr = after.strip_prefix("${").and_then(|t| t.find('}').map(|end| (&t[..end], &t[end + 1..])));
        match expr {
            Some((inner, tail)) => {
                let (name, default) = match inner.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (inner, None),
                };
                if is_env_name(name) {
                    if default.is_some_and(|d| d.contains("${")) {
                        return Err(ExpandError::NestedDefault(name.to_string()));
                    }
                    match env(name).or_else(|| default.map(String::from)) {
                        Some(v) => out.push_str(&v),
                        None => return Err(ExpandError::Unset(name.to_string())),
                    }
                } else {
                    out.push_str(&after[..inner.len() + 3]);
                }
                rest = tail;
            }
            None => {
                out.push('$');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Expands every scalar of the tree in place, collecting a problem per unset variable.
pub fn expand_tree(node: &mut Node, env: &dyn Fn(&str) -> Option<String>, problems: &mut Vec<Diagnostic>) {
    match &mut node.kind {
        NodeKind::Scalar { text, .. } => match expand(text, env) {
            Ok(v) => *text = v,
            Err(ExpandError::Unset(name)) => problems.push(
                Diagnostic::new(node.span.clone(), format!("environment variable {name} is not set"), "used here")
                    .with_help(format!("set {name}, or give a default: ${{{name}:-value}}")),
            ),
            Err(ExpandError::NestedDefault(name)) => problems.push(
                Diagnostic::new(node.span.clone(), format!("the default of ${{{name}}} holds another `${{`"), "here")
                    .with_help("defaults are plain text; set the variable instead"),
            ),
        },
        NodeKind::Seq(items) => items.iter_mut().for_each(|n| expand_tree(n, env, problems)),
        // Keys are field names, never interpolated.
        NodeKind::Map(entries) => entries.iter_mut().for_each(|(_, v)| expand_tree(v, env, problems)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "HOST").then(|| "db.local".to_string())
    }

    #[test]
    fn expands_upper_case_names_only() {
        assert_eq!(expand("pg://${HOST}:${PORT:-5432}/x", &env).unwrap(), "pg://db.local:5432/x");
        assert_eq!(expand("${seq}-${meta.table}-${HOST}", &env).unwrap(), "${seq}-${meta.table}-db.local");
        assert_eq!(expand("cost: $5, $${HOST}, ${EMPTY:-}", &env).unwrap(), "cost: $5, ${HOST}, ");
        assert_eq!(expand("${MISSING}", &env).unwrap_err(), ExpandError::Unset("MISSING".into()));
        assert_eq!(expand("${A:-${B:-x}}", &env).unwrap_err(), ExpandError::NestedDefault("A".into()));
        assert_eq!(expand("unclosed ${HOST", &env).unwrap(), "unclosed ${HOST");
    }
}
