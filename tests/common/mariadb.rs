//! A private MariaDB server per test: `mariadb-install-db` into a temporary
//! directory, on a loopback port of its own (Debian's `mariadb-server`, which
//! `scripts/setup.sh` installs).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Port, reserve_port};

pub struct MariaDb {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    /// Kept across [`MariaDb::start_again`], and released only after the
    /// server is stopped (fields drop after `Drop::drop`).
    _reserved: Port,
}

impl MariaDb {
    pub fn start() -> MariaDb {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .stdin(Stdio::null())
            .output()
            .expect("mariadb-install-db is missing: run scripts/setup.sh (or scripts/test.sh)");
        assert!(out.status.success(), "mariadb-install-db failed: {}", String::from_utf8_lossy(&out.stderr));
        let reserved = reserve_port();
        let mut db = MariaDb { port: reserved.port, dir, child: None, _reserved: reserved };
        db.start_again();
        db.sql("CREATE DATABASE flowgate");
        db
    }

    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/flowgate", self.port)
    }

    pub fn start_again(&mut self) {
        let d = self.dir.path();
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", d.join("sock").display()))
            .arg(format!("--port={}", self.port))
            .args(["--bind-address=127.0.0.1", "--user=root", "--skip-name-resolve", "--skip-log-bin"])
            .args(["--innodb-buffer-pool-size=64M", "--innodb-log-file-size=48M", "--max-connections=50"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("server.log")).unwrap())
            .spawn()
            .expect("mariadbd starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.query("SELECT 1").is_ok_and(|o| o == "1") {
            assert!(Instant::now() < deadline, "MariaDB did not start:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server as an operator would (SIGTERM, clean shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on a child we own.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    fn query(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .args(["-h", "127.0.0.1", "-P", &self.port.to_string(), "-u", "root", "-N", "-B", "-e", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs SQL in database `flowgate` (once it exists); returns tab-separated rows.
    pub fn sql(&self, sql: &str) -> String {
        let sql = if sql.starts_with("CREATE DATABASE") { sql.to_string() } else { format!("USE flowgate; {sql}") };
        self.query(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
