//! A real Kafka-protocol broker for tests (tansu, installed by
//! `scripts/broker-tools.sh`), a local S3 endpoint to give it durable storage, and
//! plain librdkafka clients to fill and read topics.

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use super::{Port, reserve_port};

fn tool(name: &str) -> PathBuf {
    let tools = std::env::var_os("FLOWGATE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/flowgate-tools"));
    let path = tools.join("bin").join(name);
    assert!(path.exists(), "{} is missing: run scripts/setup.sh (or scripts/test.sh)", path.display());
    path
}

fn wait_listening(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited during start-up: {status}");
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tansu broker on a loopback port of its own; stopped when dropped.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    storage: String,
    env: Vec<(String, String)>,
    extra: Vec<String>,
    /// Kept across [`Broker::restart`], and released only after the broker is
    /// stopped (fields drop after `Drop::drop`).
    _reserved: Port,
}

impl Broker {
    /// A broker with memory storage: fast, and everything is gone when it stops.
    pub fn start() -> Broker {
        Broker::start_with("memory://tansu/", &[], &[])
    }

    pub fn start_with(storage: &str, env: &[(&str, &str)], extra: &[&str]) -> Broker {
        let reserved = reserve_port();
        let mut b = Broker {
            child: None,
            port: reserved.port,
            storage: storage.to_string(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _reserved: reserved,
        };
        b.run();
        b
    }

    fn run(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut cmd = Command::new(tool("tansu"));
        cmd.arg("broker")
            .args(["--storage-engine", &self.storage, "--listener-url", &url, "--advertised-listener-url", &url])
            .args(&self.extra)
            // These override the flags silently when set.
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Kept before waiting, so that a broker that never listens is still stopped.
        let child = self.child.insert(cmd.spawn().expect("tansu starts"));
        wait_listening(self.port, child, "tansu");
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker (SIGTERM, as an operator would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on a child we own.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Freezes the broker (SIGSTOP): its connections stay open and nothing
    /// answers, as with a hung machine; [`Broker::thaw`] resumes it.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        let child = self.child.as_ref().expect("the broker runs");
        // SAFETY: kill(2) on a child we own.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// A memory-storage broker with these topics (name, partitions) created.
    pub fn with_topics(topics: &[(&str, i32)]) -> Broker {
        let b = Broker::start();
        for (name, partitions) in topics {
            b.create_topic(name, *partitions);
        }
        b
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        create_topic(&self.addr(), name, partitions);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn create_topic(addr: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", addr).create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let result = rt.block_on(admin.create_topics([&topic], &AdminOptions::new())).expect("create topics");
    for r in result {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

/// A local S3 endpoint (moto) with a `tansu` bucket, for a broker whose data
/// survives a restart; stopped when dropped.
pub struct S3 {
    child: super::Guard,
    pub port: u16,
    /// Released after `child` (fields drop in order), once moto is stopped.
    _reserved: Port,
}

impl S3 {
    pub fn start() -> S3 {
        let reserved = reserve_port();
        let port = reserved.port;
        let mut child = Command::new(tool("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(super::Guard)
            .expect("moto_server starts");
        wait_listening(port, &mut child, "moto_server");
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        use std::io::{Read, Write};
        write!(s, "PUT /tansu HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "creating the bucket: {reply}");
        S3 { child, port, _reserved: reserved }
    }

    /// Environment for a tansu broker with `s3://tansu/` storage.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ]
    }
}

/// A plain producer; `send` waits for delivery of everything sent.
pub struct Writer {
    producer: ThreadedProducer<DefaultProducerContext>,
}

impl Writer {
    pub fn new(addr: &str) -> Writer {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", addr)
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .expect("producer");
        Writer { producer }
    }

    /// Sends `(key, value)` pairs and waits until the broker has them all.
    pub fn send(&self, topic: &str, records: impl IntoIterator<Item = (String, String)>) {
        self.send_with_header(topic, records, None);
    }

    /// As [`Writer::send`], with one header on every record.
    pub fn send_with_header(
        &self,
        topic: &str,
        records: impl IntoIterator<Item = (String, String)>,
        header: Option<(&str, &str)>,
    ) {
        for (k, v) in records {
            let mut rec = BaseRecord::to(topic).key(&k).payload(&v);
            if let Some((name, value)) = header {
                rec = rec.headers(OwnedHeaders::new().insert(Header { key: name, value: Some(value) }));
            }
            loop {
                match self.producer.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
        self.producer.flush(Duration::from_secs(60)).expect("flush");
    }
}

/// JSON records `{"id": i, "email": ..., "pad": ...}` keyed `k<i>`, for i in `range`.
pub fn numbered(range: std::ops::Range<u64>) -> impl Iterator<Item = (String, String)> {
    range.map(|i| {
        (format!("k{i}"), format!(r#"{{"id":{i},"email":"user{i}@example.com","pad":"{}"}}"#, "x".repeat(100)))
    })
}

/// Reads every partition of a topic from the start, outside any group, keeping
/// count of each key seen.
pub struct Reader {
    consumer: BaseConsumer,
    pub counts: HashMap<String, u32>,
    pub total: u64,
    /// The first `keep` records read (1000 unless [`Reader::keep_all`]).
    pub messages: Vec<Msg>,
    keep: usize,
}

#[derive(Debug, Clone)]
pub struct Msg {
    pub key: String,
    pub value: String,
    pub headers: Vec<(String, String)>,
}

impl Reader {
    pub fn new(addr: &str, topic: &str, read_committed: bool) -> Reader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", addr)
            .set("group.id", "test-reader")
            .set("enable.auto.commit", "false")
            .set("isolation.level", if read_committed { "read_committed" } else { "read_uncommitted" })
            .create()
            .expect("consumer");
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        let partitions = md.topics()[0].partitions().len() as i32;
        assert!(partitions > 0, "topic {topic} has no partitions");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).expect("assign");
        Reader { consumer, counts: HashMap::new(), total: 0, messages: Vec::new(), keep: 1000 }
    }

    /// Keeps every record read, for tests that replay the whole topic.
    pub fn keep_all(mut self) -> Reader {
        self.keep = usize::MAX;
        self
    }

    /// Reads until `done` holds or nothing new arrived for `idle`; whether `done` held.
    pub fn read_until(&mut self, idle: Duration, mut done: impl FnMut(&Reader) -> bool) -> bool {
        let mut last = Instant::now();
        loop {
            if done(self) {
                return true;
            }
            if last.elapsed() > idle {
                return false;
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                    *self.counts.entry(key).or_default() += 1;
                    self.total += 1;
                    if self.messages.len() < self.keep {
                        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                        let headers = m
                            .headers()
                            .map(|hs| {
                                hs.iter().map(|h| (h.key.to_string(), text(h.value.unwrap_or_default()))).collect()
                            })
                            .unwrap_or_default();
                        self.messages.push(Msg {
                            key: text(m.key().unwrap_or_default()),
                            value: text(m.payload().unwrap_or_default()),
                            headers,
                        });
                    }
                    last = Instant::now();
                }
                Some(Err(e)) => eprintln!("reader: {e}"),
                None => {}
            }
        }
    }

    /// Keys of `k0..k{n}` never seen.
    pub fn missing(&self, n: u64) -> Vec<String> {
        (0..n).map(|i| format!("k{i}")).filter(|k| !self.counts.contains_key(k)).collect()
    }

    pub fn duplicates(&self) -> u64 {
        self.counts.values().map(|c| u64::from(c.saturating_sub(1))).sum()
    }
}
