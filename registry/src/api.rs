//! The REST API, as Confluent's clients call it: JSON bodies whatever the
//! content type, `application/vnd.schemaregistry.v1+json` answers, errors as
//! `{"error_code", "message"}` with Confluent's codes.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::store::{Change, VersionRow};
use super::{Level, Registry};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

type Reg = State<Arc<Registry>>;
type Params = Query<HashMap<String, String>>;
type Reply = Result<Response, Error>;

pub struct Error {
    status: StatusCode,
    code: u32,
    message: String,
}

impl Error {
    pub(super) fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Error { status, code, message: message.into() }
    }

    fn subject_not_found(subject: &str) -> Self {
        Error::new(StatusCode::NOT_FOUND, 40401, format!("Subject '{subject}' not found."))
    }

    fn version_not_found(version: &str) -> Self {
        Error::new(StatusCode::NOT_FOUND, 40402, format!("Version {version} not found."))
    }

    fn schema_not_found(what: impl std::fmt::Display) -> Self {
        Error::new(StatusCode::NOT_FOUND, 40403, format!("Schema {what} not found"))
    }

    fn invalid_schema(message: impl Into<String>) -> Self {
        Error::new(StatusCode::UNPROCESSABLE_ENTITY, 42201, message)
    }

    pub fn incompatible(subject: &str, reasons: &[String]) -> Self {
        Error::new(
            StatusCode::CONFLICT,
            409,
            format!(
                "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
                reasons.join("; ")
            ),
        )
    }

    /// A schema refused before any check: not valid, or over a limit.
    pub fn refused(r: super::Refused) -> Self {
        match r {
            super::Refused::Invalid(m) => Error::invalid_schema(m),
            // Confluent's code for a schema too large to register.
            super::Refused::TooLarge(m) => Error::new(StatusCode::UNPROCESSABLE_ENTITY, 42209, m),
        }
    }

    pub fn too_many_versions(subject: &str, max: usize) -> Self {
        Error::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42205,
            format!("Subject '{subject}' has {max} versions, the most this registry keeps; delete old ones first"),
        )
    }

    pub fn internal(e: &dyn std::fmt::Display) -> Self {
        Error::new(StatusCode::INTERNAL_SERVER_ERROR, 50001, format!("Internal error: {e}"))
    }

    pub fn store(e: &sqlx::Error) -> Self {
        tracing::error!(error = %e, "the schema registry store refused a change");
        Error::new(StatusCode::INTERNAL_SERVER_ERROR, 50001, format!("Error in the backend data store: {e}"))
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = json!({"error_code": self.code, "message": self.message});
        (self.status, [(header::CONTENT_TYPE, CONTENT_TYPE)], body.to_string()).into_response()
    }
}

fn ok(body: Value) -> Reply {
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], body.to_string()).into_response())
}

/// `true`, `True` and `TRUE` alike: clients differ.
fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

#[derive(Clone, Copy)]
enum Version {
    Latest,
    Number(u32),
}

fn version(v: &str) -> Result<Version, Error> {
    match v {
        "latest" | "-1" => Ok(Version::Latest),
        n => {
            n.parse::<u32>().ok().filter(|n| (1..=i32::MAX as u32).contains(n)).map(Version::Number).ok_or_else(|| {
                Error::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    42202,
                    format!(
                        "The specified version '{v}' is not a valid version id. Allowed values are between [1, 2^31-1] \
                     and the string \"latest\""
                    ),
                )
            })
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<Value>>,
}

async fn schema_body(r: &Registry, body: &[u8]) -> Result<super::Parsed, Error> {
    let b: SchemaBody = serde_json::from_slice(body)
        .map_err(|e| Error::invalid_schema(format!("The request is not a schema registration: {e}")))?;
    if b.schema_type.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("AVRO")) {
        return Err(Error::invalid_schema("Only AVRO schemas are supported by this registry"));
    }
    if b.references.is_some_and(|r| !r.is_empty()) {
        return Err(Error::invalid_schema("Schema references are not supported by this registry"));
    }
    r.parse(b.schema).await
}

pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/", get(root).post(root))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", axum::routing::post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route("/subjects/{subject}/versions/{version}", get(get_version).delete(delete_version))
        .route("/subjects/{subject}/versions/{version}/schema", get(get_version_schema))
        .route("/schemas/types", get(types))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_by_id))
        .route("/compatibility/subjects/{subject}/versions", axum::routing::post(compatible_with_all))
        .route("/compatibility/subjects/{subject}/versions/{version}", axum::routing::post(compatible_with_version))
        .route("/config", get(get_global).put(put_global).delete(delete_global))
        .route("/config/{subject}", get(get_config).put(put_config).delete(delete_config))
        .route("/mode", get(mode))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(count))
        .with_state(registry)
}

