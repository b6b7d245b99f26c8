//! `flowgate registry serve` as a separate process, and the Python client of
//! the tools venv (`confluent-kafka` with its Schema Registry and Avro serde).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Port, flowgate, reserve_port, wait_for};

/// A registry process on a loopback port of its own, storing in `store`.
pub struct Registry {
    child: Option<Child>,
    pub port: u16,
    store: String,
    log: PathBuf,
    extra: Vec<String>,
    /// Kept across [`Registry::start_again`], and released only after the
    /// process is stopped (fields drop after `Drop::drop`).
    _reserved: Port,
}

impl Registry {
    /// A registry with a SQLite store in `dir`.
    pub fn start(dir: &Path) -> Registry {
        Registry::start_with(dir, &format!("sqlite:{}", dir.join("registry.db").display()))
    }

    pub fn start_with(dir: &Path, store: &str) -> Registry {
        Registry::start_with_args(dir, store, &[])
    }

    /// With further `registry serve` arguments, such as `--metrics-addr`.
    pub fn start_with_args(dir: &Path, store: &str, extra: &[&str]) -> Registry {
        let reserved = reserve_port();
        let mut r = Registry {
            child: None,
            port: reserved.port,
            store: store.to_string(),
            log: dir.join("registry.log"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _reserved: reserved,
        };
        r.start_again();
        r
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn start_again(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = flowgate()
            .args(["registry", "serve", "--listen", &format!("127.0.0.1:{}", self.port), "--store", &self.store])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("flowgate registry starts");
        self.child = Some(child);
        let port = self.port;
        let up = wait_for(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(up, "the registry did not listen\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The venv's Python, with confluent-kafka (installed by scripts/broker-tools.sh).
pub fn python() -> Command {
    let tools = std::env::var_os("FLOWGATE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/flowgate-tools"));
    let py = tools.join("venv/bin/python");
    assert!(py.exists(), "{} is missing: run scripts/setup.sh (or scripts/test.sh)", py.display());
    Command::new(py)
}

/// Runs `tests/python/<script>` with `args`; its standard output, or a panic
/// with both outputs when it fails.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = python().arg(super::repo().join("tests/python").join(script)).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
