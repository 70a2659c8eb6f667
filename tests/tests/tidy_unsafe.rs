//! House rule: all `unsafe` code lives in `ft-model`'s `ffi` module.
//!
//! Every other crate root says `#![forbid(unsafe_code)]`; ft-model's says
//! `#![deny(unsafe_code)]` and lets only `mod ffi` through. The compiler
//! enforces those attributes; this test makes sure they stay there, that no
//! `unsafe` text appears outside the FFI module, and that every `unsafe fn`
//! there documents its contract in a `# Safety` section.

use ft_integration_tests::{repo_root, rust_files};
use std::fs;
use std::path::{Path, PathBuf};

/// Crate roots of the workspace: `crates/*/src/{lib,main}.rs`, xtask's main
/// and the integration-test crate's lib.
fn crate_roots(root: &Path) -> Vec<PathBuf> {
    let mut roots = vec![root.join("xtask/src/main.rs"), root.join("tests/lib.rs")];
    let mut crates: Vec<PathBuf> = fs::read_dir(root.join("crates"))
        .expect("crates/ is readable")
        .flatten()
        .map(|entry| entry.path())
        .collect();
    crates.sort();
    for dir in crates {
        for file in ["src/lib.rs", "src/main.rs"] {
            let path = dir.join(file);
            if path.exists() {
                roots.push(path);
            }
        }
    }
    roots
}

/// A line without its string literals and its `//` comment.
fn code_of(line: &str) -> String {
    let mut code = String::new();
    let (mut in_string, mut escaped) = (false, false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => escaped = false,
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '/' if chars.peek() == Some(&'/') => break,
            _ => code.push(c),
        }
    }
    code
}

/// Whether a line of code uses `unsafe` (comments and strings aside).
fn uses_unsafe(line: &str) -> bool {
    let code = code_of(line);
    code.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|word| word == "unsafe")
}

/// Integration tests may change the process environment (unsafe from the
/// 2024 edition on) under their own lock; nothing else.
fn allowed_in_tests(path: &Path, line: &str) -> bool {
    path.components().any(|c| c.as_os_str() == "tests")
        && (line.contains("std::env::set_var") || line.contains("std::env::remove_var"))
}

#[test]
fn every_crate_root_forbids_unsafe_code_and_ft_model_denies_it() {
    let root = repo_root();
    let mut problems = Vec::new();
    for path in crate_roots(&root) {
        let text = fs::read_to_string(&path).expect("crate root is readable");
        let in_ft_model = path.starts_with(root.join("crates/ft-model"));
        let wanted = if in_ft_model {
            "#![deny(unsafe_code)]"
        } else {
            "#![forbid(unsafe_code)]"
        };
        if !text.contains(wanted) {
            problems.push(format!("{}: expected `{wanted}`", path.display()));
        }
        if in_ft_model && !text.contains("#[allow(unsafe_code)]\nmod ffi;") {
            problems.push(format!(
                "{}: expected `#[allow(unsafe_code)]` directly above `mod ffi;`",
                path.display()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn unsafe_code_appears_only_in_ft_model_ffi() {
    let root = repo_root();
    let ffi = root.join("crates/ft-model/src/ffi");
    let files: Vec<PathBuf> = ["crates", "xtask/src", "tests"]
        .iter()
        .flat_map(|dir| rust_files(&root.join(dir)))
        .collect();
    assert!(
        files.len() > 50,
        "the scan found only {} files",
        files.len()
    );
    let this_file = root.join("tests/tests/tidy_unsafe.rs");
    let mut outside = Vec::new();
    for path in files
        .iter()
        .filter(|p| !p.starts_with(&ffi) && **p != this_file)
    {
        let text = fs::read_to_string(path).expect("source is readable");
        for (index, line) in text.lines().enumerate() {
            if uses_unsafe(line) && !allowed_in_tests(path, line) {
                outside.push(format!("{}:{}: {}", path.display(), index + 1, line.trim()));
            }
        }
    }
    assert!(
        outside.is_empty(),
        "`unsafe` outside crates/ft-model/src/ffi (move it there behind a safe function):\n{}",
        outside.join("\n")
    );
}

#[test]
fn every_unsafe_fn_in_ffi_has_a_safety_section() {
    let files = rust_files(&repo_root().join("crates/ft-model/src/ffi"));
    assert!(
        !files.is_empty(),
        "crates/ft-model/src/ffi has no Rust files"
    );
    let mut missing = Vec::new();
    for path in &files {
        let text = fs::read_to_string(path).expect("source is readable");
        let lines: Vec<&str> = text.lines().collect();
        for (index, line) in lines.iter().enumerate() {
            let code = line.trim_start();
            let declares = code.starts_with("unsafe fn")
                || code.starts_with("pub unsafe fn")
                || code.starts_with("pub(super) unsafe fn")
                || code.starts_with("pub(crate) unsafe fn")
                || code.starts_with("unsafe extern \"C\" fn");
            if !declares {
                continue;
            }
            let documented = lines[..index]
                .iter()
                .rev()
                .take_while(|l| {
                    l.trim_start().starts_with("///") || l.trim_start().starts_with("#[")
                })
                .any(|l| l.trim() == "/// # Safety");
            if !documented {
                missing.push(format!("{}:{}: {}", path.display(), index + 1, code));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "unsafe functions without a `/// # Safety` section:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_scan_sees_unsafe_code() {
    assert!(uses_unsafe("    let x = unsafe { f() };"));
    assert!(uses_unsafe("unsafe fn g() {}"));
    assert!(!uses_unsafe("// unsafe in a comment"));
    assert!(!uses_unsafe("#![forbid(unsafe_code)]"));
    assert!(!uses_unsafe("let unsafe_count = 1;"));
    assert!(!uses_unsafe(r#"find: "let now = unsafe { f() };\\n","#));
    assert!(uses_unsafe(r#"let s = "a\"b"; unsafe { f() }"#));
}