/// `flowgate_registry_requests_total{method, status}`, for `/metrics`.
async fn count(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    // Known methods only: a label per made-up method would grow without bound.
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        _ => "OTHER",
    };
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("flowgate_registry_requests_total", "method" => method, "status" => status).increment(1);
    response
}

async fn root() -> Reply {
    ok(json!({}))
}

async fn not_found() -> Error {
    Error::new(StatusCode::NOT_FOUND, 404, "HTTP 404 Not Found")
}

async fn method_not_allowed() -> Error {
    Error::new(StatusCode::METHOD_NOT_ALLOWED, 405, "HTTP 405 Method Not Allowed")
}

async fn mode() -> Reply {
    ok(json!({"mode": "READWRITE"}))
}

async fn types() -> Reply {
    ok(json!(["AVRO"]))
}

async fn subjects(State(r): Reg, Query(q): Params) -> Reply {
    let deleted = flag(&q, "deleted");
    let prefix = q.get("subjectPrefix").map_or("", String::as_str);
    let state = r.read();
    let names: Vec<&String> = state
        .subjects
        .iter()
        .filter(|(s, vs)| s.starts_with(prefix) && vs.iter().any(|v| deleted || !v.deleted))
        .map(|(s, _)| s)
        .collect();
    ok(json!(names))
}

async fn versions(State(r): Reg, Path(subject): Path<String>, Query(q): Params) -> Reply {
    let deleted = flag(&q, "deleted");
    let state = r.read();
    let vs: Vec<u32> = state
        .subjects
        .get(&subject)
        .into_iter()
        .flatten()
        .filter(|v| deleted || !v.deleted)
        .map(|v| v.version)
        .collect();
    if vs.is_empty() {
        return Err(Error::subject_not_found(&subject));
    }
    ok(json!(vs))
}

/// The version `v` of `subject` (soft-deleted ones only with `deleted`).
fn find(state: &super::State, subject: &str, v: Version, deleted: bool) -> Result<VersionRow, Error> {
    let all = state.subjects.get(subject).filter(|vs| vs.iter().any(|v| deleted || !v.deleted));
    let Some(all) = all else { return Err(Error::subject_not_found(subject)) };
    let mut visible = all.iter().filter(|x| deleted || !x.deleted);
    let found = match v {
        Version::Latest => visible.next_back(),
        Version::Number(n) => visible.find(|x| x.version == n),
    };
    found.cloned().ok_or_else(|| Error::version_not_found(&label(v)))
}

fn label(v: Version) -> String {
    match v {
        Version::Latest => "latest".to_string(),
        Version::Number(n) => n.to_string(),
    }
}

fn version_json(state: &super::State, v: &VersionRow) -> Value {
    json!({"subject": v.subject, "version": v.version, "id": v.id, "schema": state.schemas[&v.id].text})
}

async fn get_version(State(r): Reg, Path((subject, v)): Path<(String, String)>, Query(q): Params) -> Reply {
    let v = version(&v)?;
    let state = r.read();
    let row = find(&state, &subject, v, flag(&q, "deleted"))?;
    ok(version_json(&state, &row))
}

async fn get_version_schema(State(r): Reg, Path((subject, v)): Path<(String, String)>, Query(q): Params) -> Reply {
    let v = version(&v)?;
    let state = r.read();
    let row = find(&state, &subject, v, flag(&q, "deleted"))?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], state.schemas[&row.id].text.to_string()).into_response())
}

async fn register(State(r): Reg, Path(subject): Path<String>, body: Bytes) -> Reply {
    let parsed = schema_body(&r, &body).await?;
    let id = r.register(&subject, parsed).await?;
    ok(json!({"id": id}))
}

async fn lookup(State(r): Reg, Path(subject): Path<String>, Query(q): Params, body: Bytes) -> Reply {
    let parsed = schema_body(&r, &body).await?;
    let deleted = flag(&q, "deleted");
    let state = r.read();
    let Some(vs) = state.subjects.get(&subject).filter(|vs| vs.iter().any(|v| deleted || !v.deleted)) else {
        return Err(Error::subject_not_found(&subject));
    };
    let id = state.by_text.get(&*parsed.text);
    let row = vs.iter().rev().find(|v| (deleted || !v.deleted) && Some(&v.id) == id);
    match row {
        Some(row) => ok(version_json(&state, row)),
        None => Err(Error::new(StatusCode::NOT_FOUND, 40403, "Schema not found")),
    }
}

