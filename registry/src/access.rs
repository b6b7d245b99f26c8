//! Who may do what on the registry: an allowed-hosts check (no DNS
//! rebinding), JSON bodies only for writes (no cross-origin form posts from a
//! browser), HTTP basic authentication with roles, and a read-only mode.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::Digest as _;

use super::api::Error;

/// What a user may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read schemas, subjects and configuration; look schemas up; test compatibility.
    Read,
    /// Also register schemas (what a producer needs).
    Write,
    /// Also delete, and change compatibility levels and modes.
    Admin,
}

struct User {
    role: Role,
    /// An argon2 PHC string: a salted, slow hash.
    hash: String,
}

/// The access rules of one registry.
pub struct Access {
    users: Option<HashMap<String, User>>,
    read_only: bool,
    hosts: Vec<String>,
    /// Credentials that verified, by a digest of the `Authorization` header:
    /// argon2 costs tens of milliseconds, a request should not.
    verified: Mutex<HashMap<[u8; 32], Role>>,
    /// One password verification at a time, off the async threads: a flood of
    /// wrong passwords takes one core at most.
    verifying: tokio::sync::Semaphore,
    /// A hash of a random password, verified for unknown users.
    decoy: String,
}

/// Hashes a password for a users file line (`name:role:HASH`).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    use rand_core::OsRng;
    let salt = SaltString::generate(&mut OsRng);
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_string())
}

fn load_users(path: &Path) -> anyhow::Result<HashMap<String, User>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut users = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| anyhow::anyhow!("{}:{}: {why} (expected `name:role:hash`)", path.display(), n + 1);
        let mut parts = line.splitn(3, ':');
        let (Some(name), Some(role), Some(hash)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("not a user line"));
        };
        let role = match role {
            "read" => Role::Read,
            "write" => Role::Write,
            "admin" => Role::Admin,
            _ => return Err(bad("the role is not read, write or admin")),
        };
        PasswordHash::new(hash).map_err(|_| bad("the hash is not one `flowgate registry hash-password` makes"))?;
        users.insert(name.to_string(), User { role, hash: hash.to_string() });
    }
    if users.is_empty() {
        anyhow::bail!("{} lists no users", path.display());
    }
    Ok(users)
}

impl Access {
    pub fn new(config: &flowgate_avro::config::ServeConfig, bound: std::net::SocketAddr) -> anyhow::Result<Access> {
        let users = config.users.as_deref().map(load_users).transpose()?;
        let mut hosts: Vec<String> = config.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        hosts.push(bound.ip().to_string());
        if bound.ip().is_loopback() {
            hosts.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
        }
        if bound.ip().is_unspecified() && config.allowed_hosts.is_empty() {
            // Every address of the machine: the Host check cannot tell them
            // apart, so names must be listed to be checked.
            hosts.clear();
        }
        let decoy = match users {
            Some(_) => hash_password(&format!("{:x}", rand_core::RngCore::next_u64(&mut rand_core::OsRng)))?,
            None => String::new(),
        };
        Ok(Access {
            decoy,
            users,
            read_only: config.read_only,
            hosts,
            verified: Mutex::default(),
            verifying: tokio::sync::Semaphore::new(1),
        })
    }

    fn host_allowed(&self, request: &Request) -> bool {
        let Some(host) = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return true; // HTTP/1.0 clients; browsers always send one.
        };
        if self.hosts.is_empty() {
            return true;
        }
        // `name:port`, `[::1]:port`, `name`.
        let name = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(rest),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h),
        };
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    /// The role of the request's credentials; `None` when they are wrong.
    async fn role(&self, users: &HashMap<String, User>, auth: Option<String>) -> Option<Role> {
        let auth = auth?;
        let key: [u8; 32] = sha2::Sha256::digest(auth.as_bytes()).into();
        if let Some(role) = self.verified.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Some(*role);
        }
        let decoded = base64::engine::general_purpose::STANDARD.decode(auth.strip_prefix("Basic ")?.trim()).ok()?;
        let (name, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
        // An unknown user costs a verification too, against a hash no
        // password fits: the time of a 401 does not tell which users exist.
        let (hash, role) = match users.get(name) {
            Some(user) => (user.hash.clone(), Some(user.role)),
            None => (self.decoy.clone(), None),
        };
        let password = password.to_string();
        let _turn = self.verifying.acquire().await.ok()?;
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
        })
        .await
        .ok()?;
        let role = role.filter(|_| ok)?;
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() > 1024 {
            verified.clear();
        }
        verified.insert(key, role);
        Some(role)
    }
}

/// The role a request needs.
fn needed(method: &Method, path: &str) -> Role {
    match *method {
        Method::GET | Method::HEAD | Method::OPTIONS => Role::Read,
        // Lookups and compatibility tests change nothing.
        Method::POST if path.starts_with("/compatibility/") => Role::Read,
        Method::POST if path.trim_end_matches('/').ends_with("/versions") => Role::Write,
        Method::POST => Role::Read,
        _ => Role::Admin,
    }
}

/// Media types a registry client sends its JSON as.
fn json_body(request: &Request) -> bool {
    let Some(ct) = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let media = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    matches!(
        media.as_str(),
        "application/json" | "application/vnd.schemaregistry.v1+json" | "application/vnd.schemaregistry+json"
    )
}

/// The middleware: checks a request before the API sees it.
pub async fn guard(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    if !access.host_allowed(&request) {
        return Error::new(StatusCode::FORBIDDEN, 40302, "This host name is not served here").into_response();
    }
    let needs = needed(request.method(), request.uri().path());
    if let Some(users) = &access.users {
        // The header is taken out first: the request's body may not be held
        // across an await by a future that must be `Send`.
        let auth = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(String::from);
        match access.role(users, auth).await {
            None => {
                let mut r = Error::new(StatusCode::UNAUTHORIZED, 40101, "Unauthorized").into_response();
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Basic realm=\"flowgate-registry\""),
                );
                return r;
            }
            Some(role) if role < needs => {
                return Error::new(
                    StatusCode::FORBIDDEN,
                    40301,
                    format!("This user may not do that (it needs the {needs:?} role)"),
                )
                .into_response();
            }
            Some(_) => {}
        }
    }
    if needs > Role::Read && access.read_only {
        return Error::new(StatusCode::UNPROCESSABLE_ENTITY, 42205, "This registry is read-only").into_response();
    }
    if matches!(*request.method(), Method::POST | Method::PUT) && !json_body(&request) {
        return Error::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            415,
            "Send the body as application/vnd.schemaregistry.v1+json or application/json",
        )
        .into_response();
    }
    next.run(request).await
}
