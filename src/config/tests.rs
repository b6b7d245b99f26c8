use super::*;

fn load(text: &str) -> Result<PipelineConfig, ConfigError> {
    load_str("p.yaml", text, &|name| match name {
        "SINK_PATH" => Some("/tmp/out.jsonl".into()),
        "BATCH" => Some("250".into()),
        _ => None,
    })
}

/// (line, column, message) of every problem.
fn problems(text: &str) -> Vec<(usize, usize, String)> {
    let err = load(text).expect_err("expected problems");
    err.problems
        .iter()
        .map(|p| {
            let (l, c) = err.line_col(p.span.start);
            (l, c, p.message.clone())
        })
        .collect()
}

const GOOD: &str = r#"
name: demo
source:
  generate:
    template: '{"id":${seq}}'
    count: 10
sink:
  file:
    path: ${SINK_PATH}
errors:
  policy: dead_letter
  dead_letter: stdout
batch:
  size: ${BATCH}
  linger: 20ms
"#;

#[test]
fn loads_a_good_file_with_variables_and_bare_kinds() {
    let c = load(GOOD).unwrap();
    assert_eq!(c.name, "demo");
    assert_eq!(c.batch.size, 250);
    assert_eq!(c.batch.linger, HumanDuration::from_millis(20));
    assert_eq!(c.batch.buffer, 4);
    let file = c.sink.downcast::<flowgate_file::FileSinkConfig>();
    assert!(matches!(file, Some(f) if c.sink.kind == "file" && f.path == Path::new("/tmp/out.jsonl") && f.fsync));
    let dead_letter = c.errors.dead_letter.as_ref().expect("a dead-letter sink");
    assert!(dead_letter.kind == "stdout" && dead_letter.downcast::<flowgate_file::StdoutSinkConfig>().is_some());
    let generate = c.source.downcast::<flowgate_generate::GenerateConfig>();
    assert!(matches!(generate, Some(g) if c.source.kind == "generate" && g.count == Some(10)));
}

#[test]
fn reports_every_problem_at_once_with_positions_and_hints() {
    let text = "name: demo\nsource:\n  fiel:\n    path: x\nsink:\n  file:\n    pth: out\n    fsync: maybe\nbatch:\n  size: 0\n  linger: soon\nextra: 1\n";
    let found = problems(text);
    let messages: Vec<&str> = found.iter().map(|(_, _, m)| m.as_str()).collect();
    assert_eq!(
        found.iter().map(|(l, c, _)| (*l, *c)).collect::<Vec<_>>(),
        [(3, 3), (6, 3), (7, 5), (8, 12), (10, 9), (11, 11), (12, 1)],
        "{messages:?}"
    );
    let err = load(text).unwrap_err();
    let helps: Vec<String> = err.problems.iter().map(|p| p.help.clone().unwrap_or_default()).collect();
    assert!(helps[0].contains("did you mean `file`?"), "{}", helps[0]);
    assert!(messages[1].contains("missing field `path`"), "{}", messages[1]);
    assert!(helps[2].contains("did you mean `path`?"), "{}", helps[2]);
    assert!(messages[3].contains("expected true or false"), "{}", messages[3]);
    assert!(messages[4].contains("out of range"), "{}", messages[4]);
    assert!(messages[5].contains("not a duration"), "{}", messages[5]);
    assert!(messages[6].contains("unknown field `extra`"), "{}", messages[6]);
}

#[test]
fn semantic_and_format_problems_point_at_their_values() {
    let text = "name: 'bad name!'\nsource:\n  generate:\n    template: '${nope}'\nsink: null\nerrors:\n  policy: dead_letter\n";
    let found = problems(text);
    let messages: Vec<&str> = found.iter().map(|(_, _, m)| m.as_str()).collect();
    assert_eq!(found[0].0, 4, "{messages:?}");
    assert!(messages[0].contains("unknown placeholder"), "{messages:?}");
    // The template problem stops typing, so the semantic checks run once it is fixed.
    let fixed = text.replace("${nope}", "${seq}");
    let found = problems(&fixed);
    assert_eq!((found[0].0, found[0].1), (1, 7));
    assert!(found[0].2.contains("invalid pipeline name"));
    assert_eq!((found[1].0, found[1].1), (7, 11));
    assert!(found[1].2.contains("dead-letter sink"));
}

#[test]
fn unset_variables_and_kind_shapes_are_reported() {
    let found = problems("name: x\nsource:\n  file:\n    path: ${NOT_SET}\nsink:\n  file: {path: a}\n  stdout: {}\n");
    assert_eq!((found[0].0, found[0].1), (4, 11));
    assert!(found[0].2.contains("NOT_SET is not set"));
    assert_eq!(found[1].0, 6);
    assert!(found[1].2.contains("expected exactly one of"), "{}", found[1].2);
    let found = problems("name: x\nsource: 12\nsink: {null: {}}\ntransforms: [{wsm: {}}]\n");
    assert!(found[0].2.contains("unknown kind `12`"), "{found:?}");
    assert!(found[1].2.contains("unknown kind `wsm`"), "{found:?}");
    let found = problems("");
    assert!(found.iter().any(|p| p.2.contains("missing field `name`")));
    assert!(found.iter().any(|p| p.2.contains("missing field `source`")));
}

#[test]
fn renders_both_formats_with_file_line_and_column() {
    let err = load("name: x\nsource: {stdin: {}}\nsink:\n  stdout: {colour: red}\n").unwrap_err();
    let short = err.render(MessageFormat::Short);
    assert_eq!(short, "p.yaml:4:12: error: unknown field `colour` (help: valid fields: `format`)\n");
    let human = err.render(MessageFormat::Human);
    assert!(human.contains("p.yaml:4:12"), "{human}");
    assert!(human.contains("unknown field"), "{human}");
    assert!(human.contains("1 problem found"), "{human}");
}

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Whatever the bytes, loading returns; it never panics.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = load(&text);
        }

        /// Mutations of a valid file: a character replaced, removed or duplicated.
        #[test]
        fn mutated_files_never_panic(pos in 0usize..GOOD.len(), op in 0u8..3, c in proptest::char::any()) {
            let mut chars: Vec<char> = GOOD.chars().collect();
            let pos = pos.min(chars.len() - 1);
            match op {
                0 => chars[pos] = c,
                1 => { chars.remove(pos); }
                _ => chars.insert(pos, c),
            }
            let text: String = chars.into_iter().collect();
            if let Err(e) = load(&text) {
                prop_assert!(!e.problems.is_empty());
                for p in &e.problems {
                    prop_assert!(p.span.end <= text.len() && p.span.start <= p.span.end);
                    let _ = e.render(MessageFormat::Human);
                }
            }
        }
    }
}