async fn delete_subject(State(r): Reg, Path(subject): Path<String>, Query(q): Params) -> Reply {
    let permanent = flag(&q, "permanent");
    let turn = r.writer().await;
    let (change, versions) = {
        let state = r.read();
        let Some(vs) = state.subjects.get(&subject).filter(|vs| !vs.is_empty()) else {
            return Err(Error::subject_not_found(&subject));
        };
        let live: Vec<u32> = vs.iter().filter(|v| !v.deleted).map(|v| v.version).collect();
        if permanent {
            if !live.is_empty() {
                return Err(Error::new(
                    StatusCode::NOT_FOUND,
                    40405,
                    format!("Subject '{subject}' was not deleted first before being permanently deleted"),
                ));
            }
            let all: Vec<u32> = vs.iter().map(|v| v.version).collect();
            (Change::Remove { subject: subject.clone(), versions: all.clone() }, all)
        } else {
            if live.is_empty() {
                return Err(Error::new(
                    StatusCode::NOT_FOUND,
                    40404,
                    format!("Subject '{subject}' was soft deleted. Set permanent=true to delete permanently"),
                ));
            }
            (Change::SoftDelete { subject: subject.clone(), versions: live.clone() }, live)
        }
    };
    let mut changes = vec![change];
    if permanent {
        changes.push(Change::DeleteConfig { subject: subject.clone() });
    }
    let subj = subject.clone();
    r.commit(turn, changes, move |s| {
        if permanent {
            s.subjects.remove(&subj);
            s.config.remove(&subj);
        } else if let Some(vs) = s.subjects.get_mut(&subj) {
            vs.iter_mut().for_each(|v| v.deleted = true);
        }
    })
    .await?;
    tracing::info!(subject, permanent, ?versions, "subject deleted");
    ok(json!(versions))
}

async fn delete_version(State(r): Reg, Path((subject, v)): Path<(String, String)>, Query(q): Params) -> Reply {
    let v = version(&v)?;
    let permanent = flag(&q, "permanent");
    let turn = r.writer().await;
    let row = {
        let state = r.read();
        // A permanent delete names a version that is already soft-deleted.
        let row = match find(&state, &subject, v, permanent) {
            Err(_) if !permanent && find(&state, &subject, v, true).is_ok_and(|r| r.deleted) => {
                return Err(Error::new(
                    StatusCode::NOT_FOUND,
                    40406,
                    format!(
                        "Subject '{subject}' Version {} was soft deleted. Set permanent=true to delete permanently",
                        label(v)
                    ),
                ));
            }
            r => r?,
        };
        if permanent && !row.deleted {
            return Err(Error::new(
                StatusCode::NOT_FOUND,
                40407,
                format!(
                    "Subject '{subject}' Version {} was not deleted first before being permanently deleted",
                    row.version
                ),
            ));
        }
        row
    };
    let change = if permanent {
        Change::Remove { subject: subject.clone(), versions: vec![row.version] }
    } else {
        Change::SoftDelete { subject: subject.clone(), versions: vec![row.version] }
    };
    let version = row.version;
    r.commit(turn, vec![change], move |s| {
        if let Some(vs) = s.subjects.get_mut(&subject) {
            if permanent {
                vs.retain(|x| x.version != version);
            } else if let Some(x) = vs.iter_mut().find(|x| x.version == version) {
                x.deleted = true;
            }
            if vs.is_empty() {
                s.subjects.remove(&subject);
            }
        }
    })
    .await?;
    ok(json!(row.version))
}

fn id_param(id: &str) -> Result<u32, Error> {
    id.parse().map_err(|_| Error::schema_not_found(id))
}

async fn schema_by_id(State(r): Reg, Path(id): Path<String>) -> Reply {
    let id = id_param(&id)?;
    let state = r.read();
    let s = state.schemas.get(&id).ok_or_else(|| Error::schema_not_found(id))?;
    ok(json!({"schema": s.text}))
}

async fn raw_schema_by_id(State(r): Reg, Path(id): Path<String>) -> Reply {
    let id = id_param(&id)?;
    let state = r.read();
    let s = state.schemas.get(&id).ok_or_else(|| Error::schema_not_found(id))?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], s.text.to_string()).into_response())
}

fn uses(state: &super::State, id: u32, deleted: bool) -> Vec<&VersionRow> {
    state.subjects.values().flatten().filter(|v| v.id == id && (deleted || !v.deleted)).collect()
}

async fn subjects_by_id(State(r): Reg, Path(id): Path<String>, Query(q): Params) -> Reply {
    let id = id_param(&id)?;
    let state = r.read();
    if !state.schemas.contains_key(&id) {
        return Err(Error::schema_not_found(id));
    }
    let mut subjects: Vec<&str> = uses(&state, id, flag(&q, "deleted")).iter().map(|v| v.subject.as_str()).collect();
    subjects.dedup();
    ok(json!(subjects))
}

