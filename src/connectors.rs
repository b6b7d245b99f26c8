//! The connectors this build knows: one line per connector crate. Everything
//! else about a connector (its settings, their JSON Schema, checks, opening)
//! lives in its crate, behind the SDK's connector traits.

use std::sync::OnceLock;

use flowgate_sdk::Registry;

pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut r = Registry::default();
        flowgate_generate::register(&mut r);
        flowgate_file::register(&mut r);
        flowgate_kafka::register(&mut r);
        flowgate_postgres::register(&mut r);
        flowgate_sql::register(&mut r);
        flowgate_wasm::register(&mut r);
        flowgate_avro::register(&mut r);
        flowgate_http::register(&mut r);
        r
    })
}
