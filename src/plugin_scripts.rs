//! Project files of Python and JavaScript plugins for `flowgate plugin new`.

use crate::plugin::Lang;

const PY_GUEST: &str = include_str!("../wit/guest/python/flowgate_guest.py");
const PY_APP: &str = include_str!("plugin_templates/python_app.py");
const PY_BUILD: &str = include_str!("plugin_templates/python_build.sh");
const JS_GUEST: &str = include_str!("../wit/guest/js/flowgate-guest.js");
const JS_PLUGIN: &str = include_str!("plugin_templates/js_plugin.js");
const JS_BUILD: &str = include_str!("plugin_templates/js_build.mjs");
const PIPELINE: &str = include_str!("plugin_templates/pipeline.yaml");

pub fn files(lang: Lang, name: &str, fill: &dyn Fn(&str, &str) -> String) -> Vec<(String, String)> {
    let wasm = format!("{name}.wasm");
    let (build, readme_lang, files) = match lang {
        Lang::Python => (
            "./build.sh",
            "Python (componentize-py 0.25.1: `pip install componentize-py==0.25.1`)",
            vec![
                ("app.py".to_string(), fill(PY_APP, &wasm)),
                ("flowgate_guest.py".to_string(), PY_GUEST.to_string()),
                ("build.sh".to_string(), fill(PY_BUILD, &wasm)),
            ],
        ),
        Lang::Js => (
            "node build.mjs",
            "JavaScript (componentize-js 0.23: `npm install @bytecodealliance/componentize-js@0.23.0`)",
            vec![
                ("plugin.js".to_string(), fill(JS_PLUGIN, &wasm)),
                ("flowgate-guest.js".to_string(), JS_GUEST.to_string()),
                ("build.mjs".to_string(), fill(JS_BUILD, &wasm)),
            ],
        ),
        Lang::Rust => unreachable!("Rust projects are written by plugin::files"),
    };
    let readme = format!(
        "# {name}\n\nA Flowgate transform plugin in {readme_lang}.\n\n```sh\n{build}\nflowgate plugin check {wasm}\n\
         flowgate run pipeline.yaml\n```\n\n`wit/` holds the contract; the guest helper next to the plugin turns \
         the packed batches into records.\n"
    );
    let mut all = files;
    all.push(("pipeline.yaml".into(), fill(PIPELINE, &wasm)));
    all.push(("README.md".into(), readme));
    all
}
