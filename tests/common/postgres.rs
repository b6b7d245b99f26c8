//! A private PostgreSQL server per test: `initdb` into a temporary directory,
//! configured for logical replication, on a loopback port of its own. Uses the
//! machine's PostgreSQL binaries (`FLOWGATE_PG_BIN`, or the newest
//! `/usr/lib/postgresql/*/bin`); as root, the server runs as user `postgres`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{Port, log, reserve_port, wait_for};

pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLOWGATE_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run scripts/setup.sh (or scripts/test.sh)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| p.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()));
    found.pop().expect("no /usr/lib/postgresql/*/bin/initdb")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A server-side command, run as `postgres` when we are root (the server
/// refuses to run as root).
fn server_cmd(tool: &str) -> Command {
    let path = bin_dir().join(tool);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
    running: bool,
    /// Kept across [`Postgres::start_again`], and released only after the
    /// server is stopped (fields drop after `Drop::drop`).
    _reserved: Port,
}

impl Postgres {
    /// A server with `wal_level = logical`.
    pub fn start() -> Postgres {
        Postgres::start_with(&[])
    }

    /// As [`Postgres::start`], with extra `postgresql.conf` lines.
    pub fn start_with(settings: &[&str]) -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if is_root() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let mut initdb = server_cmd("initdb");
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ]);
        run(initdb, "initdb");
        let reserved = reserve_port();
        let port = reserved.port;
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             wal_level = logical\nmax_wal_senders = 10\nmax_replication_slots = 10\n\
             fsync = off\nfull_page_writes = off\nshared_buffers = 64MB\n",
            dir.path().display()
        );
        for s in settings {
            conf.push_str(s);
            conf.push('\n');
        }
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&conf);
        std::fs::write(&conf_path, text).unwrap();
        let mut pg = Postgres { dir, port, running: false, _reserved: reserved };
        pg.start_again();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the (stopped) server again on the same port and data.
    pub fn start_again(&mut self) {
        let mut c = server_cmd("pg_ctl");
        c.arg("-D").arg(self.data()).arg("-l").arg(self.dir.path().join("server.log")).args(["-w", "start"]);
        run(c, "pg_ctl start");
        self.running = true;
    }

    /// Stops the server (`fast`: disconnects clients, as a restart does).
    pub fn stop(&mut self) {
        self.stop_mode("fast");
    }

    fn stop_mode(&mut self, mode: &str) {
        if self.running {
            let mut c = server_cmd("pg_ctl");
            c.arg("-D").arg(self.data()).args(["-m", mode, "-w", "stop"]);
            run(c, "pg_ctl stop");
            self.running = false;
        }
    }

    /// The `shop` tables of the shipped Postgres pipelines, with customer 1.
    pub fn create_shop(&self) {
        self.sql(
            "CREATE SCHEMA shop;
             CREATE TABLE shop.customers (id int PRIMARY KEY, name text NOT NULL, email text);
             CREATE TABLE shop.orders (id bigserial PRIMARY KEY, customer int REFERENCES shop.customers,
               amount numeric(10,2) NOT NULL, status text NOT NULL DEFAULT 'new',
               placed_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO shop.customers VALUES (1, 'Ada', 'ada@example.com');",
        );
    }

    /// Runs SQL through psql; returns its unaligned output.
    pub fn sql(&self, sql: &str) -> String {
        self.sql_in("postgres", sql)
    }

    /// [`Postgres::sql`] in database `db`.
    pub fn sql_in(&self, db: &str, sql: &str) -> String {
        let out = self.psql().args(["-d", db, "-c", sql]).output().expect("psql runs");
        assert!(out.status.success(), "psql failed on {sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim_end().to_string()
    }

    /// A psql session reading statements from its stdin as they are written,
    /// to hold a transaction open across steps of a test.
    pub fn session(&self) -> std::process::Child {
        let mut c = self.psql();
        c.stdin(Stdio::piped()).stdout(Stdio::null()).spawn().expect("psql starts")
    }

    fn psql(&self) -> Command {
        let mut c = Command::new(bin_dir().join("psql"));
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .stdin(Stdio::null());
        c
    }

    /// Starts pgbench running `script` with `clients` connections for `seconds`.
    pub fn pgbench(&self, script: &Path, clients: u32, seconds: u32) -> std::process::Child {
        Command::new(bin_dir().join("pgbench"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-n"])
            .arg("-f")
            .arg(script)
            .args(["-c", &clients.to_string(), "-j", "1", "-T", &seconds.to_string(), "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pgbench starts")
    }

    /// `pg_current_wal_lsn()` as a number.
    pub fn current_lsn(&self) -> u64 {
        self.sql("SELECT pg_current_wal_lsn() - '0/0'").parse().unwrap()
    }

    /// The slot's confirmed position, as a number (0 when the slot is missing).
    pub fn confirmed(&self, slot: &str) -> u64 {
        let s = self.sql(&format!(
            "SELECT coalesce((SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = '{slot}'), 0)"
        ));
        s.parse().unwrap()
    }

    /// Waits until a pipeline's walsender streams from `slot`: past
    /// `START_REPLICATION` (a slot being created, or exporting its snapshot, is
    /// active too, with the walsender still in `startup`). `dir` holds the
    /// pipeline's log, shown on failure.
    pub fn wait_streaming(&self, slot: &str, dir: &Path) {
        let active = format!(
            "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.slot_name = '{slot}' AND r.state IN ('catchup', 'streaming')"
        );
        let streaming = wait_for(std::time::Duration::from_secs(60), || self.sql(&active) == "1");
        assert!(streaming, "the source did not start streaming from {slot}:\n{}", log(dir));
    }

    /// Waits until the pipeline streams and `slot` has confirmed all WAL written
    /// so far: every change is out and acknowledged.
    pub fn wait_caught_up(&self, slot: &str, dir: &Path) {
        self.wait_streaming(slot, dir);
        let target = self.current_lsn();
        let done = wait_for(std::time::Duration::from_secs(120), || self.confirmed(slot) >= target);
        assert!(done, "slot {slot} stayed at {} below {target}:\n{}", self.confirmed(slot), log(dir));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let mut c = server_cmd("pg_ctl");
            c.arg("-D").arg(self.data()).args(["-m", "immediate", "-w", "stop"]);
            let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
}
