//! Bounded property-based fuzzing (test support, feature `fuzz`).
//!
//! cargo-fuzz needs a nightly compiler; these targets are proptest
//! properties instead, run by the crates' unit tests with a small case count
//! and by `cargo xtask fuzz` for as long as asked. Each target counts its
//! executions so a long run can say how much it tried.

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use std::cell::Cell;
use std::time::{Duration, Instant};

/// Overrides the case count (proptest's own variable).
pub const CASES_VAR: &str = "PROPTEST_CASES";
/// Stops taking new cases after this many seconds.
pub const SECONDS_VAR: &str = "FT_FUZZ_SECONDS";
/// A file each target appends one JSON line to: name, executions, seconds,
/// slowest case, failure.
pub const REPORT_VAR: &str = "FT_FUZZ_REPORT";
/// A file each input is written to before it runs (at its start, ended by
/// a NUL byte): after a crash that kills the process (a stack overflow, an
/// abort in native code) it holds the input that caused it.
pub const LAST_INPUT_VAR: &str = "FT_FUZZ_LAST_INPUT";

/// Runs `test` on values drawn from `strategy`: `default_cases` of them in
/// the normal suite; `PROPTEST_CASES` sets another count and
/// `FT_FUZZ_SECONDS` a time budget after which no new case starts. Prints
/// `fuzz NAME: N executions in S s`, appends the same to `FT_FUZZ_REPORT`
/// when set, and panics with the shrunk failing input when a case fails
/// (a returned error or a panic in `test`).
pub fn fuzz<S>(
    name: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let mut config = Config::default();
    if std::env::var_os(CASES_VAR).is_none() {
        config.cases = default_cases;
    }
    // Shrinking replays cases; regressions are kept as explicit tests instead.
    config.failure_persistence = None;
    let budget = std::env::var(SECONDS_VAR)
        .ok()
        .and_then(|seconds| seconds.parse::<f64>().ok())
        .map(Duration::from_secs_f64);
    let started = Instant::now();
    let out_of_time = || budget.is_some_and(|budget| started.elapsed() > budget);
    // Opened once: recreating the file per case costs more than most cases.
    let last_input = std::env::var_os(LAST_INPUT_VAR)
        .and_then(|path| std::fs::File::create(path).ok())
        .map(std::cell::RefCell::new);
    let executions = Cell::new(0_u64);
    let slowest = Cell::new(Duration::ZERO);
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, |value| {
        if out_of_time() {
            // Rejections end the run quickly once the budget is spent.
            return Err(TestCaseError::reject("time budget spent"));
        }
        executions.set(executions.get() + 1);
        if let Some(file) = &last_input {
            use std::io::{Seek, Write};
            // Best effort: losing the trace must not fail the case.
            let mut file = file.borrow_mut();
            let _ = file
                .seek(std::io::SeekFrom::Start(0))
                .and_then(|_| file.write_all(format!("{value:#?}\n\0").as_bytes()));
        }
        let case_started = Instant::now();
        let outcome = test(value);
        slowest.set(slowest.get().max(case_started.elapsed()));
        outcome
    });
    let failure = match result {
        Ok(()) => None,
        Err(TestError::Abort(_)) if out_of_time() => None,
        Err(TestError::Abort(reason)) => Some(format!("aborted: {reason}")),
        Err(TestError::Fail(reason, value)) => {
            Some(format!("{reason}\nminimal failing input: {value:#?}"))
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "fuzz {name}: {} executions in {seconds:.1} s (slowest case {:.3} s){}",
        executions.get(),
        slowest.get().as_secs_f64(),
        if failure.is_some() { ", FAILED" } else { "" }
    );
    if let Some(path) = std::env::var_os(REPORT_VAR) {
        let line = format!(
            "{{\"target\":{},\"executions\":{},\"seconds\":{seconds:.3},\"slowest_case_seconds\":{:.3},\"failure\":{}}}\n",
            json_string(name),
            executions.get(),
            slowest.get().as_secs_f64(),
            failure
                .as_deref()
                .map_or_else(|| "null".to_string(), json_string)
        );
        use std::io::Write as _;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(error) = written {
            eprintln!("fuzz {name}: cannot append to {path:?}: {error}");
        }
    }
    if let Some(failure) = failure {
        panic!("fuzz target {name} failed: {failure}");
    }
}

