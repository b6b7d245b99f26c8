//! Text logs hold one event per line, whatever its fields hold: a record
//! field, table name or error message with a newline or a terminal escape
//! could otherwise forge log lines or rewrite an operator's screen.

use std::io::{self, Write};

/// A writer for one formatted event: control characters inside it are
/// written escaped (`\n`, `\u{1b}`); its final newline is kept, and so are the
/// escape sequences of colored output when color is on.
pub struct OneLine<W: Write> {
    inner: W,
    color: bool,
}

impl OneLine<io::Stderr> {
    pub fn stderr(color: bool) -> Self {
        OneLine { inner: io::stderr(), color }
    }
}

impl<W: Write> OneLine<W> {
    fn escaped(&self, buf: &[u8]) -> Vec<u8> {
        let body = buf.strip_suffix(b"\n").unwrap_or(buf);
        let mut out = Vec::with_capacity(buf.len() + 8);
        for &b in body {
            match b {
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.push(b),
                0x1b if self.color => out.push(b),
                b if b < 0x20 || b == 0x7f => out.extend_from_slice(format!("\\u{{{b:x}}}").as_bytes()),
                b => out.push(b),
            }
        }
        if body.len() < buf.len() {
            out.push(b'\n');
        }
        out
    }
}

impl<W: Write> Write for OneLine<W> {
    /// The formatter hands over a whole event in one call.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let escaped = self.escaped(buf);
        self.inner.write_all(&escaped)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stays_on_one_line() {
        let mut out = OneLine { inner: Vec::new(), color: false };
        out.write_all(b"WARN table=evil\nINFO forged \x1b[2J\r done\n").unwrap();
        assert_eq!(String::from_utf8(out.inner).unwrap(), "WARN table=evil\\nINFO forged \\u{1b}[2J\\r done\n");
    }
}
