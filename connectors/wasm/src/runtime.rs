//! One wasmtime engine per process: compiles plugins once (cached on disk), checks
//! them against the contract, and drives epoch deadlines.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, OptLevel, StoreContextMut};

use crate::WasmError;
use crate::bindings::{v1, v2};
use crate::format::Contract;
use crate::host::HostState;

/// Granularity of plugin deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The contract new plugins are built against (`wit/transform.wit`).
pub const CONTRACT: &str = "flowgate:transform@0.2.0";

pub struct WasmRuntime {
    pub engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    /// Plugins loaded by this process, by path: several pipelines may share one.
    loaded: Mutex<HashMap<PathBuf, Arc<LoadedPlugin>>>,
}

/// A compiled plugin that fits the contract, ready to instantiate.
pub struct LoadedPlugin {
    pub path: PathBuf,
    pub pre: Pre,
    /// The contract version it was built against, whose batch format it speaks.
    pub contract: Contract,
    /// Whether the compiled code came from the on-disk cache.
    pub cached: bool,
}

/// A plugin ready to instantiate, by the contract version it exports.
pub enum Pre {
    V1(v1::TransformPre<HostState>),
    V2(v2::TransformPre<HostState>),
}

impl Pre {
    pub fn engine(&self) -> &Engine {
        match self {
            Pre::V1(p) => p.engine(),
            Pre::V2(p) => p.engine(),
        }
    }
}

/// Where compiled plugins are kept: `$FLOWGATE_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/flowgate/wasm`, else `~/.cache/flowgate/wasm`.
fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("FLOWGATE_CACHE_DIR") {
        return Some(PathBuf::from(d).join("wasm"));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("flowgate").join("wasm"))
}

