//! WebAssembly transform plugins: the host side of `wit/transform.wit`.

pub mod config;
mod connector;
mod error;
pub mod format;
mod host;
mod runtime;
mod transform;

pub use config::WasmConfig;
pub use connector::register;
pub use error::WasmError;
pub use format::Contract;
pub use runtime::{CONTRACT, LoadedPlugin, WasmRuntime};
pub use transform::{WasmTransform, plugin_name};

mod bindings {
    /// The current contract, `wit/transform.wit`.
    pub mod v2 {
        wasmtime::component::bindgen!({
            path: "../../wit/transform.wit",
            world: "transform",
        });
    }

    /// `flowgate:transform@0.1.0`, spoken to plugins built against it.
    pub mod v1 {
        wasmtime::component::bindgen!({
            path: "wit-0.1.0/transform.wit",
            world: "transform",
        });
    }
}
