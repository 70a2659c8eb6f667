//! House rule: no MLX float64 array outside an explicit CPU stream.
//!
//! On a Mac the default device is the GPU, and Metal has no float64: any
//! float64 array made on the default stream fails there (while it works on
//! Linux's CPU backend, where every test of ours runs). This scan reads every
//! Rust file of the repository and fails on a float64 MLX construct unless
//! the same statement names a CPU stream or device, the mention is a `match`
//! pattern (naming the dtype is fine, making one is not), or the line (or the
//! one above) carries `tidy: float64 ok` with a reason.
//!
//! What it cannot see: a float64 array made from a Rust value whose type is
//! inferred (`Array::from_slice(&values, ..)` with `values: Vec<f64>`). Keep
//! host-side float64 arithmetic in Rust, as the rest of the code does.

use ft_integration_tests::{repo_root, rust_files};
use std::fs;
use std::path::{Path, PathBuf};

/// Text that makes (or converts to) a float64 MLX array.
const FLOAT64_CONSTRUCTS: &[&str] = &[
    "Dtype::Float64",
    "as_slice::<f64>",
    "item::<f64>",
    "try_item::<f64>",
    "from_slice::<f64>",
    "as_type::<f64>",
    "Array::from_f64",
    "::<f64>(&[",
];

/// Any of these in the same statement puts the work on the CPU.
const CPU_STREAM_MARKERS: &[&str] = &[
    "StreamOrDevice::cpu",
    "Device::cpu",
    "Stream::cpu",
    "mlx_default_cpu_stream_new",
    "cpu_stream",
];

const ALLOW_MARKER: &str = "tidy: float64 ok";

/// One offending line.
#[derive(Debug, PartialEq)]
struct Finding {
    line: usize,
    construct: &'static str,
    text: String,
}

/// The code part of a line: what comes before a `//` comment.
fn code_of(line: &str) -> &str {
    let trimmed = line.trim_start();
    if trimmed.starts_with("//") {
        return "";
    }
    match line.find(" // ") {
        Some(at) => &line[..at],
        None => line,
    }
}

/// The statement around line `index`: back to the previous line ending in
/// `;`, `{` or `}` and forward to the next one, at most 6 lines each way.
fn statement_around(lines: &[&str], index: usize) -> String {
    let ends_statement = |line: &str| {
        let code = code_of(line).trim_end();
        code.ends_with(';') || code.ends_with('{') || code.ends_with('}')
    };
    let mut start = index;
    while start > 0 && index - start < 6 && !ends_statement(lines[start - 1]) {
        start -= 1;
    }
    let mut end = index;
    while end + 1 < lines.len() && end - index < 6 && !ends_statement(lines[end]) {
        end += 1;
    }
    lines[start..=end]
        .iter()
        .map(|line| code_of(line))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether the construct at `at` in `code` is part of a `match` pattern.
fn is_pattern(code: &str, at: usize, construct: &str) -> bool {
    let before = code[..at].trim_end();
    let after = code[at + construct.len()..].trim_start();
    before.ends_with('|') || after.starts_with('|') || after.starts_with("=>")
}

fn scan(source: &str) -> Vec<Finding> {
    let lines: Vec<&str> = source.lines().collect();
    let mut findings = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let code = code_of(line);
        for &construct in FLOAT64_CONSTRUCTS {
            let Some(at) = code.find(construct) else {
                continue;
            };
            let allowed_here = line.contains(ALLOW_MARKER)
                || index
                    .checked_sub(1)
                    .is_some_and(|above| lines[above].contains(ALLOW_MARKER));
            if allowed_here || is_pattern(code, at, construct) {
                continue;
            }
            let statement = statement_around(&lines, index);
            if CPU_STREAM_MARKERS
                .iter()
                .any(|marker| statement.contains(marker))
            {
                continue;
            }
            findings.push(Finding {
                line: index + 1,
                construct,
                text: line.trim().to_string(),
            });
        }
    }
    findings
}

#[test]
fn no_float64_mlx_array_outside_a_cpu_stream() {
    let root = repo_root();
    let files: Vec<PathBuf> = ["crates", "xtask/src", "examples", "tests"]
        .iter()
        .flat_map(|dir| rust_files(&root.join(dir)))
        .collect();
    assert!(files.len() > 50, "found only {} Rust files", files.len());
    let this_file = Path::new(file!())
        .file_name()
        .expect("file name")
        .to_owned();
    let mut report = String::new();
    for file in files.iter().filter(|f| f.file_name() != Some(&this_file)) {
        let source = fs::read_to_string(file).expect("read source");
        for finding in scan(&source) {
            report.push_str(&format!(
                "  {}:{}: {} in `{}`\n",
                file.strip_prefix(&root).unwrap_or(file).display(),
                finding.line,
                finding.construct,
                finding.text
            ));
        }
    }
    assert!(
        report.is_empty(),
        "float64 MLX arrays outside an explicit CPU stream (Metal, the default device \
         on a Mac, has no float64):\n{report}Read the value in Rust, use float32, or put the \
         operation on `StreamOrDevice::cpu()` (or mark a reviewed line `tidy: float64 ok: why`)."
    );
}

#[test]
fn the_scan_finds_the_bug_that_broke_the_mac() {
    // ft-model's GGUF metadata reader before the fix.
    let old = "    pub fn metadata_number(&self, key: &str) -> Option<f64> {\n\
               \x20       let array = self.metadata_array(key)?;\n\
               \x20       let array = array.as_dtype(mlx_rs::Dtype::Float64).ok()?;\n\
               \x20       array.eval().ok()?;\n\
               \x20       array.as_slice::<f64>().first().copied()\n\
               \x20   }\n";
    let findings = scan(old);
    assert_eq!(
        findings.iter().map(|f| f.line).collect::<Vec<_>>(),
        vec![3, 5],
        "{findings:?}"
    );
}

#[test]
fn cpu_streams_patterns_and_reviewed_lines_pass() {
    let on_cpu =
        "let wide = x.as_dtype_device(\n    Dtype::Float64,\n    StreamOrDevice::cpu(),\n)?;\n";
    assert!(scan(on_cpu).is_empty(), "{:?}", scan(on_cpu));
    let pattern =
        "match dtype {\n    Dtype::Float16 | Dtype::Float64 => false,\n    _ => true,\n}\n";
    assert!(scan(pattern).is_empty(), "{:?}", scan(pattern));
    let reviewed = "// tidy: float64 ok: host copy only\nlet v = a.item::<f64>();\n";
    assert!(scan(reviewed).is_empty());
    let comment = "// never call x.as_dtype(Dtype::Float64) here\n";
    assert!(scan(comment).is_empty());
    let unreviewed = "let v = a.item::<f64>();\nlet w = b.as_dtype(Dtype::Float64)?;\n";
    assert_eq!(scan(unreviewed).len(), 2);
}