/// One edit of a seed input.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Flip some bits of the byte at a position.
    Flip(usize, u8),
    /// Insert a dictionary entry at a position.
    Insert(usize, usize),
    /// Delete bytes at a position.
    Delete(usize, usize),
    /// Repeat bytes at a position.
    Repeat(usize, usize),
    /// Cut the input at a position.
    Truncate(usize),
    /// Overwrite bytes at a position with a dictionary entry.
    Replace(usize, usize, usize),
}

/// Seeds (valid inputs) with up to `max_edits` edits each: bit flips,
/// insertions and overwrites from `dictionary` (tokens that matter to the
/// parser under test), deletions, repetitions and truncation. Positions and
/// dictionary indices are taken modulo the lengths, so every value applies.
pub fn mutated(
    seeds: Vec<Vec<u8>>,
    dictionary: Vec<Vec<u8>>,
    max_edits: usize,
) -> impl Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let mutation = prop_oneof![
        (any::<usize>(), 1_u8..=255).prop_map(|(at, bits)| Mutation::Flip(at, bits)),
        (any::<usize>(), any::<usize>()).prop_map(|(at, word)| Mutation::Insert(at, word)),
        (any::<usize>(), 1_usize..64).prop_map(|(at, n)| Mutation::Delete(at, n)),
        (any::<usize>(), 1_usize..64).prop_map(|(at, n)| Mutation::Repeat(at, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1_usize..8, any::<usize>())
            .prop_map(|(at, n, word)| Mutation::Replace(at, n, word)),
    ];
    let count = seeds.len();
    (
        0..count.max(1),
        proptest::collection::vec(mutation, 0..=max_edits),
    )
        .prop_map(move |(seed, edits)| {
            let mut bytes = seeds.get(seed).cloned().unwrap_or_default();
            for edit in edits {
                apply(&mut bytes, &edit, &dictionary);
            }
            bytes
        })
}

fn apply(bytes: &mut Vec<u8>, edit: &Mutation, dictionary: &[Vec<u8>]) {
    let at = |position: usize, len: usize| position % (len + 1);
    let word = |index: usize| {
        dictionary
            .get(index % dictionary.len().max(1))
            .cloned()
            .unwrap_or_default()
    };
    match *edit {
        Mutation::Flip(position, bits) => {
            if !bytes.is_empty() {
                let index = position % bytes.len();
                bytes[index] ^= bits;
            }
        }
        Mutation::Insert(position, index) => {
            let start = at(position, bytes.len());
            bytes.splice(start..start, word(index));
        }
        Mutation::Delete(position, n) => {
            let start = at(position, bytes.len());
            let end = (start + n).min(bytes.len());
            bytes.drain(start..end);
        }
        Mutation::Repeat(position, n) => {
            let start = at(position, bytes.len());
            let end = (start + n).min(bytes.len());
            let copy = bytes[start..end].to_vec();
            bytes.splice(end..end, copy);
        }
        Mutation::Truncate(position) => {
            let end = at(position, bytes.len());
            bytes.truncate(end);
        }
        Mutation::Replace(position, n, index) => {
            let start = at(position, bytes.len());
            let end = (start + n).min(bytes.len());
            bytes.splice(start..end, word(index));
        }
    }
}

/// `text` as a JSON string literal (this crate has no JSON dependency).
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mutation_applies_to_any_input() {
        let dictionary = vec![b"[".to_vec(), Vec::new()];
        for input in [Vec::new(), b"a".to_vec(), b"[x]\ny = 1\n".to_vec()] {
            for edit in [
                Mutation::Flip(usize::MAX, 1),
                Mutation::Insert(usize::MAX, usize::MAX),
                Mutation::Delete(usize::MAX, 63),
                Mutation::Repeat(3, 63),
                Mutation::Truncate(usize::MAX),
                Mutation::Replace(usize::MAX, 7, 1),
            ] {
                let mut bytes = input.clone();
                apply(&mut bytes, &edit, &dictionary);
            }
        }
    }

    #[test]
    fn json_strings_escape_quotes_and_controls() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }
}
