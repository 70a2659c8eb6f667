//! `cargo xtask fixtures <name>`: regenerates committed test fixtures from
//! reference implementations.
//!
//! * `chat-template`: the default model's chat template (from its GGUF
//!   metadata) rendered by Hugging Face transformers for the conversations in
//!   `crates/ft-data/tests/fixtures/chat_template_conversations.json`, into
//!   `chat_template_smollm2.json` next to it. ft-data's test
//!   `chat_template_parity` checks its own renderer against it, with no
//!   Python.
//! * `logits`: mlx_lm's logits on the fp32 export of the default model, into
//!   `crates/ft-model/tests/fixtures/mlx_lm_logits.json`, checked by
//!   ft-model's `mlx_lm_parity` test (see `reference.rs`).
//! * `mlx-lm-adapters`: three adapters trained by `mlx_lm lora` itself on the
//!   fp32 export of the default model (mlx-lm's default LoRA with no `keys`,
//!   DoRA, and LoRA on a base quantized by `mlx_lm convert -q`), with the
//!   logits mlx-lm computes with each, into
//!   `crates/ft-lora/tests/fixtures/mlx_lm/`; checked by ft-lora's
//!   `mlx_lm_adapters` test.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

use crate::{python, setup, shell};

/// The default model's GGUF, installed by setup.
const DEFAULT_GGUF: &str = ".ft/models/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The conversations to render (committed input).
const CONVERSATIONS: &str = "crates/ft-data/tests/fixtures/chat_template_conversations.json";
/// The fixture written (committed output).
const CHAT_TEMPLATE_FIXTURE: &str = "crates/ft-data/tests/fixtures/chat_template_smollm2.json";

/// The adapters trained by mlx-lm (committed output).
const ADAPTER_FIXTURES: &str = "crates/ft-lora/tests/fixtures/mlx_lm";

/// The fixtures `cargo xtask fixtures` writes.
#[derive(Debug, clap::Subcommand)]
pub enum Fixture {
    /// Setup and the reference venv, then the chat-template parity fixture
    /// (Hugging Face transformers), checked by ft-data's chat_template_parity
    ChatTemplate,
    /// Setup and the reference venv, then the mlx_lm logits parity fixture,
    /// checked by ft-model's mlx_lm_parity
    Logits,
    /// Setup and the reference venv, then adapters trained by `mlx_lm lora`
    /// with its logits, checked by ft-lora's mlx_lm_adapters
    MlxLmAdapters,
}

/// Runs `cargo xtask fixtures <name>`.
pub fn run(root: &Path, fixture: Fixture) -> Result<()> {
    match fixture {
        Fixture::ChatTemplate => chat_template(root),
        Fixture::Logits => crate::reference::logits_fixture(root),
        Fixture::MlxLmAdapters => mlx_lm_adapters(root),
    }
}

fn mlx_lm_adapters(root: &Path) -> Result<()> {
    setup::run(root, setup::Options::default())?;
    let venv = python::reference_venv(root)?;
    let ft = crate::reference::build_ft(root)?;
    let model = crate::reference::f32_default_model(root, &ft)?;
    let out = root.join(ADAPTER_FIXTURES);
    shell::step(&format!(
        "mlx_lm lora: three adapters on the demo data -> {ADAPTER_FIXTURES}"
    ));
    let printed = python::helper_json(
        root,
        &venv,
        &[
            "adapters",
            crate::reference::path_str(&model)?,
            crate::reference::path_str(&root.join("examples/data/demo"))?,
            crate::reference::path_str(&out)?,
        ],
    )?;
    println!("{}", printed.trim());
    println!("check them with: cargo nextest run -p ft-lora --test mlx_lm_adapters");
    Ok(())
}

fn chat_template(root: &Path) -> Result<()> {
    setup::run(root, setup::Options::default())?;
    // The reference venv has transformers (pinned) and MLX, which reads GGUF metadata.
    let venv = python::reference_venv(root)?;
    let gguf = root.join(DEFAULT_GGUF);
    if !gguf.is_file() {
        bail!("{} is missing: run `cargo xtask setup`", gguf.display());
    }
    shell::step(&format!(
        "rendering {CONVERSATIONS} with transformers into {CHAT_TEMPLATE_FIXTURE}"
    ));
    shell::run(
        Command::new(python::python(&venv))
            .arg(root.join("xtask/python/chat_template_fixture.py"))
            .arg(&gguf)
            .arg(root.join(CONVERSATIONS))
            .arg(root.join(CHAT_TEMPLATE_FIXTURE))
            .current_dir(root),
    )
    .context("rendering the chat-template fixture")?;
    println!("check it with: cargo nextest run -p ft-data --test chat_template_parity");
    Ok(())
}
