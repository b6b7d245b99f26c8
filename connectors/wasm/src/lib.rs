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
pub use runtime::{CONTRACT, LoadedPlugin, WasmRuntime};
pub use transform::{WasmTransform, plugin_name};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/transform.wit",
        world: "transform",
    });
}