impl WasmRuntime {
    /// The process-wide runtime, created on first use.
    pub fn global() -> Result<&'static WasmRuntime, WasmError> {
        static RUNTIME: OnceLock<Result<WasmRuntime, String>> = OnceLock::new();
        RUNTIME
            .get_or_init(|| WasmRuntime::new().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| WasmError::Engine(e.clone()))
    }

    fn new() -> wasmtime::Result<Self> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            // Synchronous calls only: measured 0.8 -> 0.3 us fixed cost per call.
            .concurrency_support(false)
            .cranelift_opt_level(OptLevel::Speed);
        let engine = Engine::new(&config)?;
        let ticker = engine.clone();
        std::thread::Builder::new().name("flowgate-wasm-epoch".into()).spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                ticker.increment_epoch();
            }
        })?;
        let mut linker = Linker::new(&engine);
        // Both versions of the host interface: a plugin imports the one it was built against.
        v2::Transform::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(&mut linker, |s| s)?;
        v1::Transform::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(&mut linker, |s| s)?;
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        // A wait past the call's deadline ends the call instead
        // (HostState::subscribe_duration): these two replace WASI's own.
        linker.allow_shadowing(true);
        // The version is wasmtime-wasi's own (imports of any 0.2.x resolve to
        // it); after an upgrade that changes it, this would add an instance
        // beside WASI's, and tests/wasm.rs's sleeping plugin would hang.
        let mut clock = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
        clock.func_wrap("subscribe-duration", |mut s: StoreContextMut<'_, HostState>, (nanos,): (u64,)| {
            let pollable = s.data_mut().subscribe_duration(nanos)?;
            end_if_too_long(&mut s);
            Ok((pollable,))
        })?;
        clock.func_wrap("subscribe-instant", |mut s: StoreContextMut<'_, HostState>, (when,): (u64,)| {
            let pollable = s.data_mut().subscribe_instant(when)?;
            end_if_too_long(&mut s);
            Ok((pollable,))
        })?;
        linker.allow_shadowing(false);
        Ok(WasmRuntime { engine, linker, cache_dir: cache_dir(), loaded: Mutex::new(HashMap::new()) })
    }

    fn cache_path(&self, bytes: &[u8]) -> Option<PathBuf> {
        let mut compat = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut compat);
        let digest = Sha256::digest(bytes);
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        Some(self.cache_dir.as_ref()?.join(format!("{hex}-{:016x}.cwasm", compat.finish())))
    }

    fn compile(&self, path: &Path, bytes: &[u8]) -> Result<(Component, bool), WasmError> {
        let compile_err = |e: wasmtime::Error| WasmError::Compile { path: path.to_owned(), source: e.into() };
        let cache = self.cache_path(bytes);
        if let Some(cache) = cache.as_ref().filter(|c| c.exists()) {
            // SAFETY: the file is one this process family wrote from
            // `precompile_component` for this engine configuration (the name holds
            // the engine's compatibility hash); deserialize still checks it.
            match unsafe { Component::deserialize_file(&self.engine, cache) } {
                Ok(c) => return Ok((c, true)),
                Err(e) => tracing::warn!(path = %cache.display(), error = %e, "ignoring a bad cache entry"),
            }
        }
        let started = std::time::Instant::now();
        let compiled = self.engine.precompile_component(bytes).map_err(compile_err)?;
        tracing::info!(plugin = %path.display(), took_ms = started.elapsed().as_millis() as u64, "compiled plugin");
        if let Some(cache) = &cache {
            // A fresh temporary name created exclusively, then renamed: a link
            // planted in the cache directory is never written through.
            let dir = cache.parent().unwrap_or(Path::new("."));
            let stored = flowgate_sdk::files::private_dir(dir)
                .and_then(|()| tempfile::NamedTempFile::new_in(dir))
                .and_then(|mut tmp| std::io::Write::write_all(&mut tmp, &compiled).map(|()| tmp))
                .and_then(|tmp| tmp.persist(cache).map(drop).map_err(|e| e.error));
            if let Err(e) = stored {
                tracing::warn!(path = %cache.display(), error = %e, "cannot cache the compiled plugin");
            }
        }
        // SAFETY: `compiled` was produced just above by this engine.
        let component = unsafe { Component::deserialize(&self.engine, &compiled) }.map_err(compile_err)?;
        Ok((component, false))
    }

    /// Loads a plugin and checks it against the contract; the first load of a
    /// path in this process compiles (or reads the cache), later ones share it.
    pub fn load(&self, path: &Path) -> Result<Arc<LoadedPlugin>, WasmError> {
        if let Some(p) = self.loaded.lock().unwrap_or_else(|p| p.into_inner()).get(path) {
            return Ok(Arc::clone(p));
        }
        let bytes = std::fs::read(path).map_err(|source| WasmError::Read { path: path.to_owned(), source })?;
        if bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0] {
            return Err(WasmError::NotAComponent {
                path: path.to_owned(),
                hint: "build it as a component (Rust: --target wasm32-wasip2; or `wasm-tools component new`)",
            });
        }
        let (component, cached) = self.compile(path, &bytes)?;
        let version = self.check_contract(path, &component)?;
        let contract = |message: String| WasmError::Contract { path: path.to_owned(), message };
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| contract(format!("{e:#}")))?;
        let pre = match version {
            Contract::V0_1 => v1::TransformPre::new(instance_pre).map(Pre::V1),
            Contract::V0_2 => v2::TransformPre::new(instance_pre).map(Pre::V2),
        }
        .map_err(|e| contract(format!("{e:#}")))?;
        let plugin = Arc::new(LoadedPlugin { path: path.to_owned(), pre, contract: version, cached });
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).insert(path.to_owned(), Arc::clone(&plugin));
        Ok(plugin)
    }

    /// The contract version the component was built against; names what does
    /// not fit, in the plugin author's terms, before wasmtime's own (more
    /// technical) type check runs.
    fn check_contract(&self, path: &Path, component: &Component) -> Result<Contract, WasmError> {
        let ty = component.component_type();
        let contract = |message: String| Err(WasmError::Contract { path: path.to_owned(), message });
        let exports: Vec<String> = ty.exports(&self.engine).map(|(n, _)| n.to_string()).collect();
        let Some(version) = exports.iter().find_map(|e| Contract::exported_by(e)) else {
            let other = exports.iter().find(|e| e.starts_with("flowgate:transform/transformer@"));
            let current = Contract::CURRENT.export();
            return contract(match other {
                Some(e) => format!(
                    "it was built against {}, this Flowgate speaks {CONTRACT} (and {}); rebuild it against \
                     wit/transform.wit",
                    e.replace("/transformer", ""),
                    Contract::V0_1.name()
                ),
                None => format!(
                    "it exports {}, not the interface {current}",
                    if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") }
                ),
            });
        };
        let host = version.host_import();
        for (name, item) in ty.imports(&self.engine) {
            let provided = name == host || name.starts_with("wasi:");
            if !provided {
                let what = match item.ty {
                    ComponentItem::ComponentInstance(_) => "interface",
                    _ => "item",
                };
                return contract(if name.starts_with("flowgate:transform/host@") {
                    format!(
                        "it imports {name}, but exports {}, whose host is {host}; rebuild it against \
                         wit/transform.wit",
                        version.export()
                    )
                } else {
                    format!(
                        "it imports the {what} `{name}`, which Flowgate does not grant; plugins get {host} \
                         and a WASI sandbox without files, network or environment"
                    )
                });
            }
        }
        Ok(version)
    }

    /// What the component exports and imports, for `flowgate plugin check`.
    pub fn describe(&self, path: &Path) -> Result<(Vec<String>, Vec<String>), WasmError> {
        let bytes = std::fs::read(path).map_err(|source| WasmError::Read { path: path.to_owned(), source })?;
        let (component, _) = self.compile(path, &bytes)?;
        let ty = component.component_type();
        let exports = ty.exports(&self.engine).map(|(n, _)| n.to_string()).collect();
        let imports = ty.imports(&self.engine).map(|(n, _)| n.to_string()).collect();
        Ok((exports, imports))
    }
}

/// After a plugin asked to wait past its call's deadline: the deadline is
/// now, so the plugin traps at its next instruction, whatever the epoch
/// ticker (a thread that may lag on a busy machine) says.
fn end_if_too_long(store: &mut StoreContextMut<'_, HostState>) {
    if store.data().waited_too_long {
        store.set_epoch_deadline(0);
    }
}
