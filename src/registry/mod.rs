//! Flowgate's own Schema Registry: the Confluent Schema Registry REST API that
//! Kafka clients use (subjects, versions, schemas by id, compatibility checks,
//! global and per-subject compatibility), for Avro schemas, stored in SQLite or
//! Postgres. `flowgate registry serve` runs it alone; a pipeline's
//! `registry: {serve: ...}` runs it inside `flowgate run`.
//!
//! Reads are served from memory; a change is committed to the store before it
//! is answered. One registry process per store.

mod api;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use apache_avro::Schema;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};

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
        match SchemaCompatibility::can_read(writer, reader) {
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

struct Stored {
    text: String,
    schema: Schema,
}

#[derive(Default)]
struct State {
    /// By id; ids are never reused, even after a permanent delete, so data
    /// written with an old id stays readable.
    schemas: HashMap<u32, Arc<Stored>>,
    by_text: HashMap<String, u32>,
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

    /// The reasons `schema` cannot join `subject` under `level`, checked against
    /// the newest live version, or all of them for transitive levels.
    fn refusals(&self, subject: &str, level: Level, schema: &Schema) -> Vec<String> {
        let mut live: Vec<&VersionRow> = self.live(subject).collect();
        live.reverse();
        if !level.transitive() {
            live.truncate(1);
        }
        live.iter()
            .filter_map(|v| {
                let old = &self.schemas[&v.id].schema;
                incompatibility(level, old, schema).map(|why| format!("version {}: {why}", v.version))
            })
            .collect()
    }
}

type Writer = tokio::sync::OwnedMutexGuard<()>;

/// The registry: its state in memory and its store.
pub struct Registry {
    state: RwLock<State>,
    store: Store,
    /// One change at a time: the store and the memory move together.
    writer: Arc<tokio::sync::Mutex<()>>,
}

/// A parsed schema and the text it is known by: the submitted JSON, compact and
/// with its object keys sorted, so that neither whitespace nor key order makes
/// a different schema, while every property (`connect.name`, `java-class`,
/// ...) is kept for the clients.
pub struct Parsed {
    schema: Schema,
    text: String,
}

pub fn parse_schema(text: &str) -> Result<Parsed, String> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("Invalid schema: {e}"))?;
    let schema = Schema::parse(&json).map_err(|e| format!("Invalid schema: {e}"))?;
    Ok(Parsed { schema, text: sorted(&json).to_string() })
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
    pub async fn open(store_url: &str) -> anyhow::Result<Arc<Registry>> {
        let store = Store::open(store_url).await?;
        let content = store.load().await?;
        let mut state = State::default();
        for (id, text) in content.schemas {
            let schema =
                Schema::parse_str(&text).map_err(|e| anyhow::anyhow!("stored schema {id} does not parse: {e}"))?;
            state.by_text.insert(text.clone(), id);
            state.schemas.insert(id, Arc::new(Stored { text, schema }));
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
        Ok(Arc::new(Registry { state: RwLock::new(state), store, writer: Arc::default() }))
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
        let (id, new_schema, version) = {
            let state = self.read();
            let known = state.by_text.get(&parsed.text).copied();
            if let Some(id) = known
                && state.live(subject).any(|v| v.id == id)
            {
                return Ok(id);
            }
            let refusals = state.refusals(subject, state.level(subject), &parsed.schema);
            if !refusals.is_empty() {
                return Err(api::Error::incompatible(subject, &refusals));
            }
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
            changes.push(Change::Schema { id, text: parsed.text.clone() });
        }
        changes.push(Change::Version(row.clone()));
        self.commit(turn, changes, move |s| {
            if new_schema {
                s.by_text.insert(parsed.text.clone(), id);
                s.schemas.insert(id, Arc::new(Stored { text: parsed.text, schema: parsed.schema }));
            }
            s.subjects.entry(row.subject.clone()).or_default().push(row);
        })
        .await?;
        tracing::info!(subject, id, version, "schema registered");
        Ok(id)
    }
}

/// Starts the registry on `listen` with the store at `store_url`; returns the
/// bound address (binding happens before this returns, so a taken port fails).
pub async fn serve(listen: SocketAddr, store_url: &str) -> anyhow::Result<SocketAddr> {
    let registry = Registry::open(store_url).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve the schema registry on {listen}: {e}"))?;
    let bound = listener.local_addr()?;
    let app = api::router(registry);
    tokio::spawn(crate::http::serve(listener, app));
    tracing::info!(address = %bound, "schema registry listening");
    Ok(bound)
}
