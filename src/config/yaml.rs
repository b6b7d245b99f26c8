//! A YAML tree that remembers where each node came from, so every diagnostic can
//! point at the offending text.

use std::collections::HashMap;
use std::ops::Range;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use super::Diagnostic;

#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    /// A scalar; `plain` scalars (unquoted) get YAML's types, quoted ones are strings.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    /// Byte range in the source text.
    pub span: Range<usize>,
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The node at `path` (map keys and sequence indices), for pointing at a value
    /// that a later check found wrong.
    pub fn find(&self, path: &[String]) -> Option<&Node> {
        let Some((first, rest)) = path.split_first() else { return Some(self) };
        let child = match &self.kind {
            NodeKind::Map(entries) => entries.iter().find(|(k, _)| k.as_str() == Some(first)).map(|(_, v)| v),
            NodeKind::Seq(items) => first.parse::<usize>().ok().and_then(|i| items.get(i)),
            NodeKind::Scalar { .. } => None,
        }?;
        child.find(rest)
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }
}

/// Saphyr counts characters; diagnostics need byte offsets.
struct Offsets(Vec<usize>);

impl Offsets {
    fn new(text: &str) -> Self {
        let mut v: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
        v.push(text.len());
        Offsets(v)
    }

    fn byte(&self, char_index: usize) -> usize {
        self.0.get(char_index).copied().unwrap_or(*self.0.last().unwrap_or(&0))
    }

    fn range(&self, span: &Span) -> Range<usize> {
        let start = self.byte(span.start.index());
        start..self.byte(span.end.index()).max(start)
    }
}

enum Frame {
    Seq { items: Vec<Node>, start: usize, anchor: usize },
    Map { entries: Vec<(Node, Node)>, key: Option<Node>, start: usize, anchor: usize },
}

/// Deeper nesting than any pipeline needs; the bound keeps recursive walks of
/// the tree from overflowing the stack on a crafted file.
const MAX_DEPTH: usize = 64;
/// Nodes a document may expand to through aliases (a "billion laughs" file
/// would otherwise exhaust memory).
const MAX_NODES: usize = 100_000;

fn count(node: &Node) -> usize {
    match &node.kind {
        NodeKind::Scalar { .. } => 1,
        NodeKind::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        NodeKind::Map(entries) => 1 + entries.iter().map(|(k, v)| count(k) + count(v)).sum::<usize>(),
    }
}

/// Parses one YAML document. An empty document is an empty map.
pub fn parse(text: &str) -> Result<Node, Diagnostic> {
    let offsets = Offsets::new(text);
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0;
    let mut nodes = 0usize;

    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| {
            let at = offsets.byte(e.marker().index());
            Diagnostic::new(at..at, format!("invalid YAML: {}", e.info()), "here")
        })?;
        let range = offsets.range(&span);
        let node = match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(Diagnostic::new(range, "more than one YAML document", "second document starts here")
                        .with_help("put each pipeline in a file of its own"));
                }
                continue;
            }
            Event::Scalar(value, style, anchor, tag) => {
                if let Some(tag) = tag
                    && !tag.is_yaml_core_schema()
                {
                    return Err(Diagnostic::new(
                        range,
                        format!("unsupported YAML tag `{}{}`", tag.handle, tag.suffix),
                        "tag",
                    )
                    .with_help("remove the tag; Flowgate's configuration uses plain YAML values"));
                }
                let node = Node {
                    kind: NodeKind::Scalar { text: value.into_owned(), plain: style == ScalarStyle::Plain },
                    span: range,
                };
                remember(&mut anchors, anchor, &node);
                node
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(n) => {
                    nodes += count(n);
                    if nodes > MAX_NODES {
                        return Err(Diagnostic::new(range, "aliases expand this file beyond reason", "expands here")
                            .with_help(format!("a pipeline file may expand to at most {MAX_NODES} values")));
                    }
                    Node { kind: n.kind.clone(), span: range }
                }
                None => return Err(Diagnostic::new(range, "unknown alias", "no anchor of this name before it")),
            },
            Event::SequenceStart(..) | Event::MappingStart(..) if stack.len() >= MAX_DEPTH => {
                return Err(Diagnostic::new(range, "nested too deeply", "here")
                    .with_help(format!("a pipeline file may nest at most {MAX_DEPTH} levels")));
            }
            Event::SequenceStart(anchor, _) => {
                stack.push(Frame::Seq { items: Vec::new(), start: range.start, anchor });
                continue;
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Frame::Map { entries: Vec::new(), key: None, start: range.start, anchor });
                continue;
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq { items, start, anchor }) => {
                    let node = Node { kind: NodeKind::Seq(items), span: start..range.end.max(start) };
                    remember(&mut anchors, anchor, &node);
                    node
                }
                _ => unreachable!("the parser balances sequence events"),
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map { entries, start, anchor, .. }) => {
                    let node = Node { kind: NodeKind::Map(entries), span: start..range.end.max(start) };
                    remember(&mut anchors, anchor, &node);
                    node
                }
                _ => unreachable!("the parser balances mapping events"),
            },
            _ => continue,
        };
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    if !matches!(node.kind, NodeKind::Scalar { .. }) {
                        return Err(Diagnostic::new(node.span, "a key must be a plain value", "complex key"));
                    }
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.as_str() == node.as_str()) {
                        let label =
                            format!("`{}` was already set at byte {}", node.as_str().unwrap_or(""), first.span.start);
                        return Err(Diagnostic::new(node.span, "duplicate key", label)
                            .with_help("each key may appear once in a mapping"));
                    }
                    *key = Some(node);
                }
                Some(k) => entries.push((k, node)),
            },
        }
    }
    Ok(root.unwrap_or(Node { kind: NodeKind::Map(Vec::new()), span: 0..0 }))
}

fn remember(anchors: &mut HashMap<usize, Node>, anchor: usize, node: &Node) {
    if anchor > 0 {
        anchors.insert(anchor, node.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_byte_spans_even_after_multibyte_text() {
        let text = "a: \"é\"\nb:\n  - x\n  - &v y\n  - *v\n";
        let root = parse(text).unwrap();
        let x = root.find(&["b".into(), "0".into()]).unwrap();
        assert_eq!(&text[x.span.clone()], "x");
        let alias = root.find(&["b".into(), "2".into()]).unwrap();
        assert_eq!(alias.as_str(), Some("y"));
        assert!(root.find(&["b".into(), "9".into()]).is_none());
    }

    #[test]
    fn refuses_duplicates_tags_and_second_documents() {
        assert!(parse("a: 1\na: 2\n").unwrap_err().message.contains("duplicate key"));
        assert!(parse("a: !custom 1\n").unwrap_err().message.contains("tag"));
        assert!(parse("a: 1\n---\nb: 2\n").unwrap_err().message.contains("more than one"));
        assert!(parse("a: [1\n").unwrap_err().message.contains("invalid YAML"));
        assert_eq!(parse("").unwrap().kind, NodeKind::Map(vec![]));
    }

    #[test]
    fn refuses_crafted_depth_and_alias_bombs() {
        let deep = format!("name:\n{}", (0..200).map(|i| format!("{}- \n", "  ".repeat(i))).collect::<String>());
        assert!(parse(&deep).unwrap_err().message.contains("nested too deeply"));
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let prev = (b'a' + i - 1) as char;
            let this = (b'a' + i) as char;
            bomb.push_str(&format!("{this}: &{this} [{}]\n", vec![format!("*{prev}"); 10].join(", ")));
        }
        assert!(parse(&bomb).unwrap_err().message.contains("aliases expand"));
    }
}
