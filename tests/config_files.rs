//! Every shipped pipeline validates; every broken file in `tests/configs/broken`
//! fails with exit code 2 and exactly the problems its `# expect: LINE:COL text`
//! lines list, all reported in one run.

mod common;

use std::path::{Path, PathBuf};

use common::{flowgate, repo};

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_pipeline_and_sample_validates() {
    let mut files = yaml_files(&repo().join("pipelines"));
    for connector in std::fs::read_dir(repo().join("connectors")).unwrap() {
        let sample = connector.unwrap().path().join("sample.yaml");
        if sample.exists() {
            files.push(sample);
        }
    }
    assert!(files.len() >= 5, "{files:?}");
    for file in files {
        let out = flowgate().arg("validate").arg(&file).output().unwrap();
        assert!(
            out.status.success(),
            "{} does not validate:\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_broken_config_reports_all_its_problems_with_positions() {
    let files = yaml_files(&repo().join("tests/configs/broken"));
    assert!(files.len() >= 10);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expected: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .map(|l| {
                let (pos, msg) = l.split_once(' ').unwrap();
                (pos.to_string(), msg.to_string())
            })
            .collect();
        assert!(!expected.is_empty(), "{} has no `# expect:` line", file.display());

        let out = flowgate().args(["validate", "--message-format", "short"]).arg(&file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", file.display());
        let prefix = format!("{}:", file.display());
        let found: Vec<(String, String)> = stderr
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(|l| {
                let (pos, rest) = l.split_once(": error: ").unwrap();
                (pos.to_string(), rest.to_string())
            })
            .collect();
        assert_eq!(found.len(), expected.len(), "{}:\n{stderr}", file.display());
        for ((pos, msg), (want_pos, want_msg)) in found.iter().zip(&expected) {
            assert_eq!(pos, want_pos, "{}: {msg}", file.display());
            assert!(msg.contains(want_msg.as_str()), "{}: `{msg}` lacks `{want_msg}`", file.display());
        }
    }
}

#[test]
fn the_human_report_underlines_the_text_and_gives_a_hint() {
    let file = repo().join("tests/configs/broken/unknown-source-kind.yaml");
    let out = flowgate().arg("validate").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("unknown-source-kind.yaml:3:3"), "{stderr}");
    assert!(stderr.contains("  fiel:") && stderr.contains("────"), "no excerpt with underline:\n{stderr}");
    assert!(stderr.contains("did you mean `file`?"), "{stderr}");
}

#[test]
fn problems_of_several_files_are_all_reported_and_run_refuses_to_start() {
    let broken = repo().join("tests/configs/broken");
    let out = flowgate()
        .args(["run", "--message-format", "short"])
        .arg(broken.join("many-problems.yaml"))
        .arg(broken.join("bad-name.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches(": error: ").count(), 7, "{stderr}");
}

#[test]
fn garbage_and_missing_files_exit_2_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.yaml");
    std::fs::write(&garbage, b"\x00\xff\xfe{[}]: :\n\t- - !!binary @@").unwrap();
    for file in [garbage, dir.path().join("missing.yaml")] {
        let out = flowgate().arg("validate").arg(&file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// The schema `flowgate schema` offers editors accepts every shipped pipeline,
/// sample and documentation snippet under an independent 2020-12 validator.
#[test]
fn the_editors_schema_accepts_every_shipped_file_under_an_independent_validator() {
    let dir = tempfile::tempdir().unwrap();
    let out = flowgate().arg("schema").output().unwrap();
    assert!(out.status.success());
    let schema = dir.path().join("schema.json");
    std::fs::write(&schema, &out.stdout).unwrap();
    let report =
        common::registry::run_python("editor_schema.py", &[schema.to_str().unwrap(), repo().to_str().unwrap()]);
    assert!(report.contains(" checked, 0 with problems"), "{report}");
}
