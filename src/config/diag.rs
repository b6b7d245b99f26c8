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
const SECRET_KEY: &str = r#"(?i)[\w.\-]*(?:password|passwd|secret|token|credential)[\w.\-]*["']?\s*:\s*(\S.*)$"#;

/// The file's text as a diagnostic may show it: the value of every
/// secret-bearing key and the password of every URL replaced by `*`s of the
/// same length (so spans stay where they were), and those values, to scrub
/// from messages that quote them.
pub fn mask_secrets(text: &str) -> (String, Vec<String>) {
    let key = regex_lite::Regex::new(SECRET_KEY).expect("a valid pattern");
    let mut bytes = text.as_bytes().to_vec();
    let mut secrets = Vec::new();
    let mut mask = |range: std::ops::Range<usize>, bytes: &mut Vec<u8>| {
        let value = text[range.clone()].trim_end();
        if !value.is_empty() {
            secrets.push(value.trim_matches(['"', '\'']).to_string());
            bytes[range.start..range.start + value.len()].fill(b'*');
        }
    };
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        if let Some(value) = key.captures(body).and_then(|c| c.get(1)) {
            mask(at + value.start()..at + value.end(), &mut bytes);
        }
        let mut from = 0;
        while let Some(i) = body[from..].find("://") {
            let sep = from + i;
            let start =
                body[..sep].rfind(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c))).map_or(0, |p| p + 1);
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
    }
}
