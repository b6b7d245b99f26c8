//! Helpers for end-to-end tests that drive the `flowgate` binary.
#![allow(dead_code)] // Each test file uses a different subset.

pub mod kafka;
pub mod mariadb;
pub mod pipeline;
pub mod postgres;
pub mod registry;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn flowgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flowgate"));
    c.env("NO_COLOR", "1").env_remove("FLOWGATE_STATE_DIR").env("FLOWGATE_PLUGINS", plugins_dir());
    c
}

/// Starts `flowgate run` on a pipeline file, with state kept in `dir/state`;
/// killed when the guard drops (a failing test leaves no process behind).
pub fn spawn_run(dir: &Path, pipeline: &Path, extra: &[&str]) -> Guard {
    spawn_run_with_env(dir, pipeline, extra, &[])
}

/// [`spawn_run`] with environment variables (a shipped pipeline's `${...}`).
pub fn spawn_run_with_env(dir: &Path, pipeline: &Path, extra: &[&str], env: &[(&str, String)]) -> Guard {
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("flowgate.log")).unwrap();
    flowgate()
        .arg("run")
        .arg(pipeline)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map(Guard)
        .expect("flowgate starts")
}

/// Writes `text` to `dir/name`; the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("flowgate.log")).unwrap_or_default()
}

pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a child we own; no memory is shared.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill failed");
}

/// Waits for the child to exit, killing it past `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("flowgate did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Resident memory of a running process, in KiB. Panics when it cannot be
/// read (the process is gone), so that a memory bound cannot pass on a zero.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status:\n{status}"));
    assert!(kib > 0, "process {pid} has no resident memory");
    kib
}

/// A loopback port kept for one server that must be given its port before it
/// starts (tansu, moto, MariaDB, Postgres, an embedded registry), for as long
/// as the value lives: keep it beside the server, across its restarts. A port
/// picked by binding port 0 and released could be handed to another test
/// process in between; this one comes from outside the kernel's ephemeral
/// range (see [`port_range`]), so the kernel gives it to no one, and a lock on
/// a file per port keeps the other test processes off it. Flowgate's own
/// listeners bind port 0 instead and report the port (see [`metrics_port`]).
#[derive(Debug)]
pub struct Port {
    pub port: u16,
    /// Held open for the reservation; the OS drops the lock with the process,
    /// so a killed test leaves no stale reservation behind.
    _lock: std::fs::File,
}

/// Reserves a [`Port`]: the first candidate, from a random point of
/// [`port_range`], that no other test process has locked and that nothing
/// listens on (a server left over from a killed run keeps its port but not the
/// lock, which children do not inherit).
pub fn reserve_port() -> Port {
    use std::hash::BuildHasher;
    let range = port_range();
    let dir = std::env::temp_dir().join("flowgate-test-ports");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let first = u32::from(*range.start());
    let count = u32::from(*range.end()) - first + 1;
    // Parallel test processes start at different points, so they seldom try the
    // same candidates (RandomState is seeded by the OS in each process).
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let seed = std::collections::hash_map::RandomState::new().hash_one((std::process::id(), nanos));
    let offset = (seed % u64::from(count)) as u32;
    for i in 0..count {
        let port = (first + (offset + i) % count) as u16;
        let path = dir.join(format!("port-{port}.lock"));
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(e)) => panic!("cannot lock {}: {e}", path.display()),
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Port { port, _lock: lock };
        }
    }
    panic!(
        "no port of {range:?} is free: other tests hold them all (locks in {}), or other servers listen on them",
        dir.display()
    );
}