async fn versions_by_id(State(r): Reg, Path(id): Path<String>, Query(q): Params) -> Reply {
    let id = id_param(&id)?;
    let state = r.read();
    if !state.schemas.contains_key(&id) {
        return Err(Error::schema_not_found(id));
    }
    let list: Vec<Value> = uses(&state, id, flag(&q, "deleted"))
        .iter()
        .map(|v| json!({"subject": v.subject, "version": v.version}))
        .collect();
    ok(json!(list))
}

fn compatibility(reasons: Vec<String>, verbose: bool) -> Reply {
    if verbose {
        ok(json!({"is_compatible": reasons.is_empty(), "messages": reasons}))
    } else {
        ok(json!({"is_compatible": reasons.is_empty()}))
    }
}

async fn compatible_with_all(State(r): Reg, Path(subject): Path<String>, Query(q): Params, body: Bytes) -> Reply {
    let parsed = schema_body(&r, &body).await?;
    let reasons = r.refusals(&subject, Arc::new(parsed.schema)).await?;
    compatibility(reasons, flag(&q, "verbose"))
}

async fn compatible_with_version(
    State(r): Reg,
    Path((subject, v)): Path<(String, String)>,
    Query(q): Params,
    body: Bytes,
) -> Reply {
    let v = version(&v)?;
    let parsed = schema_body(&r, &body).await?;
    let (level, old) = {
        let state = r.read();
        if matches!(v, Version::Latest) && state.live(&subject).next().is_none() {
            return compatibility(Vec::new(), flag(&q, "verbose"));
        }
        let row = find(&state, &subject, v, false)?;
        (state.level(&subject), vec![(row.version, Arc::clone(&state.schemas[&row.id]))])
    };
    let reasons = r.blocking(move || super::refusals(level, &old, &parsed.schema)).await?;
    compatibility(reasons, flag(&q, "verbose"))
}

#[derive(Deserialize)]
struct ConfigBody {
    compatibility: Option<String>,
    #[serde(rename = "compatibilityLevel")]
    compatibility_level: Option<String>,
}

fn level_body(body: &[u8]) -> Result<Level, Error> {
    let invalid = || {
        Error::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, \
             forward_transitive, and full_transitive",
        )
    };
    let b: ConfigBody = serde_json::from_slice(body).map_err(|_| invalid())?;
    b.compatibility.or(b.compatibility_level).and_then(|l| l.parse().ok()).ok_or_else(invalid)
}

async fn get_global(State(r): Reg) -> Reply {
    ok(json!({"compatibilityLevel": r.read().global().as_str()}))
}

async fn put_global(State(r): Reg, body: Bytes) -> Reply {
    let level = level_body(&body)?;
    let turn = r.writer().await;
    r.commit(turn, vec![Change::SetConfig { subject: String::new(), level }], move |s| s.global = Some(level)).await?;
    ok(json!({"compatibility": level.as_str()}))
}

async fn delete_global(State(r): Reg) -> Reply {
    let turn = r.writer().await;
    let old = r.read().global();
    r.commit(turn, vec![Change::DeleteConfig { subject: String::new() }], |s| s.global = None).await?;
    ok(json!({"compatibilityLevel": old.as_str()}))
}

async fn get_config(State(r): Reg, Path(subject): Path<String>, Query(q): Params) -> Reply {
    let state = r.read();
    match state.config.get(&subject) {
        Some(level) => ok(json!({"compatibilityLevel": level.as_str()})),
        None if flag(&q, "defaultToGlobal") => ok(json!({"compatibilityLevel": state.global().as_str()})),
        None => Err(Error::new(
            StatusCode::NOT_FOUND,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )),
    }
}

async fn put_config(State(r): Reg, Path(subject): Path<String>, body: Bytes) -> Reply {
    let level = level_body(&body)?;
    let turn = r.writer().await;
    r.commit(turn, vec![Change::SetConfig { subject: subject.clone(), level }], move |s| {
        s.config.insert(subject, level);
    })
    .await?;
    ok(json!({"compatibility": level.as_str()}))
}

async fn delete_config(State(r): Reg, Path(subject): Path<String>) -> Reply {
    let turn = r.writer().await;
    let Some(old) = r.read().config.get(&subject).copied() else {
        return Err(Error::subject_not_found(&subject));
    };
    r.commit(turn, vec![Change::DeleteConfig { subject: subject.clone() }], move |s| {
        s.config.remove(&subject);
    })
    .await?;
    ok(json!({"compatibilityLevel": old.as_str()}))
}
