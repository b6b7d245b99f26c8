//! Rendering config problems for people (miette's report) or for tools (one line
//! each, `file:line:column: error: ...`, the form editors and CI annotate from).

use std::io::IsTerminal;

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteDiagnostic, NamedSource, Report};

use super::ConfigError;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MessageFormat {
    /// Annotated source excerpts.
    #[default]
    Human,
    /// One line per problem: `file:line:column: error: message`.
    Short,
}

/// Keys whose values are credentials, wherever they stand (`password`,
/// `sasl.password`, `ssl.key.password`, `client.secret`, `token`, ...).
const SECRET_KEY: &str = r#"(?i)^(\s*)(?:-\s+)?.*?[\w.\-]*(?:password|passwd|pwd|secret|token|credential|api_?key|\.pem)[\w.\-]*["']?\s*:(\s*\S.*)?$"#;

/// The file's text as a diagnostic may show it: the value of every
/// secret-bearing key and the password of every URL replaced by `*`s of the
/// same length (so spans stay where they were), and those values, to scrub
/// from messages that quote them.
pub fn mask_secrets(text: &str) -> (String, Vec<String>) {
    let key = regex_lite::Regex::new(SECRET_KEY).expect("a valid pattern");
    let mut bytes = text.as_bytes().to_vec();
    let mut secrets = Vec::new();
    let mut mask = |range: std::ops::Range<usize>, bytes: &mut Vec<u8>| {
        let value = text[range.clone()].trim();
        if !value.is_empty() {
            let start = range.start + text[range.clone()].find(value).unwrap_or(0);
            // The value as a message may quote it: without quotes, or the
            // punctuation of a flow mapping (`{password: x}`) after it.
            secrets.push(value.trim_matches(['"', '\'', '}', ']', ',', ' ']).to_string());
            bytes[start..start + value.len()].fill(b'*');
        }
    };
    // A secret key with nothing after it on its line: its value is the lines
    // indented deeper that follow (a block scalar, a value on the next line).
    let mut block: Option<usize> = None;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let indent = body.len() - body.trim_start().len();
        match block {
            Some(level) if indent > level || body.trim().is_empty() => {
                mask(at..at + body.len(), &mut bytes);
                at += line.len();
                continue;
            }
            _ => block = None,
        }
        if let Some(c) = key.captures(body) {
            match c.get(2).map(|v| v.as_str().trim()) {
                Some(v) if !v.is_empty() && !v.starts_with(['|', '>']) => {
                    let v = c.get(2).expect("matched");
                    mask(at + v.start()..at + v.end(), &mut bytes);
                }
                _ => block = Some(indent),
            }
        }
        let mut from = 0;
        while let Some(i) = body[from..].find("://") {
            let sep = from + i;
            let start = body[..sep]
                .char_indices()
                .rev()
                .find(|(_, c)| !(c.is_ascii_alphanumeric() || "+-.".contains(*c)))
                .map_or(0, |(p, c)| p + c.len_utf8());
            let end =
                body[sep..].find(|c: char| c.is_whitespace() || "'\"".contains(c)).map_or(body.len(), |p| sep + p);
            for span in flowgate_sdk::url_secret_spans(&body[start..end]) {
                mask(at + start + span.start..at + start + span.end, &mut bytes);
            }
            from = end.max(sep + 3);
        }
        at += line.len();
    }
    // Only ASCII `*` replaced whole values, so the text is still UTF-8.
    (String::from_utf8(bytes).unwrap_or_default(), secrets)
}

impl ConfigError {
    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    pub fn render(&self, format: MessageFormat) -> String {
        let mut out = String::new();
        let (text, secrets) = mask_secrets(&self.text);
        let scrub = |s: &str| flowgate_sdk::scrub(s, &secrets);
        match format {
            MessageFormat::Short => {
                for p in &self.problems {
                    let (line, col) = self.line_col(p.span.start);
                    out.push_str(&format!("{}:{line}:{col}: error: {}", self.path, scrub(&p.message)));
                    if let Some(help) = &p.help {
                        out.push_str(&format!(" (help: {})", scrub(help)));
                    }
                    out.push('\n');
                }
            }
            MessageFormat::Human => {
                let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
                let theme = if color { GraphicalTheme::unicode() } else { GraphicalTheme::unicode_nocolor() };
                let handler = GraphicalReportHandler::new_themed(theme).with_width(100);
                let source = NamedSource::new(&self.path, text);
                for p in &self.problems {
                    let mut d = MietteDiagnostic::new(scrub(&p.message))
                        .with_labels([LabeledSpan::new_with_span(Some(scrub(&p.label)), p.span.clone())]);
                    if let Some(help) = &p.help {
                        d = d.with_help(scrub(help));
                    }
                    let report = Report::new(d).with_source_code(source.clone());
                    // Writing into a String cannot fail.
                    let _ = handler.render_report(&mut out, report.as_ref());
                }
                let n = self.problems.len();
                out.push_str(&format!("{}: {n} problem{} found\n", self.path, if n == 1 { "" } else { "s" }));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_in_place() {
        let text = "url: postgres://app:pw1@db/x?password=pw2\nproperties:\n  sasl.password: \"p w3\"\n  \
                    registry: {username: u, password: pw4}\nname: keep\n";
        let (masked, secrets) = mask_secrets(text);
        assert_eq!(masked.len(), text.len());
        for s in ["pw1", "pw2", "p w3", "pw4"] {
            assert!(!masked.contains(s), "{masked}");
            assert!(secrets.iter().any(|x| x.contains(s)), "{secrets:?}");
        }
        assert!(masked.contains("postgres://app:***@db/x?password=***"), "{masked}");
        assert!(masked.contains("sasl.password: ******\n"), "{masked}");
        assert!(masked.contains("name: keep"));
        assert!(secrets.contains(&"pw4".to_string()), "{secrets:?}");
    }

    #[test]
    fn values_on_following_lines_and_odd_text_are_masked_without_a_panic() {
        let text = "props:\n  sasl.password:\n    hunter2\n  token: |\n    abc\n    def\nname: keep\n# 本番：postgres://u:pw5@h/db\n";
        let (masked, _) = mask_secrets(text);
        assert_eq!(masked.len(), text.len());
        for s in ["hunter2", "abc", "def", "pw5"] {
            assert!(!masked.contains(s), "{masked}");
        }
        assert!(masked.contains("name: keep"), "{masked}");
    }
}
