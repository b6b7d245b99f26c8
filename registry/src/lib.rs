//! Flowgate's own Schema Registry: the Confluent Schema Registry REST API that
//! Kafka clients use (subjects, versions, schemas by id, compatibility checks,
//! global and per-subject compatibility), for Avro schemas, stored in SQLite or
//! Postgres. `flowgate registry serve` runs it alone; a pipeline's
//! `registry: {serve: ...}` runs it inside `flowgate run` (`src/registry.rs`
//! binds and serves it).
//!
//! Reads are served from memory; a change is committed to the store before it
//! is answered. One registry process per store.

mod access;
mod api;
mod compat;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use apache_avro::Schema;
use apache_avro::schema_compatibility::Compatibility;

pub use access::hash_password;
pub use store::Store;
use store::{Change, VersionRow};

/// Compatibility levels, as Confluent names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "NONE",
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    fn transitive(self) -> bool {
        matches!(self, Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive)
    }
}

impl std::str::FromStr for Level {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "NONE" => Level::None,
            "BACKWARD" => Level::Backward,
            "BACKWARD_TRANSITIVE" => Level::BackwardTransitive,
            "FORWARD" => Level::Forward,
            "FORWARD_TRANSITIVE" => Level::ForwardTransitive,
            "FULL" => Level::Full,
            "FULL_TRANSITIVE" => Level::FullTransitive,
            _ => return Err(()),
        })
    }
}

/// Why `new` (reader or writer, by level) cannot evolve from `old`; `None` if it can.
fn incompatibility(level: Level, old: &Schema, new: &Schema) -> Option<String> {
    let check = |writer: &Schema, reader: &Schema, what: &str| -> Option<String> {
        match compat::can_read(writer, reader) {
            Ok(Compatibility::Full) => None,
            Ok(_) => Some(format!("{what}: only some values can be read (enum symbols or union branches missing)")),
            Err(e) => Some(format!("{what}: {e}")),
        }
    };
    let backward = || check(old, new, "the new schema cannot read data written with the old one");
    let forward = || check(new, old, "the old schema cannot read data written with the new one");
    match level {
        Level::None => None,
        Level::Backward | Level::BackwardTransitive => backward(),
        Level::Forward | Level::ForwardTransitive => forward(),
        Level::Full | Level::FullTransitive => backward().or_else(forward),
    }
}

/// A schema as stored: its text only, shared with the by-text index. The
/// parsed form costs about fifteen times the text; it is made again for the
/// rare compatibility check that needs it.
struct Stored {
    text: Arc<str>,
}

impl Stored {
    fn parse(&self) -> Result<Schema, String> {
        Schema::parse_str(&self.text).map_err(|e| format!("a stored schema does not parse: {e}"))
    }
}

/// Bounds on what clients may store, so that neither memory nor the
/// compatibility checks grow without limit.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The longest schema text, in bytes.
    pub max_schema_bytes: usize,
    /// Record fields, enum symbols and union branches in one schema.
    pub max_fields: usize,
    /// Versions one subject may have (soft-deleted ones included).
    pub max_versions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_schema_bytes: 1 << 20, max_fields: 10_000, max_versions: 1_000 }
    }
}

#[derive(Default)]
struct State {
    /// By id; ids are never reused, even after a permanent delete, so data
    /// written with an old id stays readable.
    schemas: HashMap<u32, Arc<Stored>>,
    by_text: HashMap<Arc<str>, u32>,
    subjects: BTreeMap<String, Vec<VersionRow>>,
    config: HashMap<String, Level>,
    global: Option<Level>,
}

impl State {
    fn global(&self) -> Level {
        self.global.unwrap_or(Level::Backward)
    }

    fn level(&self, subject: &str) -> Level {
        self.config.get(subject).copied().unwrap_or_else(|| self.global())
    }

    fn live(&self, subject: &str) -> impl Iterator<Item = &VersionRow> {
        self.subjects.get(subject).into_iter().flatten().filter(|v| !v.deleted)
    }

    /// What a schema joining `subject` under `level` is checked against: the
    /// newest live version, or all of them for transitive levels.
    fn against(&self, subject: &str, level: Level) -> Vec<(u32, Arc<Stored>)> {
        let mut live: Vec<&VersionRow> = self.live(subject).collect();
        live.reverse();
        if !level.transitive() {
            live.truncate(1);
        }
        live.iter().map(|v| (v.version, Arc::clone(&self.schemas[&v.id]))).collect()
    }
}

