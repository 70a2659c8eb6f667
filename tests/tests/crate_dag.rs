//! The workspace's crates form the strict DAG of the design card. This test
//! reads `cargo metadata` and fails on any internal edge not listed here.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Every internal edge that may exist (normal dependencies), per crate.
const ALLOWED: &[(&str, &[&str])] = &[
    ("ft-config", &[]),
    ("ft-gguf", &[]),
    ("ft-data", &["ft-config", "ft-gguf"]),
    ("ft-model", &["ft-config", "ft-gguf"]),
    ("ft-lora", &["ft-model", "ft-config", "ft-gguf"]),
    ("ft-optim", &[]),
    (
        "ft-trainer",
        &[
            "ft-config",
            "ft-gguf",
            "ft-data",
            "ft-model",
            "ft-lora",
            "ft-optim",
        ],
    ),
    (
        "ft-cli",
        &[
            "ft-trainer",
            "ft-config",
            "ft-gguf",
            "ft-data",
            "ft-model",
            "ft-lora",
            "ft-optim",
        ],
    ),
];

/// Packages that sit outside the layers and may use any library crate.
const OUTSIDE_LAYERS: &[&str] = &["ft-integration-tests", "ft-examples"];

fn workspace_edges() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let members: BTreeSet<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    packages
        .iter()
        .map(|package| {
            let name = package["name"].as_str().expect("name").to_string();
            let internal = package["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter_map(|dep| dep["name"].as_str())
                .filter(|dep| members.contains(*dep))
                .map(str::to_string)
                .collect();
            (name, internal)
        })
        .collect()
}

/// The edges of `edges` that `ALLOWED` does not permit, as "from -> to".
fn illegal_edges(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut illegal = Vec::new();
    for (from, targets) in edges {
        if OUTSIDE_LAYERS.contains(&from.as_str()) {
            continue;
        }
        let Some(permitted) = allowed.get(from.as_str()) else {
            illegal.push(format!("{from} is not a known layer (add it to ALLOWED)"));
            continue;
        };
        for to in targets {
            if !permitted.contains(&to.as_str()) {
                illegal.push(format!("{from} -> {to}"));
            }
        }
    }
    illegal
}

#[test]
fn internal_dependencies_follow_the_layering() {
    let edges = workspace_edges();
    for (layer, _) in ALLOWED {
        assert!(edges.contains_key(*layer), "crate {layer} is missing");
    }
    let illegal = illegal_edges(&edges);
    assert!(illegal.is_empty(), "illegal crate edges: {illegal:?}");
}

#[test]
fn an_upward_edge_is_caught() {
    let mut edges = workspace_edges();
    edges
        .get_mut("ft-config")
        .expect("ft-config")
        .insert("ft-trainer".into());
    edges
        .get_mut("ft-optim")
        .expect("ft-optim")
        .insert("ft-model".into());
    // The format layer knows no other crate, not even ft-config.
    edges
        .get_mut("ft-gguf")
        .expect("ft-gguf")
        .insert("ft-config".into());
    assert_eq!(
        illegal_edges(&edges),
        vec![
            "ft-config -> ft-trainer",
            "ft-gguf -> ft-config",
            "ft-optim -> ft-model"
        ]
    );
}