/// Where [`reserve_port`] looks: 20000-29999, unless the kernel's ephemeral
/// range (`net.ipv4.ip_local_port_range`, where it picks the ports of binds to
/// port 0 and of outgoing connections) overlaps it; then the larger space
/// beside that range, above 10000 (below are the usual ports of services).
fn port_range() -> std::ops::RangeInclusive<u16> {
    const PREFERRED: (u32, u32) = (20_000, 29_999);
    const FLOOR: u32 = 10_000;
    const MIN_PORTS: u32 = 1_000;
    let file = "/proc/sys/net/ipv4/ip_local_port_range";
    let (lo, hi) = match std::fs::read_to_string(file) {
        Ok(text) => {
            let bounds: Result<Vec<u32>, _> = text.split_whitespace().map(str::parse::<u32>).collect();
            match bounds.as_deref() {
                Ok(&[lo, hi]) => (lo, hi),
                _ => panic!("cannot read the ephemeral port range in {file}: {text:?}"),
            }
        }
        // Linux's default.
        Err(_) => (32_768, 60_999),
    };
    let size = |(a, b): (u32, u32)| (b + 1).saturating_sub(a);
    let (start, end) = if PREFERRED.1 < lo || hi < PREFERRED.0 {
        PREFERRED
    } else {
        let below = (FLOOR, lo.saturating_sub(1));
        let above = (hi + 1, 65_535);
        let (a, b) = if size(below) >= size(above) { below } else { above };
        assert!(
            size((a, b)) >= MIN_PORTS,
            "the ephemeral port range {lo}-{hi} ({file}) leaves no {MIN_PORTS} ports above {FLOOR} for test servers: \
             narrow it (sysctl net.ipv4.ip_local_port_range)"
        );
        (a, b.min(a + PREFERRED.1 - PREFERRED.0))
    };
    start as u16..=end as u16
}

/// A port nothing answers on, for as long as the value lives: a socket bound
/// to it that never listens, so a connection is refused and no other test can
/// take the port meanwhile (a port picked and released could be reused).
pub struct ClosedPort {
    _socket: std::os::fd::OwnedFd,
    pub port: u16,
}

pub fn closed_port() -> ClosedPort {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns; the
    // address structure is zeroed and fully initialised before use.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let socket = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::bind(fd, (&raw const addr).cast(), len);
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let mut len = len;
        let rc = libc::getsockname(fd, (&raw mut addr).cast(), &mut len);
        assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
        ClosedPort { _socket: socket, port: u16::from_be(addr.sin_port) }
    }
}

/// The port `flowgate run --metrics-addr 127.0.0.1:0` bound, read from its log
/// in `dir` (no port is picked and released: another test could take it).
pub fn metrics_port(dir: &Path) -> u16 {
    let mut port = None;
    let found = wait_for(Duration::from_secs(30), || {
        port = log(dir).lines().filter(|l| l.contains("serving /metrics")).find_map(|l| {
            let at = l.split_once("bound=").or_else(|| l.split_once("\"bound\":\""))?.1;
            let addr: String = at.chars().take_while(|c| c.is_ascii_digit() || ".:[]".contains(*c)).collect();
            addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
        });
        port.is_some()
    });
    assert!(found, "no metrics address in the log:\n{}", log(dir));
    port.expect("found")
}

/// A plain HTTP/1.0 GET: (status code, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

/// The value of a Prometheus sample such as `flowgate_records_in_total{pipeline="x"}`:
/// `name` itself, not a longer name that starts with it.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// [`metric`], which must be there: panics with the page otherwise.
pub fn expect_metric(body: &str, name: &str) -> f64 {
    metric(body, name).unwrap_or_else(|| panic!("no `{name}` sample in /metrics:\n{body}"))
}

/// Writes `n` JSON lines `{"id":i,...}` with a payload of about `size` bytes.
pub fn write_jsonl(path: &Path, n: u64, size: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let pad = "x".repeat(size.saturating_sub(40));
    for i in 0..n {
        writeln!(f, r#"{{"id":{i},"name":"user-{i}","pad":"{pad}"}}"#).unwrap();
    }
    f.flush().unwrap();
}

/// Integer columns of a query against a SQLite file: empty while the file or
/// the table is not there yet; any other failure panics.
pub async fn sqlite_rows(db: &Path, sql: &str) -> Vec<Vec<Option<i64>>> {
    use sqlx::{Connection, Row};
    if !db.exists() {
        return Vec::new();
    }
    let url = format!("sqlite:{}?mode=ro", db.display());
    let mut conn =
        sqlx::SqliteConnection::connect(&url).await.unwrap_or_else(|e| panic!("cannot open {}: {e}", db.display()));
    let rows = match sqlx::query(sqlx::AssertSqlSafe(sql.to_string())).fetch_all(&mut conn).await {
        Ok(rows) => rows,
        Err(sqlx::Error::Database(e)) if e.message().starts_with("no such table") => return Vec::new(),
        Err(e) => panic!("{sql}: {e}"),
    };
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.try_get::<Option<i64>, _>(i).unwrap_or_else(|e| panic!("{sql}, column {i}: {e}")))
                .collect()
        })
        .collect()
}

