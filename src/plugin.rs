//! `flowgate plugin new` and `flowgate plugin check`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use flowgate_wasm::{CONTRACT, Contract, WasmRuntime};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
    /// C with wasi-libc, without a Flowgate helper: the bindings `wit-bindgen
    /// c` generated and a reader/writer of the batch format come with it.
    C,
}

const WIT: &str = include_str!("../wit/transform.wit");
const RUST_GUEST_TOML: &str = include_str!("../wit/guest/rust/Cargo.toml");
const RUST_GUEST_LIB: &str = include_str!("../wit/guest/rust/src/lib.rs");
const RUST_LIB: &str = include_str!("plugin_templates/rust_lib.rs");
const RUST_TOML: &str = include_str!("plugin_templates/rust_Cargo.toml");
const PIPELINE: &str = include_str!("plugin_templates/pipeline.yaml");
const PY_GUEST: &str = include_str!("../wit/guest/python/flowgate_guest.py");
const PY_APP: &str = include_str!("plugin_templates/python_app.py");
const PY_BUILD: &str = include_str!("plugin_templates/python_build.sh");
const JS_GUEST: &str = include_str!("../wit/guest/js/flowgate-guest.js");
const JS_PLUGIN: &str = include_str!("plugin_templates/js_plugin.js");
const JS_BUILD: &str = include_str!("plugin_templates/js_build.mjs");
const C_PLUGIN: &str = include_str!("plugin_templates/c_plugin.c");
const C_BUILD: &str = include_str!("plugin_templates/c_build.sh");
const C_BATCH: &str = include_str!("../examples/add-header/c/batch.h");
const C_BINDINGS_H: &str = include_str!("../examples/add-header/c/bindings/transform.h");
const C_BINDINGS_C: &str = include_str!("../examples/add-header/c/bindings/transform.c");
const C_BINDINGS_TYPE: &[u8] = include_bytes!("../examples/add-header/c/bindings/transform_component_type.o");

/// (path in the project, contents) for a new plugin project.
fn files(lang: Lang, name: &str) -> Vec<(String, Vec<u8>)> {
    let crate_name = name.replace('-', "_");
    let fill = |t: &str, wasm: &str| t.replace("{{name}}", name).replace("{{wasm}}", wasm);
    let (wasm, build, toolchain, sources): (String, &str, &str, Vec<(&str, String)>) = match lang {
        Lang::Rust => {
            let wasm = format!("target/wasm32-wasip2/release/{crate_name}.wasm");
            let sources = vec![
                ("Cargo.toml", fill(RUST_TOML, &wasm)),
                ("src/lib.rs", RUST_LIB.into()),
                ("wit/guest/rust/Cargo.toml", RUST_GUEST_TOML.into()),
                ("wit/guest/rust/src/lib.rs", RUST_GUEST_LIB.into()),
            ];
            (
                wasm,
                "cargo build --release --target wasm32-wasip2",
                "Rust (`rustup target add wasm32-wasip2` once)",
                sources,
            )
        }
        Lang::Python => {
            let wasm = format!("{name}.wasm");
            let sources = vec![
                ("app.py", fill(PY_APP, &wasm)),
                ("flowgate_guest.py", PY_GUEST.into()),
                ("build.sh", fill(PY_BUILD, &wasm)),
            ];
            (wasm, "./build.sh", "Python (componentize-py 0.25.1: `pip install componentize-py==0.25.1`)", sources)
        }
        Lang::Js => {
            let wasm = format!("{name}.wasm");
            let sources = vec![
                ("plugin.js", fill(JS_PLUGIN, &wasm)),
                ("flowgate-guest.js", JS_GUEST.into()),
                ("build.mjs", fill(JS_BUILD, &wasm)),
            ];
            let toolchain = "JavaScript (componentize-js 0.23: `npm install @bytecodealliance/componentize-js@0.23.0`)";
            (wasm, "node build.mjs", toolchain, sources)
        }
        Lang::C => {
            let wasm = format!("{name}.wasm");
            let sources = vec![
                ("plugin.c", C_PLUGIN.into()),
                ("batch.h", C_BATCH.into()),
                ("bindings/transform.h", C_BINDINGS_H.into()),
                ("bindings/transform.c", C_BINDINGS_C.into()),
                ("build.sh", fill(C_BUILD, &wasm)),
            ];
            let toolchain = "C (clang and wasi-libc; wasm-tools to make the component)";
            (wasm, "./build.sh", toolchain, sources)
        }
    };
    let readme = format!(
        "# {name}\n\nA Flowgate transform plugin in {toolchain}.\n\n```sh\n{build}\nflowgate plugin check {wasm}\n\
         flowgate run pipeline.yaml\n```\n\n`wit/` holds the contract ({CONTRACT}); the guest helper turns the \
         packed batches into records. Writing plugins: docs/plugins.md in the Flowgate repository.\n"
    );
    let mut files: Vec<(String, Vec<u8>)> = sources.into_iter().map(|(p, c)| (p.to_string(), c.into_bytes())).collect();
    if lang == Lang::C {
        files.push(("bindings/transform_component_type.o".into(), C_BINDINGS_TYPE.to_vec()));
    }
    files.push(("wit/transform.wit".into(), WIT.into()));
    files.push(("pipeline.yaml".into(), fill(PIPELINE, &wasm).into_bytes()));
    files.push(("README.md".into(), readme.into_bytes()));
    files
}

