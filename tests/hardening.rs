//! Hostile input and a hostile environment, against the binary: a full disk,
//! closed pipes, services down at start, records that pick their own names.
//! Each test reproduces a way records were lost, a pipeline wedged or a process
//! panicked, and checks it no longer happens.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::pipeline::{Part, Pipeline, sink, source, transform};
use common::postgres::Postgres;
use common::{Guard, flowgate, http_get, log, signal, spawn_run, wait_exit, wait_for, write_file, write_jsonl};
use serde_json::json;

/// The `id`s in a JSON-lines file; panics on a line that does not parse.
fn ids(path: &Path) -> BTreeSet<u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("a torn line in {}: {e}: {l:.80}", path.display()));
            v["id"].as_u64().unwrap()
        })
        .collect()
}

/// Starts `cmd` with a resource limit (and SIGXFSZ ignored, so that a write
/// past a file-size limit fails with EFBIG instead of killing the process).
fn limit(cmd: &mut std::process::Command, resource: libc::__rlimit_resource_t, value: libc::rlim_t) {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
            if libc::setrlimit(resource, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn a_full_disk_leaves_no_torn_line_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, 20_000, 100);
    let out = dir.path().join("out.jsonl");
    let pipeline = Pipeline::new("full-disk")
        .source(source::file(&input))
        .sink(sink::file(&out))
        .batch(json!({"size": 700}))
        .write(dir.path(), "p.yaml");
    // A file-size limit stands in for a full disk: a write past it fails
    // part-way (EFBIG) as one on a full disk does (ENOSPC).
    let stderr = std::fs::File::create(dir.path().join("flowgate.log")).unwrap();
    let mut cmd = flowgate();
    cmd.arg("run").arg(&pipeline).arg("--state-dir").arg(dir.path().join("state")).stderr(stderr);
    limit(&mut cmd, libc::RLIMIT_FSIZE, 1_000_000);
    let mut run = Guard(cmd.spawn().unwrap());
    assert!(
        wait_for(Duration::from_secs(30), || log(dir.path()).contains("write failed; retrying")),
        "{}",
        log(dir.path())
    );
    std::thread::sleep(Duration::from_millis(500));
    run.kill().unwrap();
    run.wait().unwrap();
    // The file stops short of the limit with whole lines only.
    let partial = ids(&out);
    assert!(!partial.is_empty() && partial.len() < 20_000, "{}", partial.len());
    assert!(std::fs::read(&out).unwrap().ends_with(b"\n"));
    // With room again, the rest arrives.
    let mut again = spawn_run(dir.path(), &pipeline, &[]);
    assert!(wait_exit(&mut again, Duration::from_secs(60)).success(), "{}", log(dir.path()));
    assert_eq!(ids(&out), (0..20_000).collect());
    // What it created is its user's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out), 0o600);
    assert_eq!(mode(&dir.path().join("state")), 0o700);
    for entry in std::fs::read_dir(dir.path().join("state")).unwrap() {
        assert_eq!(mode(&entry.unwrap().path()), 0o600);
    }
}