/// Where `scripts/build-plugins.sh` puts plugins (`scripts/test.sh` runs it first).
pub fn plugins_dir() -> PathBuf {
    std::env::var_os("FLOWGATE_PLUGINS").map(PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/flowgate-target"));
        target.join("plugins")
    })
}

/// A built plugin.
pub fn plugin(name: &str) -> PathBuf {
    let path = plugins_dir().join(name);
    assert!(path.exists(), "{} is missing: run scripts/build-plugins.sh (scripts/test.sh does)", path.display());
    path
}

/// Records written by a file sink with `format: record`, as JSON. The file
/// must exist (a file sink creates it when the pipeline starts): a wrong path
/// fails instead of reading as "no records".
pub fn records(path: &Path) -> Vec<serde_json::Value> {
    records_after_kills(path, 0)
}

/// [`records`] of a file a pipeline was killed (`kill -9`) while writing, up
/// to `kills` times: a kill in the middle of a write leaves a torn line (the
/// next run puts a newline after it; its records were never acknowledged and
/// come again), which is skipped. More torn lines than kills fail.
pub fn records_after_kills(path: &Path, kills: usize) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_records(&text, kills)
}

fn parse_records(text: &str, kills: usize) -> Vec<serde_json::Value> {
    let (mut torn, mut out) = (Vec::new(), Vec::new());
    for line in text.lines() {
        match serde_json::from_str(line) {
            Ok(v) => out.push(v),
            Err(_) => torn.push(line),
        }
    }
    assert!(torn.len() <= kills, "{} torn lines after {kills} kills: {torn:.80?}", torn.len());
    out
}

/// [`records`] while a pipeline may still be writing: none before the file
/// exists, and not the line being written (after the last newline).
pub fn records_so_far(path: &Path) -> Vec<serde_json::Value> {
    if !path.exists() {
        return Vec::new();
    }
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let lines = &bytes[..bytes.iter().rposition(|&b| b == b'\n').unwrap_or(0)];
    parse_records(std::str::from_utf8(lines).expect("complete lines are UTF-8"), 0)
}

/// A running process (`flowgate`, a service), killed if the test fails
/// before stopping it.
pub struct Guard(pub Child);

impl Guard {
    /// Waits for the process to finish, with its output (like
    /// `Child::wait_with_output`, which would take the child out of the guard).
    pub fn wait_with_output(mut self) -> std::io::Result<std::process::Output> {
        fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<std::io::Result<Vec<u8>>> {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                if let Some(mut p) = pipe {
                    p.read_to_end(&mut out)?;
                }
                Ok(out)
            })
        }
        let (stdout, stderr) = (drain(self.0.stdout.take()), drain(self.0.stderr.take()));
        let status = self.0.wait()?;
        let joined = |h: std::thread::JoinHandle<std::io::Result<Vec<u8>>>| h.join().expect("reader thread");
        Ok(std::process::Output { status, stdout: joined(stdout)?, stderr: joined(stderr)? })
    }
}

impl std::ops::Deref for Guard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Guard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn kill(child: &mut Child) {
    signal(child, libc::SIGKILL);
    let _ = child.wait();
}

pub fn stop(child: &mut Child, dir: &Path) {
    signal(child, libc::SIGTERM);
    let status = wait_exit(child, Duration::from_secs(60));
    assert!(status.success(), "flowgate failed: {status}\n{}", log(dir));
}
