//! The committed demo data set (examples/data/demo, written by `cargo xtask
//! demo-data`) is what its README promises: 400 training and 80 held-out
//! chat examples whose answers have the documented format and whose
//! validation people never appear in training.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

fn examples(name: &str) -> Vec<[String; 3]> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/data/demo")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("demo data file");
    text.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).expect("a JSON line");
            let messages = value["messages"].as_array().expect("messages");
            let roles: Vec<&str> = messages.iter().filter_map(|m| m["role"].as_str()).collect();
            assert_eq!(roles, ["system", "user", "assistant"], "{line}");
            let content = |i: usize| {
                messages[i]["content"]
                    .as_str()
                    .expect("content")
                    .to_string()
            };
            [content(0), content(1), content(2)]
        })
        .collect()
}

/// `^name=[^;]+; city=[^;]+; year=\d{4}$`, the README's format match, and
/// the three values.
fn parse_answer(answer: &str) -> Option<(&str, &str, &str)> {
    let rest = answer.strip_prefix("name=")?;
    let (name, rest) = rest.split_once("; city=")?;
    let (city, year) = rest.split_once("; year=")?;
    let plain = |s: &str| !s.is_empty() && !s.contains(';');
    let four_digits = year.len() == 4 && year.bytes().all(|b| b.is_ascii_digit());
    (plain(name) && plain(city) && four_digits).then_some((name, city, year))
}

#[test]
fn demo_data_matches_its_readme() {
    let train = examples("train.jsonl");
    let valid = examples("valid.jsonl");
    assert_eq!((train.len(), valid.len()), (400, 80));
    let mut names = [BTreeSet::new(), BTreeSet::new()];
    for (set, data) in names.iter_mut().zip([&train, &valid]) {
        for [system, sentence, answer] in data {
            assert!(system.starts_with("Extract the person, city and year."));
            let (name, city, year) = parse_answer(answer).unwrap_or_else(|| panic!("{answer}"));
            for value in [name, city, year] {
                assert!(sentence.contains(value), "{value} not in {sentence}");
            }
            set.insert(name.to_string());
        }
    }
    assert!(
        names[0].is_disjoint(&names[1]),
        "a validation person is in training"
    );
    assert_eq!(names[0].len(), 400);
    assert!(parse_answer("name=A; city=B; year=87").is_none());
    assert!(parse_answer("name=A; city=B; year=1987 ").is_none());
}
