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
        match format {
            MessageFormat::Short => {
                for p in &self.problems {
                    let (line, col) = self.line_col(p.span.start);
                    out.push_str(&format!("{}:{line}:{col}: error: {}", self.path, p.message));
                    if let Some(help) = &p.help {
                        out.push_str(&format!(" (help: {help})"));
                    }
                    out.push('\n');
                }
            }
            MessageFormat::Human => {
                let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
                let theme = if color { GraphicalTheme::unicode() } else { GraphicalTheme::unicode_nocolor() };
                let handler = GraphicalReportHandler::new_themed(theme).with_width(100);
                let source = NamedSource::new(&self.path, self.text.to_string());
                for p in &self.problems {
                    let mut d = MietteDiagnostic::new(p.message.clone())
                        .with_labels([LabeledSpan::new_with_span(Some(p.label.clone()), p.span.clone())]);
                    if let Some(help) = &p.help {
                        d = d.with_help(help.clone());
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