pub fn new(lang: Lang, name: &str, dir: Option<PathBuf>) -> ExitCode {
    let valid = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    if !valid {
        crate::errln!("error: `{name}` is not a valid plugin name; use lower-case letters, digits, `-` and `_`");
        return ExitCode::from(2);
    }
    let root = dir.unwrap_or_else(|| PathBuf::from(name));
    if root.exists() && root.read_dir().map(|mut d| d.next().is_some()).unwrap_or(true) {
        crate::errln!("error: {} already exists and is not empty", root.display());
        return ExitCode::from(2);
    }
    for (path, contents) in files(lang, name) {
        let path = root.join(path);
        let written = std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
            .and_then(|_| std::fs::write(&path, contents));
        if let Err(e) = written {
            crate::errln!("error: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        #[cfg(unix)]
        if path.extension().is_some_and(|e| e == "sh") {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
        }
    }
    crate::outln!("created {} ({lang:?} plugin); see {}/README.md", root.display(), root.display());
    ExitCode::SUCCESS
}

/// `flowgate plugin check`: whether the component fits the contract (its
/// imports and exports), then whether it works: `init` with `config` (`{}`
/// by default) and `process` on a sample batch with every field a record can
/// have (or on the lines of `input`), its answer checked as the pipeline
/// checks it, so that a malformed answer is found without a pipeline.
pub fn check(path: &Path, config: Option<&str>, input: Option<&Path>) -> ExitCode {
    // What the command was given is checked first: a usage error, not the plugin's.
    let config: serde_json::Value = match config.map(serde_json::from_str).transpose() {
        Ok(c) => c.unwrap_or(serde_json::Value::Null),
        Err(e) => {
            crate::errln!("error: --config is not JSON: {e}");
            return ExitCode::from(2);
        }
    };
    let records = match input {
        Some(file) => match std::fs::read(file) {
            Ok(text) => Some((lines(&text, file), format!("the records of {}", file.display()))),
            Err(e) => {
                crate::errln!("error: cannot read {}: {e}", file.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let runtime = match WasmRuntime::global() {
        Ok(r) => r,
        Err(e) => {
            crate::errln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let verdict = runtime.load(path);
    if let Ok((exports, imports)) = runtime.describe(path) {
        crate::outln!("{}\n  exports: {}\n  imports: {}", path.display(), list(&exports), list(&imports));
    }
    match verdict {
        Ok(plugin) if plugin.contract == Contract::CURRENT => crate::outln!("ok: fits {CONTRACT}"),
        // Still runs; say so, and what a rebuild gains.
        Ok(plugin) => crate::outln!(
            "ok: fits {} (an earlier version, still run; rebuild against {CONTRACT} for named metadata and \
             checked outcomes)",
            plugin.contract.name()
        ),
        Err(e) => {
            crate::outln!("does not fit: {}", flowgate_sdk::error_chain(&e));
            return ExitCode::FAILURE;
        }
    }
    match run_sample(path, config, records) {
        Ok(summary) => {
            crate::outln!("ok: {summary}");
            ExitCode::SUCCESS
        }
        Err(problem) => {
            crate::outln!("does not work: {problem}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the plugin once on the sample (or `records`): what it answered, or
/// the first problem.
fn run_sample(
    path: &Path,
    config: serde_json::Value,
    records: Option<(Vec<flowgate_sdk::Record>, String)>,
) -> Result<String, String> {
    let settings = serde_json::json!({"path": path, "config": config});
    let settings: flowgate_wasm::WasmConfig = serde_json::from_value(settings).map_err(|e| e.to_string())?;
    let (records, what) =
        records.unwrap_or_else(|| (flowgate_wasm::format::sample_batch(), "the sample batch".to_string()));
    let mut plugin = flowgate_wasm::WasmTransform::new(settings, "plugin-check", "transform[0]:wasm")
        .map_err(|e| flowgate_sdk::error_chain(&e))?;
    let outcomes = plugin
        .try_batch(&records)
        .map_err(|e| flowgate_sdk::error_chain(&e))?
        .map_err(|reason| format!("process on {what} ({} records): {reason}", records.len()))?;
    let mut counts = [0usize; 4];
    let mut emitted = 0;
    let mut first_fail = None;
    for outcome in &outcomes {
        use flowgate_wasm::format::Outcome;
        match outcome {
            Outcome::Keep => counts[0] += 1,
            Outcome::Value(_) => counts[1] += 1,
            Outcome::Emit(records) => {
                counts[2] += 1;
                emitted += records.len();
            }
            Outcome::Fail(reason) => {
                counts[3] += 1;
                first_fail.get_or_insert_with(|| reason.clone());
            }
        }
    }
    let mut summary = format!(
        "init and process ran on {what} ({} records): {} kept, {} changed, {} emitted {emitted} records, {} refused",
        records.len(),
        counts[0],
        counts[1],
        counts[2],
        counts[3]
    );
    if let Some(reason) = first_fail {
        summary.push_str(&format!(" (first: {reason})"));
    }
    Ok(summary)
}

/// Each line of `text` as a record, located as the file source locates it.
fn lines(text: &[u8], file: &Path) -> Vec<flowgate_sdk::Record> {
    let path: std::sync::Arc<str> = file.display().to_string().into();
    let mut offset = 0i64;
    let mut out = Vec::new();
    for (i, line) in text.split_inclusive(|b| *b == b'\n').enumerate() {
        let value = line.strip_suffix(b"\n").unwrap_or(line);
        let meta = flowgate_sdk::Metadata::default()
            .with("path", std::sync::Arc::clone(&path))
            .with("line", i as i64 + 1)
            .with("offset", offset);
        out.push(flowgate_sdk::Record {
            value: flowgate_sdk::Bytes::copy_from_slice(value),
            meta,
            ..Default::default()
        });
        offset += line.len() as i64;
    }
    out
}

fn list(items: &[String]) -> String {
    if items.is_empty() { "(none)".into() } else { items.join(", ") }
}
