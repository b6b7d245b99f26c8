//! Flowgate: declarative pipelines from a source through transforms into a sink.
//!
//! Pipeline file → [`config`] (checked, every problem at once) → [`plan`] (open
//! connectors) → [`engine`] (tasks, bounded channels, ordered acknowledgement).

/// `println!` that cannot panic: with standard output closed (`| head -1`)
/// the text is lost, and nothing else is.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` (with `errln!(@raw ...)`, `eprint!`) that cannot panic on a
/// closed standard error.
#[macro_export]
macro_rules! errln {
    (@raw $($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod config;
pub mod connectors;
pub mod engine;
pub mod http;
pub mod logs;
pub mod plan;
pub mod plugin;
pub mod registry;
pub mod run;
pub mod server;
