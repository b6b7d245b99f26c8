//! `flowgate plugin new` and `flowgate plugin check`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use flowgate_wasm::{CONTRACT, WasmRuntime};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

const WIT: &str = include_str!("../wit/transform.wit");
const RUST_GUEST_TOML: &str = include_str!("../wit/guest/rust/Cargo.toml");
const RUST_GUEST_LIB: &str = include_str!("../wit/guest/rust/src/lib.rs");
const RUST_LIB: &str = include_str!("plugin_templates/rust_lib.rs");
const RUST_TOML: &str = include_str!("plugin_templates/rust_Cargo.toml");
const PIPELINE: &str = include_str!("plugin_templates/pipeline.yaml");

/// (path in the project, contents) for a new plugin project.
fn files(lang: Lang, name: &str) -> Vec<(String, String)> {
    let crate_name = name.replace('-', "_");
    let fill = |t: &str, wasm: &str| t.replace("{{name}}", name).replace("{{wasm}}", wasm);
    let mut files = vec![("wit/transform.wit".to_string(), WIT.to_string())];
    match lang {
        Lang::Rust => {
            let wasm = format!("target/wasm32-wasip2/release/{crate_name}.wasm");
            files.extend([
                ("Cargo.toml".into(), fill(RUST_TOML, &wasm)),
                ("src/lib.rs".into(), RUST_LIB.into()),
                ("wit/guest/rust/Cargo.toml".into(), RUST_GUEST_TOML.into()),
                ("wit/guest/rust/src/lib.rs".into(), RUST_GUEST_LIB.into()),
                ("pipeline.yaml".into(), fill(PIPELINE, &wasm)),
                (
                    "README.md".into(),
                    format!(
                        "# {name}\n\nA Flowgate transform plugin in Rust.\n\n```sh\nrustup target add wasm32-wasip2   # once\n\
                         cargo build --release --target wasm32-wasip2\nflowgate plugin check {wasm}\nflowgate run pipeline.yaml\n```\n\n\
                         Edit `src/lib.rs`. `wit/` holds the contract ({CONTRACT}) and the guest helper crate.\n"
                    ),
                ),
            ]);
        }
        Lang::Python | Lang::Js => {
            files.extend(crate::plugin_scripts::files(lang, name, &fill));
        }
    }
    files
}

pub fn new(lang: Lang, name: &str, dir: Option<PathBuf>) -> ExitCode {
    let valid = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    if !valid {
        eprintln!("error: `{name}` is not a valid plugin name; use lower-case letters, digits, `-` and `_`");
        return ExitCode::from(2);
    }
    let root = dir.unwrap_or_else(|| PathBuf::from(name));
    if root.exists() && root.read_dir().map(|mut d| d.next().is_some()).unwrap_or(true) {
        eprintln!("error: {} already exists and is not empty", root.display());
        return ExitCode::from(2);
    }
    for (path, contents) in files(lang, name) {
        let path = root.join(path);
        let written = std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
            .and_then(|_| std::fs::write(&path, contents));
        if let Err(e) = written {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        #[cfg(unix)]
        if path.extension().is_some_and(|e| e == "sh") {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
        }
    }
    println!("created {} ({lang:?} plugin); see {}/README.md", root.display(), root.display());
    ExitCode::SUCCESS
}

pub fn check(path: &Path) -> ExitCode {
    let runtime = match WasmRuntime::global() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let verdict = runtime.load(path);
    if let Ok((exports, imports)) = runtime.describe(path) {
        println!("{}\n  exports: {}\n  imports: {}", path.display(), list(&exports), list(&imports));
    }
    match verdict {
        Ok(_) => {
            println!("ok: fits {CONTRACT}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("does not fit: {e}");
            ExitCode::FAILURE
        }
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() { "(none)".into() } else { items.join(", ") }
}