/// The reasons `schema` cannot follow `olds` (version, schema) under `level`.
/// CPU-heavy: run it through [`Registry::blocking`].
fn refusals(level: Level, olds: &[(u32, Arc<Stored>)], schema: &Schema) -> Vec<String> {
    olds.iter()
        .filter_map(|(version, old)| {
            let why = match old.parse() {
                Ok(old) => incompatibility(level, &old, schema)?,
                Err(e) => e,
            };
            Some(format!("version {version}: {why}"))
        })
        .collect()
}

type Writer = tokio::sync::OwnedMutexGuard<()>;

/// The registry: its state in memory and its store.
pub struct Registry {
    state: RwLock<State>,
    store: Store,
    limits: Limits,
    /// Parsing and compatibility checks run on the blocking pool, one at a
    /// time: a flood of large schemas takes one core, never the async threads
    /// that serve reads (and, inside `run`, move the pipelines).
    compute: Arc<tokio::sync::Semaphore>,
    /// One change at a time: the store and the memory move together.
    writer: Arc<tokio::sync::Mutex<()>>,
}

/// A parsed schema and the text it is known by: the submitted JSON, compact and
/// with its object keys sorted, so that neither whitespace nor key order makes
/// a different schema, while every property (`connect.name`, `java-class`,
/// ...) is kept for the clients.
pub struct Parsed {
    schema: Schema,
    text: Arc<str>,
}

/// Why a schema text cannot be stored: not a schema, or over a limit.
pub enum Refused {
    Invalid(String),
    TooLarge(String),
}

pub fn parse_schema(text: &str, limits: &Limits) -> Result<Parsed, Refused> {
    if text.len() > limits.max_schema_bytes {
        return Err(Refused::TooLarge(format!(
            "the schema is {} bytes; this registry takes at most {}",
            text.len(),
            limits.max_schema_bytes
        )));
    }
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Refused::Invalid(format!("Invalid schema: {e}")))?;
    let parts = count_parts(&json);
    if parts > limits.max_fields {
        return Err(Refused::TooLarge(format!(
            "the schema has {parts} fields, symbols and branches; this registry takes at most {}",
            limits.max_fields
        )));
    }
    let schema = Schema::parse(&json).map_err(|e| Refused::Invalid(format!("Invalid schema: {e}")))?;
    Ok(Parsed { schema, text: sorted(&json).to_string().into() })
}

/// Record fields, enum symbols and union branches, anywhere in a schema.
fn count_parts(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(branches) => branches.len() + branches.iter().map(count_parts).sum::<usize>(),
        // Fields and symbols count once each, here; what a field holds is
        // walked. Any other array in a schema is a union: its branches count.
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| match (k.as_str(), v) {
                ("fields" | "symbols", serde_json::Value::Array(items)) => {
                    items.len() + items.iter().map(count_parts).sum::<usize>()
                }
                _ => count_parts(v),
            })
            .sum(),
        _ => 0,
    }
}

/// `v` with object keys in order (whatever order serde_json's maps keep).
fn sorted(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            serde_json::Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&m[k]))).collect())
        }
        serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sorted).collect()),
        v => v.clone(),
    }
}

impl Registry {
    pub async fn open(store_url: &str, limits: Limits) -> anyhow::Result<Arc<Registry>> {
        let store = Store::open(store_url).await?;
        let content = store.load().await?;
        let mut state = State::default();
        for (id, text) in content.schemas {
            let text: Arc<str> = text.into();
            state.by_text.insert(Arc::clone(&text), id);
            state.schemas.insert(id, Arc::new(Stored { text }));
        }
        for v in content.versions {
            if !state.schemas.contains_key(&v.id) {
                anyhow::bail!(
                    "the store is inconsistent: {} version {} names schema {}, which is missing",
                    v.subject,
                    v.version,
                    v.id
                );
            }
            state.subjects.entry(v.subject.clone()).or_default().push(v);
        }
        for (subject, level) in content.config {
            if subject.is_empty() {
                state.global = Some(level);
            } else {
                state.config.insert(subject, level);
            }
        }
        tracing::info!(schemas = state.schemas.len(), subjects = state.subjects.len(), "schema registry store opened");
        Ok(Arc::new(Registry {
            state: RwLock::new(state),
            store,
            limits,
            compute: Arc::new(tokio::sync::Semaphore::new(1)),
            writer: Arc::default(),
        }))
    }

