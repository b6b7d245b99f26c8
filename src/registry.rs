//! Serving Flowgate's schema registry (the `flowgate-registry` crate) on the
//! runtime's accept loop, alone (`flowgate registry serve`) or inside a run.

use std::net::SocketAddr;
use std::path::Path;

pub use flowgate_registry::{Limits, hash_password, parse_schema};

/// Starts the registry on `listen` with the store at `store_url`; returns the
/// bound address (binding happens before this returns, so a taken port fails).
pub async fn serve(
    config: &flowgate_avro::config::ServeConfig,
    store_url: &str,
    limits: Limits,
) -> anyhow::Result<SocketAddr> {
    let listen = config.listen;
    let tls = match &config.tls {
        Some(t) => Some(crate::http::tls_acceptor(&t.cert, &t.key, t.client_ca.as_deref())?),
        None => None,
    };
    let registry = flowgate_registry::Registry::open(store_url, limits).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve the schema registry on {listen}: {e}"))?;
    let bound = listener.local_addr()?;
    let app = flowgate_registry::service(config, registry, bound, limits)?;
    tokio::spawn(crate::http::serve(listener, app, tls));
    tracing::info!(address = %bound, "schema registry listening");
    Ok(bound)
}

/// The store of an embedded registry: as configured, else `registry.db` in the state directory.
pub fn embedded_store(serve: &flowgate_avro::config::ServeConfig, state_dir: &Path) -> anyhow::Result<String> {
    if let Some(store) = &serve.store {
        return Ok(store.clone());
    }
    flowgate_sdk::files::private_dir(state_dir)
        .map_err(|e| anyhow::anyhow!("cannot create the state directory {}: {e}", state_dir.display()))?;
    Ok(format!("sqlite:{}", state_dir.join("registry.db").display()))
}