#[test]
fn a_closed_standard_output_stops_the_run_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::new("to-stdout")
        .source(source::generate(r#"{"n": ${seq}}"#))
        .sink(sink::stdout())
        .write(dir.path(), "p.yaml");
    let mut run = Guard(
        flowgate()
            .arg("run")
            .arg(&pipeline)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("flowgate.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    // `| head -1`: one line read, then the pipe is closed.
    let mut first = String::new();
    BufReader::new(run.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert_eq!(first, "{\"n\": 0}\n");
    let status = wait_exit(&mut run, Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{}", log(dir.path()));
    assert!(!log(dir.path()).contains("panicked"), "{}", log(dir.path()));
    assert!(log(dir.path()).contains("Broken pipe"), "{}", log(dir.path()));
}

#[test]
fn with_standard_error_closed_a_signal_still_drains_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let pipeline = Pipeline::new("closed-stderr")
        .source(source::generate(r#"{"id": ${seq}}"#).with("rate", 2000))
        .sink(sink::file(&out))
        .write(dir.path(), "p.yaml");
    let mut run = Guard(
        flowgate()
            .args(["--log", "debug", "run", "--progress", "50ms"])
            .arg(&pipeline)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    drop(run.stderr.take()); // The reader goes away: every log write is EPIPE.
    assert!(wait_for(Duration::from_secs(20), || ids(&out).len() > 100));
    std::thread::sleep(Duration::from_millis(300));
    signal(&run, libc::SIGINT);
    let status = wait_exit(&mut run, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_service_down_at_start_is_waited_for_and_the_other_pipelines_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut pg = Postgres::start();
    pg.stop();
    let to_pg = Pipeline::new("to-pg")
        .source(source::generate(r#"{"id": ${seq}}"#).with("count", 100))
        .sink(sink::postgres(pg.url(), "items").with("create_table", true))
        .write(dir.path(), "to-pg.yaml");
    let out = dir.path().join("out.jsonl");
    let to_file = Pipeline::new("to-file")
        .source(source::generate(r#"{"id": ${seq}}"#).with("count", 100))
        .sink(sink::file(&out))
        .write(dir.path(), "to-file.yaml");
    let mut run = Guard(
        flowgate()
            .arg("run")
            .arg(&to_pg)
            .arg(&to_file)
            .args(["--metrics-addr", "127.0.0.1:0", "--state-dir"])
            .arg(dir.path().join("state"))
            .stderr(std::fs::File::create(dir.path().join("flowgate.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let metrics = common::metrics_port(dir.path());
    // The healthy pipeline runs to its end; the other waits, reported as such.
    assert!(wait_for(Duration::from_secs(20), || ids(&out).len() == 100), "{}", log(dir.path()));
    assert!(
        wait_for(Duration::from_secs(10), || http_get(metrics, "/health")
            .is_some_and(|(code, body)| code == 503 && body.contains("\"waiting\""))),
        "{:?}",
        http_get(metrics, "/health")
    );
    assert!(run.try_wait().unwrap().is_none(), "{}", log(dir.path()));
    pg.start_again();
    let status = wait_exit(&mut run, Duration::from_secs(60));
    assert!(status.success(), "{}", log(dir.path()));
    assert_eq!(pg.sql("SELECT count(*) FROM items"), "100");
}

#[test]
fn one_pipeline_failing_for_good_leaves_the_others_unless_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let broken = Pipeline::new("broken")
        .source(source::file(dir.path().join("missing.jsonl")))
        .sink(sink::null())
        .write(dir.path(), "broken.yaml");
    let out = dir.path().join("out.jsonl");
    let endless = |name: &str, extra: serde_json::Value| {
        Pipeline::new(name)
            .source(source::generate(r#"{"id": ${seq}}"#).with("rate", 200).extend(extra))
            .sink(sink::file(&out))
    };
    let healthy = endless("healthy", json!({"count": 300})).write(dir.path(), "healthy.yaml");
    let started = Instant::now();
    let status = flowgate()
        .arg("run")
        .arg(&broken)
        .arg(&healthy)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    assert_eq!(ids(&out).len(), 300);
    assert!(started.elapsed() > Duration::from_millis(1000));
    // `--fail-fast`: the failure stops the other, which would run for ever.
    let forever = endless("forever", json!({})).write(dir.path(), "forever.yaml");
    let mut run = Guard(
        flowgate()
            .args(["run", "--fail-fast"])
            .arg(&broken)
            .arg(&forever)
            .arg("--state-dir")
            .arg(dir.path().join("state2"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert_eq!(wait_exit(&mut run, Duration::from_secs(20)).code(), Some(1));
}

/// Runs `records` through a Postgres sink with `settings` (beside its `url`),
/// dead letters to a file; the (reason, id) of each dead letter.
fn refused_by_postgres(pg: &Postgres, dir: &Path, records: &[&str], settings: serde_json::Value) -> Vec<String> {
    let input = write_file(dir, "in.jsonl", &(records.join("\n") + "\n"));
    let dlq = dir.join("dlq.jsonl");
    let _ = std::fs::remove_file(&dlq);
    let pipeline = Pipeline::new("names")
        .source(source::file(input))
        .sink(Part::new("postgres", json!({"url": pg.url()})).extend(settings))
        .dead_letter(sink::file(&dlq))
        .write(dir, "p.yaml");
    let _ = std::fs::remove_dir_all(dir.join("state"));
    let out = flowgate().arg("run").arg(&pipeline).arg("--state-dir").arg(dir.join("state")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&dlq).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["reason"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn postgres_refuses_records_whose_names_it_would_cut_or_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    // A NUL in a name, as the first record of a table to create; a 72-byte
    // name Postgres would cut to 63; a NUL in a value.
    let reasons = refused_by_postgres(
        &pg,
        dir.path(),
        &[
            r#"{"id":2,"nul\u0000col":3}"#,
            r#"{"id":3,"顧客の配送先住所の郵便番号と都道府県名と市区町村":"x"}"#,
            r#"{"id":4,"name":"a\u0000b"}"#,
            r#"{"id":5,"name":"ok"}"#,
            r#"{"ID2":6}"#,
            r#"{"id":7,"Name":"case"}"#,
        ],
        json!({"table": "items", "create_table": true}),
    );
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    assert!(reasons[0].contains("control character"), "{reasons:?}");
    assert!(reasons[1].contains("72 bytes long; Postgres keeps only 63"), "{reasons:?}");
    assert!(reasons[2].contains("0x00"), "{reasons:?}");
    assert!(reasons[3].contains("fields without a column in table items: `ID2`"), "{reasons:?}");
    assert!(reasons[4].contains("`Name` (the column is `name`)"), "{reasons:?}");
    assert_eq!(pg.sql("SELECT string_agg(id || ':' || name, ',') FROM items"), "5:ok");
    assert_eq!(pg.sql("SELECT count(*) FROM pg_attribute WHERE attrelid = 'items'::regclass AND attnum > 0"), "2");

    // A record picking its table: never Flowgate's own, a system schema, or
    // one outside the template's pattern.
    pg.sql("CREATE TABLE flowgate_positions (pipeline text, source text, position bigint)");
    let reasons = refused_by_postgres(
        &pg,
        dir.path(),
        &[
            r#"{"t":"flowgate_positions","pipeline":"x","source":"y","position":1}"#,
            r#"{"t":"information_schema.evil","id":1}"#,
            r#"{"t":"pg_catalog.pg_class","id":1}"#,
            r#"{"t":"items","id":8,"name":"picked"}"#,
        ],
        json!({"table": "${value.t}", "columns": ["id", "name", "pipeline", "source", "position"]}),
    );
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(pg.sql("SELECT count(*) FROM flowgate_positions"), "0");
    assert_eq!(pg.sql("SELECT count(*) FROM information_schema.tables WHERE table_name = 'evil'"), "0");
    assert_eq!(pg.sql("SELECT string_agg(name, ',' ORDER BY id) FROM items"), "ok,picked");
}

#[test]
fn validate_check_connects_to_database_sinks_and_never_shows_their_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    let down_port = common::closed_port();
    let down = down_port.port;
    let check = |name: &str, url: &str, table: &str| {
        let file = Pipeline::new(name)
            .source(source::generate("{}").with("count", 1))
            .sink(sink::postgres(url, table))
            .write(dir.path(), &format!("{name}.yaml"));
        let out = flowgate().args(["validate", "--check"]).arg(&file).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout))
    };
    let (code, text) = check("down", &format!("postgres://app:pw-one@127.0.0.1:{down}/db?password=pw-two"), "items");
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains(&format!("cannot connect to postgres://app:***@127.0.0.1:{down}/db?password=***")), "{text}");
    assert!(text.contains("refused"), "{text}");
    assert!(!text.contains("pw-one") && !text.contains("pw-two"), "{text}");
    let (code, text) = check("missing", &pg.url(), "items");
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("table items does not exist"), "{text}");
    pg.sql("CREATE TABLE items (id int)");
    let (code, text) = check("there", &pg.url(), "items");
    assert_eq!(code, Some(0), "{text}");
}

#[test]
fn idle_connections_to_the_metrics_port_cannot_starve_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, 1000, 60);
    let out = dir.path().join("out.jsonl");
    let pipeline = Pipeline::new("flooded")
        .source(source::file(&input).with("follow", true))
        .sink(sink::file(&out))
        .write(dir.path(), "p.yaml");
    let mut cmd = flowgate();
    cmd.arg("run")
        .arg(&pipeline)
        .args(["--metrics-addr", "127.0.0.1:0", "--state-dir"])
        .arg(dir.path().join("state"))
        .stderr(std::fs::File::create(dir.path().join("flowgate.log")).unwrap());
    limit(&mut cmd, libc::RLIMIT_NOFILE, 300);
    let mut run = Guard(cmd.spawn().unwrap());
    let port = common::metrics_port(dir.path());
    assert!(wait_for(Duration::from_secs(20), || ids(&out).len() == 1000), "{}", log(dir.path()));
    // 500 connections that never send a request.
    let idle: Vec<std::net::TcpStream> =
        (0..500).filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok()).collect();
    assert!(idle.len() > 300, "{}", idle.len());
    // The pipeline still opens what it needs: a rotated input file.
    std::fs::rename(&input, dir.path().join("in.old")).unwrap();
    write_jsonl(&input, 2000, 60);
    assert!(wait_for(Duration::from_secs(30), || ids(&out).len() == 2000), "{}", log(dir.path()));
    // The idle ones are closed by the server after the header timeout.
    let closed = |mut s: &std::net::TcpStream| {
        use std::io::Read;
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        matches!(s.read(&mut [0u8; 1]), Ok(0))
    };
    assert!(wait_for(Duration::from_secs(30), || http_get(port, "/health").is_some_and(|(c, _)| c == 200)));
    assert!(closed(&idle[0]));
    assert!(!log(dir.path()).contains("Too many open files"), "{}", log(dir.path()));
    signal(&run, libc::SIGINT);
    assert_eq!(wait_exit(&mut run, Duration::from_secs(20)).code(), Some(0), "{}", log(dir.path()));
}

/// A CA, and a server certificate for 127.0.0.1 signed by it, made with the
/// `openssl` command: (ca.pem, cert.pem, key.pem).
fn certificates(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=flowgate-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    for name in ["server", "client"] {
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            &format!("{name}.pem"),
        ]);
    }
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

fn hash(password: &str) -> String {
    use std::io::Write;
    let mut c =
        flowgate().args(["registry", "hash-password"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    writeln!(c.stdin.take().unwrap(), "{password}").unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `curl` against the registry: (status, body).
fn curl(ca: &Path, args: &[&str]) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca)
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // `-w` always prints the status last: `000` when nothing answered.
    let (body, code) = text.rsplit_once('\n').unwrap_or_else(|| panic!("curl printed no status: {text}"));
    let code = code.trim().parse().unwrap_or_else(|e| panic!("curl status `{code}`: {e}"));
    (code, body.to_string())
}

#[test]
fn the_registry_takes_users_roles_and_tls_and_refuses_browsers_and_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let users = write_file(
        dir.path(),
        "users",
        &format!("# name:role:hash\nadmin:admin:{}\nreader:read:{}\n", hash("adm1n pw"), hash("r34d")),
    );
    let store = format!("sqlite:{}", dir.path().join("registry.db").display());
    let tls = ["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()];
    let mut args = vec!["--users", users.to_str().unwrap()];
    args.extend(tls);
    let registry = common::registry::Registry::start_with_args(dir.path(), &store, &args);
    let url = format!("https://127.0.0.1:{}", registry.port);
    let out = common::registry::run_python("registry_access.py", &[&url, ca.to_str().unwrap(), "adm1n pw", "r34d"]);
    assert!(out.contains("ok"), "{out}");
    // What a web page could send: a form post, or a request through a name it controls.
    let (code, _) = curl(
        &ca,
        &[
            "-u",
            "admin:adm1n pw",
            "-H",
            "Content-Type: text/plain",
            "-d",
            r#"{"schema":"\"int\""}"#,
            &format!("{url}/subjects/x-value/versions"),
        ],
    );
    assert_eq!(code, 415);
    let (code, _) = curl(&ca, &["-u", "admin:adm1n pw", "-H", "Host: evil.example", &format!("{url}/subjects")]);
    assert_eq!(code, 403);
    let (code, _) = curl(&ca, &["-u", "admin:adm1n pw", &format!("{url}/subjects")]);
    assert_eq!(code, 200);
    // No plain HTTP on a TLS port.
    assert_eq!(curl(&ca, &[&format!("http://127.0.0.1:{}/subjects", registry.port)]).0, 0);
    drop(registry);

    // Read-only, and mutual TLS: a client without a certificate is not served.
    let mut args = vec!["--read-only", "--tls-client-ca", ca.to_str().unwrap()];
    args.extend(tls);
    let registry = common::registry::Registry::start_with_args(dir.path(), &store, &args);
    let url = format!("https://127.0.0.1:{}", registry.port);
    assert_eq!(curl(&ca, &[&format!("{url}/subjects")]).0, 0);
    let client_cert = dir.path().join("client.pem").display().to_string();
    let client_key = dir.path().join("client.key").display().to_string();
    let (subjects, versions) = (format!("{url}/subjects"), format!("{url}/subjects/x-value/versions"));
    let with_cert = |rest: &[&str]| {
        let mut args = vec!["--cert", client_cert.as_str(), "--key", client_key.as_str()];
        args.extend(rest);
        curl(&ca, &args)
    };
    assert_eq!(with_cert(&[&subjects]).0, 200);
    let (code, body) = with_cert(&["-H", "Content-Type: application/json", "-d", r#"{"schema":"\"int\""}"#, &versions]);
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("42205"), "{body}");
}

#[test]
fn pipelines_reach_a_protected_registry_and_an_open_one_off_loopback_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let users = write_file(dir.path(), "users", &format!("app:write:{}\n", hash("app-secret")));
    let store = format!("sqlite:{}", dir.path().join("registry.db").display());
    let registry = common::registry::Registry::start_with_args(
        dir.path(),
        &store,
        &["--users", users.to_str().unwrap(), "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
    );
    let out = std::process::Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(&ca)
        .args(["-u", "app:app-secret", "-H", "Content-Type: application/json", "-d"])
        .arg(r#"{"schema":"{\"type\":\"record\",\"name\":\"R\",\"fields\":[{\"name\":\"a\",\"type\":\"int\"}]}"}"#)
        .arg(format!("https://127.0.0.1:{}/subjects/r-value/versions", registry.port))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"id\""), "{out:?}");
    let check = |password: &str| {
        let file = Pipeline::new("protected")
            .source(source::generate(r#"{"a": 1}"#).with("count", 1))
            .transform(transform::avro(json!({"subject": "r-value"})))
            .sink(sink::null())
            .registry(json!({
                "url": format!("https://127.0.0.1:{}", registry.port),
                "ca_cert": ca.display().to_string(),
                "username": "app",
                "password": password,
            }))
            .write(dir.path(), "p.yaml");
        let out = flowgate().args(["validate", "--check"]).arg(&file).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout))
    };
    let (code, text) = check("app-secret");
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = check("wrong-secret");
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("401") && !text.contains("wrong-secret"), "{text}");

    let open = Pipeline::new("open")
        .source(source::generate(r#"{"a": 1}"#).with("count", 1))
        .transform(transform::avro(json!({"subject": "r-value"})))
        .sink(sink::null())
        .registry(json!({"serve": {"listen": "0.0.0.0:18081"}}))
        .write(dir.path(), "open.yaml");
    let out = flowgate().args(["validate"]).arg(&open).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("without authentication"), "{out:?}");
}

#[test]
fn an_unreachable_registry_store_is_named_promptly_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let closed_port = common::closed_port();
    let closed = closed_port.port;
    let out = flowgate()
        .args(["registry", "serve", "--listen", "127.0.0.1:0", "--store"])
        .arg(format!("postgres://app:store-secret@127.0.0.1:{closed}/registry"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // The connection's own error, not a pool timeout after seconds of silence.
    assert!(text.contains("refused"), "{text}");
    assert!(text.contains(&format!("postgres://app:***@127.0.0.1:{closed}/registry")), "{text}");
    assert!(!text.contains("store-secret"), "{text}");
}

/// Secrets planted in the settings of every connector never reach any output:
/// logs at debug (text and JSON), `/health`, `/metrics`, `validate` and
/// `validate --check`, dead letters.
#[test]
fn planted_secrets_reach_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let closed_port = common::closed_port();
    let closed = closed_port.port;
    let secrets = ["plantA-pg-src", "plantB-pg-sink", "plantC-mysql", "plantD-sasl", "plantE-reg-url", "plantF-reg-pw"];
    let generate = |count: u64| source::generate(r#"{"id": ${seq}}"#).with("count", count);
    let files = [
        (
            "cdc",
            Pipeline::new("cdc")
                .source(source::postgres_cdc(
                    format!("postgres://app@127.0.0.1:{closed}/db?password={}", secrets[0]),
                    &["t"],
                ))
                .sink(sink::null()),
        ),
        (
            "pg",
            Pipeline::new("pg")
                .source(generate(5))
                .sink(sink::postgres(format!("postgres://app:{}@127.0.0.1:{closed}/db", secrets[1]), "t")),
        ),
        (
            "my",
            Pipeline::new("my")
                .source(generate(5))
                .sink(sink::mysql(format!("mysql://app:{}@127.0.0.1:{closed}/db", secrets[2]), "t")),
        ),
        (
            "kafka",
            // No record in flight: a queue for an unreachable broker
            // would hold the graceful stop for half a minute.
            Pipeline::new("kafka").source(generate(0)).sink(sink::kafka(&format!("127.0.0.1:{closed}"), "t").with(
                "properties",
                json!({
                    "security.protocol": "SASL_PLAINTEXT",
                    "sasl.mechanism": "PLAIN",
                    "sasl.username": "app",
                    "sasl.password": secrets[3],
                }),
            )),
        ),
        (
            "reg",
            Pipeline::new("reg")
                .source(generate(5))
                .transform(transform::avro(json!({"subject": "s-value"})))
                .sink(sink::null())
                .registry(json!({
                    "url": format!("http://app:{}@127.0.0.1:{closed}", secrets[4]),
                    "username": "app",
                    "password": secrets[5],
                })),
        ),
        (
            "dlq",
            Pipeline::new("dlq")
                .source(source::file(write_file(dir.path(), "in.jsonl", "{\"a\":1}\nnot json\n")))
                .sink(sink::null())
                .dead_letter(sink::file(dir.path().join("dlq.jsonl"))),
        ),
    ];
    let paths: Vec<std::path::PathBuf> =
        files.iter().map(|(name, pipeline)| pipeline.write(dir.path(), &format!("{name}.yaml"))).collect();
    let mut seen = String::new();
    for check in [&["validate"][..], &["validate", "--check"]] {
        let out = flowgate().args(check).args(&paths).current_dir(dir.path()).output().unwrap();
        seen += &String::from_utf8_lossy(&out.stdout);
        seen += &String::from_utf8_lossy(&out.stderr);
    }
    // A typo beside a secret: the diagnostic's excerpt must not show it.
    let typo = Pipeline::new("typo")
        .source(generate(5))
        .sink(
            sink::kafka("b:9092", "t")
                .with("properties", json!({"sasl.password": secrets[3]}))
                .with("linger_typo", "1ms"),
        )
        .write(dir.path(), "typo.yaml");
    let out = flowgate().arg("validate").arg(&typo).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    seen += &String::from_utf8_lossy(&out.stderr);
    for format in ["text", "json"] {
        let reserved = common::reserve_port();
        let port = reserved.port;
        let log = dir.path().join(format!("{format}.log"));
        let mut run = Guard(
            flowgate()
                .args(["--log", "debug", "--log-format", format, "run", "--progress", "200ms"])
                .args(&paths)
                .args(["--metrics-addr", &format!("127.0.0.1:{port}"), "--state-dir"])
                .arg(dir.path().join(format!("state-{format}")))
                .current_dir(dir.path())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        assert!(
            wait_for(Duration::from_secs(20), || http_get(port, "/health").is_some_and(|(_, b)| b.contains("waiting")))
        );
        std::thread::sleep(Duration::from_secs(3));
        for path in ["/health", "/metrics", "/status.json"] {
            seen += &http_get(port, path).unwrap().1;
        }
        signal(&run, libc::SIGINT);
        wait_exit(&mut run, Duration::from_secs(30));
        seen += &std::fs::read_to_string(&log).unwrap();
    }
    seen += &std::fs::read_to_string(dir.path().join("dlq.jsonl")).unwrap();
    assert!(seen.contains("not json") || seen.contains("dead_letter"), "the outputs were not captured");
    for s in secrets {
        assert!(
            !seen.contains(s),
            "{s} was shown:\n{}",
            seen.lines().filter(|l| l.contains(s)).take(5).collect::<Vec<_>>().join("\n")
        );
    }
}

#[test]
fn registry_limits_refuse_oversized_schemas_and_endless_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("registry.db").display());
    let registry = common::registry::Registry::start_with_args(
        dir.path(),
        &store,
        &["--max-schema-bytes", "300", "--max-fields", "3", "--max-versions", "2"],
    );
    let url = format!("http://127.0.0.1:{}", registry.port);
    let post = |subject: &str, fields: usize, pad: usize| {
        let fields: Vec<String> =
            (0..fields).map(|i| format!(r#"{{\"name\":\"f{i}\",\"type\":\"int\",\"default\":0}}"#)).collect();
        let body = format!(
            r#"{{"schema":"{{\"type\":\"record\",\"name\":\"R\",\"doc\":\"{}\",\"fields\":[{}]}}"}}"#,
            "d".repeat(pad),
            fields.join(",")
        );
        let out = std::process::Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "-H", "Content-Type: application/json", "-d", &body])
            .arg(format!("{url}/subjects/{subject}/versions"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(post("big", 1, 400).contains("42209"));
    assert!(post("wide", 4, 0).contains("42209"));
    assert!(post("s", 1, 0).ends_with("200"));
    assert!(post("s", 2, 0).ends_with("200"));
    let third = post("s", 3, 0);
    assert!(third.contains("42205"), "{third}");
}

#[test]
fn skipped_records_are_located_not_quoted_in_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_file(dir.path(), "in.jsonl", "{\"id\":1}\n{\"ssn\":\"PERSONAL-123\",\n");
    let pipeline =
        Pipeline::new("skip").source(source::file(input)).sink(sink::null()).policy("skip").write(dir.path(), "p.yaml");
    let run = |level: &str| {
        let out = flowgate()
            .args(["--log", level, "run"])
            .arg(&pipeline)
            .arg("--state-dir")
            .arg(dir.path().join(format!("state-{level}")))
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let info = run("info");
    assert!(info.contains("skipped a refused record") && info.contains("line 2"), "{info}");
    assert!(!info.contains("PERSONAL-123"), "{info}");
    assert!(run("debug").contains("PERSONAL-123"));
}

#[test]
fn the_metrics_address_can_require_https_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let file = Pipeline::new("tls-metrics")
        .source(source::generate(r#"{"id":${seq}}"#).with("rate", 100))
        .sink(sink::null())
        .write(dir.path(), "p.yaml");
    let tls = [
        "--metrics-addr",
        "127.0.0.1:0",
        "--metrics-tls-cert",
        cert.to_str().unwrap(),
        "--metrics-tls-key",
        key.to_str().unwrap(),
        "--metrics-tls-client-ca",
        ca.to_str().unwrap(),
    ];
    let mut run = spawn_run(dir.path(), &file, &tls);
    let port = common::metrics_port(dir.path());
    let url = format!("https://127.0.0.1:{port}/health");
    let client = dir.path().join("client.pem");
    let client_key = dir.path().join("client.key");
    let with_cert = ["--cert", client.to_str().unwrap(), "--key", client_key.to_str().unwrap(), &url];
    let ok = || curl(&ca, &with_cert).0 == 200;
    assert!(wait_for(Duration::from_secs(10), ok), "{}", log(dir.path()));
    assert_eq!(curl(&ca, &[&url]).0, 0, "no client certificate, no answer");
    assert_eq!(http_get(port, "/health").map(|(c, _)| c), None, "no plain HTTP");
    signal(&run, libc::SIGINT);
    assert_eq!(wait_exit(&mut run, Duration::from_secs(20)).code(), Some(0), "{}", log(dir.path()));
}