    /// Runs CPU-heavy `work` on the blocking pool, one such task at a time.
    /// The permit moves into the task: a client that hangs up does not free it
    /// before the work is done.
    async fn blocking<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, api::Error> {
        let permit = Arc::clone(&self.compute).acquire_owned().await.map_err(|e| api::Error::internal(&e))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| api::Error::internal(&e))
    }

    /// Parses a schema text off the async threads, within the limits.
    async fn parse(&self, text: String) -> Result<Parsed, api::Error> {
        let limits = self.limits;
        self.blocking(move || parse_schema(&text, &limits)).await?.map_err(api::Error::refused)
    }

    /// Why `schema` cannot join `subject` under its level, off the async threads.
    async fn refusals(&self, subject: &str, schema: Arc<Schema>) -> Result<Vec<String>, api::Error> {
        let (level, olds) = {
            let state = self.read();
            let level = state.level(subject);
            (level, state.against(subject, level))
        };
        if olds.is_empty() {
            return Ok(Vec::new());
        }
        self.blocking(move || refusals(level, &olds, &schema)).await
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the writer's turn: one change at a time, decided on the memory
    /// that the previous change left.
    async fn writer(&self) -> Writer {
        Arc::clone(&self.writer).lock_owned().await
    }

    /// Commits `changes`, then applies `update` to memory. Both happen in a task
    /// of their own, which keeps the writer's turn until it is done: a client
    /// that hangs up mid-request cancels its handler, and must neither leave the
    /// store ahead of memory nor let the next change start early.
    async fn commit(
        self: &Arc<Self>,
        turn: Writer,
        changes: Vec<Change>,
        update: impl FnOnce(&mut State) + Send + 'static,
    ) -> Result<(), api::Error> {
        let registry = Arc::clone(self);
        let task = tokio::spawn(async move {
            let _turn = turn;
            if !changes.is_empty() {
                registry.store.apply(&changes).await.map_err(|e| api::Error::store(&e))?;
            }
            update(&mut registry.state.write().unwrap_or_else(|p| p.into_inner()));
            Ok(())
        });
        task.await.unwrap_or_else(|e| Err(api::Error::internal(&e)))
    }

    /// Registers `parsed` under `subject`: the existing id when the subject has
    /// it already, else a new version after the compatibility check.
    async fn register(self: &Arc<Self>, subject: &str, parsed: Parsed) -> Result<u32, api::Error> {
        let turn = self.writer().await;
        {
            let state = self.read();
            if let Some(&id) = state.by_text.get(&parsed.text)
                && state.live(subject).any(|v| v.id == id)
            {
                return Ok(id);
            }
            let versions = state.subjects.get(subject).map_or(0, Vec::len);
            if versions >= self.limits.max_versions {
                return Err(api::Error::too_many_versions(subject, self.limits.max_versions));
            }
        }
        // The writer's turn is held across the check: the newest version
        // cannot change under it.
        let refusals = self.refusals(subject, Arc::new(parsed.schema)).await?;
        if !refusals.is_empty() {
            return Err(api::Error::incompatible(subject, &refusals));
        }
        let (id, new_schema, version) = {
            let state = self.read();
            let known = state.by_text.get(&parsed.text).copied();
            let next_id = state.schemas.keys().max().map_or(1, |m| m + 1);
            let version =
                state.subjects.get(subject).and_then(|vs| vs.iter().map(|v| v.version).max()).unwrap_or(0) + 1;
            match known {
                Some(id) => (id, false, version),
                None => (next_id, true, version),
            }
        };
        let row = VersionRow { subject: subject.to_string(), version, id, deleted: false };
        let mut changes = Vec::new();
        if new_schema {
            changes.push(Change::Schema { id, text: parsed.text.to_string() });
        }
        changes.push(Change::Version(row.clone()));
        self.commit(turn, changes, move |s| {
            if new_schema {
                s.by_text.insert(Arc::clone(&parsed.text), id);
                s.schemas.insert(id, Arc::new(Stored { text: parsed.text }));
            }
            s.subjects.entry(row.subject.clone()).or_default().push(row);
        })
        .await?;
        tracing::info!(subject, id, version, "schema registered");
        Ok(id)
    }
}

/// The registry's HTTP service for `config` (its users, roles, allowed
/// hosts, read-only mode) on the address it is bound to: the API behind the
/// access check, with a body limit that fits the largest schema allowed. The
/// runtime serves it on its own accept loop (timeouts, connection cap, TLS).
pub fn service(
    config: &flowgate_avro::config::ServeConfig,
    registry: Arc<Registry>,
    bound: SocketAddr,
    limits: Limits,
) -> anyhow::Result<axum::Router> {
    let access = Arc::new(access::Access::new(config, bound)?);
    // Room for a schema at the limit, escaped as a JSON string.
    let body_limit =
        axum::extract::DefaultBodyLimit::max(limits.max_schema_bytes.saturating_mul(2).saturating_add(64 << 10));
    Ok(api::router(registry).layer(body_limit).layer(axum::middleware::from_fn_with_state(access, access::guard)))
}
