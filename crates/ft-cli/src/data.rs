//! `ft data`: check dataset files, describe them in tokens, and show what the
//! model sees (ids, token pieces, loss mask).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use ft_config::{ChatTemplate, DataConfig, DataFormat, OverLengthPolicy, TrainingConfig};
use ft_data::{
    check_structure_with, estimate_epoch, read_jsonl_with, render_example, CheckOptions, DataStats,
    Dataset, Encoder, EpochEstimate, RenderedExample, TextTokenizer, ValidationReport,
};
use ft_model::ModelSource;
use ft_trainer::data_options::{batch_options, data_options};
use serde_json::json;

use crate::Failure;

/// Options of `ft data`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DataCommand {
    /// Check JSONL files: every problem with file:line, field, expected and
    /// got; with a tokenizer also lengths and statistics. Exit code 1 when
    /// there is an error.
    ///
    /// Example: `ft data validate train.jsonl valid.jsonl --model smollm2-135m-instruct`
    Validate(ValidateArgs),
    /// Describe JSONL files in tokens: counts per format and label, length
    /// histogram, truncated and dropped examples, tokens per epoch.
    ///
    /// Example: `ft data stats train.jsonl --model smollm2-135m-instruct --json`
    Stats(StatsArgs),
    /// Show examples as the model sees them: token ids, token pieces and the
    /// loss mask (trained tokens highlighted on a terminal).
    ///
    /// Example: `ft data render train.jsonl --tokenizer smollm2-135m-instruct --limit 2`
    Render(RenderArgs),
}

/// Where the tokenizer comes from: `--tokenizer` or `--model`, same meaning.
#[derive(Debug, clap::Args)]
struct TokenizerArg {
    /// A tokenizer.json, a model directory (tokenizer.json and
    /// tokenizer_config.json), a .gguf file or a built-in model name.
    #[arg(long, value_name = "T")]
    tokenizer: Option<String>,
    /// A model directory, a .gguf file, a Hugging Face Hub id or a built-in
    /// model name; its tokenizer is used.
    #[arg(long, value_name = "M", conflicts_with = "tokenizer")]
    model: Option<String>,
}

impl TokenizerArg {
    fn spec(&self) -> Option<&str> {
        self.tokenizer.as_deref().or(self.model.as_deref())
    }
}

/// How records become tokens (the `[data]` settings of a config file).
#[derive(Debug, clap::Args)]
struct EncodeArgs {
    /// Record layout; `auto` detects it per file.
    #[arg(long, default_value = "auto", value_parser = choice(DataFormat::NAMES))]
    format: String,
    /// Longest token sequence fed to the model.
    #[arg(long, value_name = "N", default_value_t = DataConfig::default().max_seq_len,
          value_parser = clap::value_parser!(u32).range(2..))]
    max_seq_len: u32,
    /// What to do with a longer example.
    #[arg(long, default_value = "truncate", value_parser = choice(OverLengthPolicy::NAMES))]
    over_length: String,
    /// Chat template; `auto` uses the model's own.
    #[arg(long, default_value = "auto", value_parser = choice(ChatTemplate::NAMES))]
    template: String,
    /// Compute the loss on every token, not only on completions.
    #[arg(long)]
    train_on_all: bool,
}

impl EncodeArgs {
    /// The `[data]` settings these flags describe.
    fn data_config(&self) -> DataConfig {
        DataConfig {
            format: DataFormat::from_name(&self.format).unwrap_or_default(),
            max_seq_len: self.max_seq_len,
            over_length: OverLengthPolicy::from_name(&self.over_length).unwrap_or_default(),
            template: ChatTemplate::from_name(&self.template).unwrap_or_default(),
            mask_prompt: !self.train_on_all,
            ..DataConfig::default()
        }
    }
}

/// Batching flags, for the tokens-per-epoch estimate.
#[derive(Debug, clap::Args)]
struct BatchArgs {
    /// Sequences per batch, for the tokens-per-epoch estimate.
    #[arg(long, value_name = "N", default_value_t = TrainingConfig::default().batch_size,
          value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Pack several examples into each sequence, for the estimate.
    #[arg(long)]
    packing: bool,
}

#[derive(Debug, clap::Args)]
struct ValidateArgs {
    /// JSONL files to check.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    #[command(flatten)]
    tokenizer: TokenizerArg,
    #[command(flatten)]
    encode: EncodeArgs,
    #[command(flatten)]
    batch: BatchArgs,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct StatsArgs {
    /// JSONL files to describe.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// A model directory, a .gguf file, a Hugging Face Hub id or a built-in
    /// model name; its tokenizer is used.
    #[arg(long, value_name = "M", default_value = ft_config::DEFAULT_MODEL)]
    model: String,
    #[command(flatten)]
    encode: EncodeArgs,
    #[command(flatten)]
    batch: BatchArgs,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct RenderArgs {
    /// A JSONL file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// A tokenizer.json, a model directory, a .gguf file or a built-in model
    /// name (`--model M` means the same, as in `validate` and `stats`).
    #[arg(long, visible_alias = "model", value_name = "T", default_value = ft_config::DEFAULT_MODEL)]
    tokenizer: String,
    #[command(flatten)]
    encode: EncodeArgs,
    /// How many examples to show, from the start of the file.
    #[arg(long, value_name = "N", default_value_t = 3)]
    limit: usize,
    /// One JSON object per line: `source`, `ids`, `pieces`, `texts`, `mask`,
    /// `text`, `targets`, `truncated`.
    #[arg(long)]
    json: bool,
}

/// A clap parser accepting exactly `names`.
fn choice(names: &'static [&'static str]) -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(names)
}

/// Runs `ft data ...`.
pub fn run(args: &Args) -> Result<(), Failure> {
    match &args.command {
        DataCommand::Validate(args) => validate(args),
        DataCommand::Stats(args) => stats(args),
        DataCommand::Render(args) => render(args),
    }
}

fn user(error: impl Into<anyhow::Error>) -> Failure {
    Failure::User(error.into())
}

fn internal(error: impl Into<anyhow::Error>) -> Failure {
    Failure::Internal(error.into())
}

/// Loads a tokenizer from a tokenizer.json, a model directory, a .gguf file
/// or a built-in model name.
pub fn load_tokenizer(spec: &str) -> Result<TextTokenizer, Failure> {
    let given = Path::new(spec);
    let path = if given.exists() {
        given.to_path_buf()
    } else {
        ModelSource::resolve(spec)
            .map_err(user)?
            .path()
            .to_path_buf()
    };
    // The cause is the useful part (which file, which field): keep it in the
    // one-line message, not only in the `-v` chain.
    TextTokenizer::from_path(&path).map_err(|error| {
        Failure::User(anyhow!(
            "cannot load a tokenizer from {}: {error}",
            path.display()
        ))
    })
}

/// Every file must be readable before any is checked, so that all missing
/// files are named at once.
fn check_files_exist(files: &[PathBuf]) -> Result<(), Failure> {
    let missing: Vec<String> = files
        .iter()
        .filter(|f| !f.is_file())
        .map(|f| f.display().to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(user(anyhow!("no such file: {}", missing.join(", "))))
    }
}

/// What `validate` and `stats` compute with a tokenizer.
struct Measured {
    report: ValidationReport,
    stats: DataStats,
    epoch: EpochEstimate,
}

fn measure(
    files: &[PathBuf],
    tokenizer: &TextTokenizer,
    encode: &EncodeArgs,
    batch: &BatchArgs,
) -> Result<Measured, Failure> {
    let data = DataConfig {
        packing: batch.packing,
        ..encode.data_config()
    };
    let dataset = Dataset::prepare(files, tokenizer, &data_options(&data)).map_err(user)?;
    let training = TrainingConfig {
        batch_size: batch.batch_size,
        ..TrainingConfig::default()
    };
    let batching = batch_options(&training, &data, tokenizer.special().pad_id());
    let epoch = if dataset.examples.is_empty() {
        EpochEstimate::default()
    } else {
        estimate_epoch(&dataset.examples, &batching).map_err(internal)?
    };
    Ok(Measured {
        report: dataset.report,
        stats: dataset.stats,
        epoch,
    })
}

fn validate(args: &ValidateArgs) -> Result<(), Failure> {
    check_files_exist(&args.files)?;
    let (report, measured) = match args.tokenizer.spec() {
        Some(spec) => {
            let tokenizer = load_tokenizer(spec)?;
            let measured = measure(&args.files, &tokenizer, &args.encode, &args.batch)?;
            (measured.report.clone(), Some(measured))
        }
        None => {
            // Without a tokenizer `auto` stays unresolved: only an explicit
            // `--template mistral-v3` brings Mistral's rules (call ids).
            let options = data_options(&args.encode.data_config());
            let checks = CheckOptions::for_template(&options.encode.template);
            (
                check_structure_with(&args.files, options.format, &checks).map_err(user)?,
                None,
            )
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut value = json!({
            "ok": report.is_ok(),
            "files": args.files,
            "diagnostics": report.diagnostics,
            "counts": report.counts,
        });
        if let Some(m) = &measured {
            value["stats"] = json!(m.stats);
            value["epoch"] = epoch_json(&m.epoch, args.batch.batch_size);
        }
        writeln!(out, "{value}").map_err(internal)?;
    } else {
        for diagnostic in &report.diagnostics {
            writeln!(out, "{diagnostic}").map_err(internal)?;
        }
        if !report.diagnostics.is_empty() {
            writeln!(out).map_err(internal)?;
        }
        write_counts(&mut out, &report).map_err(internal)?;
        match &measured {
            Some(m) => write_stats(&mut out, &m.stats, &m.epoch, args.batch.batch_size)
                .map_err(internal)?,
            None => writeln!(
                out,
                "lengths        not checked (give --tokenizer or --model to check token lengths)"
            )
            .map_err(internal)?,
        }
    }
    out.flush().map_err(internal)?;
    let errors = report.counts.errors;
    if errors > 0 {
        return Err(user(anyhow!(
            "the data has {errors} error{} (and {} warning{}); fix the lines above",
            plural(errors),
            report.counts.warnings,
            plural(report.counts.warnings)
        )));
    }
    Ok(())
}

fn stats(args: &StatsArgs) -> Result<(), Failure> {
    check_files_exist(&args.files)?;
    let tokenizer = load_tokenizer(&args.model)?;
    let m = measure(&args.files, &tokenizer, &args.encode, &args.batch)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let value = json!({
            "files": args.files,
            "counts": m.report.counts,
            "stats": m.stats,
            "epoch": epoch_json(&m.epoch, args.batch.batch_size),
        });
        writeln!(out, "{value}").map_err(internal)?;
    } else {
        write_counts(&mut out, &m.report).map_err(internal)?;
        write_stats(&mut out, &m.stats, &m.epoch, args.batch.batch_size).map_err(internal)?;
    }
    out.flush().map_err(internal)?;
    if m.report.counts.errors > 0 {
        eprintln!(
            "note: {} line{} with errors left out; `ft data validate` lists them",
            m.report.counts.errors,
            plural(m.report.counts.errors)
        );
    }
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn epoch_json(epoch: &EpochEstimate, batch_size: u32) -> serde_json::Value {
    json!({
        "batch_size": batch_size,
        "batches": epoch.batches,
        "tokens": epoch.tokens,
        "padded_tokens": epoch.padded_tokens,
        "target_tokens": epoch.target_tokens,
        "padding_fraction": epoch.padding_fraction(),
    })
}

fn write_counts(out: &mut impl Write, report: &ValidationReport) -> std::io::Result<()> {
    let c = &report.counts;
    writeln!(
        out,
        "files          {} ({} lines, {} blank)",
        c.files, c.lines, c.blank_lines
    )?;
    let formats: Vec<String> = c
        .per_format
        .iter()
        .map(|(format, n)| format!("{format} {n}"))
        .collect();
    writeln!(
        out,
        "examples       {} readable{}",
        c.examples,
        if formats.is_empty() {
            String::new()
        } else {
            format!(" ({})", formats.join(", "))
        }
    )?;
    if c.desirable + c.undesirable > 0 {
        writeln!(
            out,
            "labels         {} desirable, {} undesirable, {} left out by label",
            c.desirable, c.undesirable, c.skipped_by_label
        )?;
    }
    if c.tool_examples > 0 {
        writeln!(
            out,
            "tools          {} example{} with tools, {} tool call{}",
            c.tool_examples,
            plural(c.tool_examples),
            c.tool_calls,
            plural(c.tool_calls)
        )?;
    }
    writeln!(
        out,
        "problems       {} error{}, {} warning{} ({} duplicate{})",
        c.errors,
        plural(c.errors),
        c.warnings,
        plural(c.warnings),
        c.duplicates,
        plural(c.duplicates)
    )
}

fn write_stats(
    out: &mut impl Write,
    stats: &DataStats,
    epoch: &EpochEstimate,
    batch_size: u32,
) -> std::io::Result<()> {
    writeln!(
        out,
        "kept           {} example{} ({} truncated, {} dropped)",
        stats.examples,
        plural(stats.examples),
        stats.truncated,
        stats.dropped
    )?;
    writeln!(
        out,
        "tokens         {} ({} trained on); per example min {}, mean {:.1}, max {}",
        stats.tokens, stats.target_tokens, stats.min_len, stats.mean_len, stats.max_len
    )?;
    if !stats.length_histogram.is_empty() {
        writeln!(out, "length histogram (tokens: examples)")?;
        let largest = stats
            .length_histogram
            .iter()
            .map(|b| b.count)
            .max()
            .unwrap_or(1)
            .max(1);
        for bucket in &stats.length_histogram {
            let bar = (bucket.count * 40).div_ceil(largest);
            writeln!(
                out,
                "  {:>6}-{:<6} {:>8}  {}",
                bucket.from,
                bucket.to,
                bucket.count,
                "#".repeat(bar)
            )?;
        }
    }
    writeln!(
        out,
        "epoch          {} batch{} of {}: {} tokens with {:.1}% padding, {} trained on",
        epoch.batches,
        if epoch.batches == 1 { "" } else { "es" },
        batch_size,
        epoch.padded_tokens,
        epoch.padding_fraction() * 100.0,
        epoch.target_tokens
    )
}

fn render(args: &RenderArgs) -> Result<(), Failure> {
    check_files_exist(std::slice::from_ref(&args.file))?;
    let tokenizer = load_tokenizer(&args.tokenizer)?;
    let options = data_options(&args.encode.data_config());
    let encoder = Encoder::new(&tokenizer, options.encode).map_err(user)?;
    let checks = encoder.formatter().check_options();
    let parsed = read_jsonl_with(&args.file, options.format, &checks).map_err(user)?;
    // Encode chunk by chunk until enough examples are shown (some may be dropped).
    let mut shown = 0;
    let mut out = std::io::stdout().lock();
    let colour =
        !args.json && std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    for chunk in parsed.examples.chunks(args.limit.max(1)) {
        if shown >= args.limit {
            break;
        }
        let encoded = encoder.encode_all(chunk);
        for diagnostic in &encoded.diagnostics {
            eprintln!("{diagnostic}");
        }
        for example in &encoded.examples {
            if shown >= args.limit {
                break;
            }
            let rendered = render_example(&tokenizer, example).map_err(user)?;
            if args.json {
                let line = serde_json::to_string(&rendered).map_err(internal)?;
                writeln!(out, "{line}").map_err(internal)?;
            } else {
                write_rendered(&mut out, &rendered, colour).map_err(internal)?;
            }
            shown += 1;
        }
    }
    out.flush().map_err(internal)?;
    let errors = parsed.diagnostics.iter().filter(|d| d.is_error()).count();
    if errors > 0 && !args.json {
        eprintln!(
            "note: {errors} line{} with errors skipped; `ft data validate` lists them",
            plural(errors)
        );
    }
    Ok(())
}

const TARGET_ON: &str = "\x1b[1;32m";
const DIM_ON: &str = "\x1b[2m";
const STYLE_OFF: &str = "\x1b[0m";

/// One example: its text with trained spans marked, then one row per token.
fn write_rendered(
    out: &mut impl Write,
    example: &RenderedExample,
    colour: bool,
) -> std::io::Result<()> {
    let targets = example.mask.iter().filter(|m| **m).count();
    writeln!(
        out,
        "== {}:{} ({}, {} tokens, {} trained on{})",
        example.source.file,
        example.source.line,
        example.format,
        example.ids.len(),
        targets,
        if example.truncated { ", truncated" } else { "" }
    )?;
    if colour {
        let mut text = String::new();
        let mut in_target = false;
        for (piece, &trained) in example.texts.iter().zip(&example.mask) {
            if trained != in_target {
                text.push_str(if trained { TARGET_ON } else { STYLE_OFF });
                in_target = trained;
            }
            text.push_str(piece);
        }
        if in_target {
            text.push_str(STYLE_OFF);
        }
        writeln!(out, "{text}")?;
    } else {
        writeln!(out, "{}", example.annotated())?;
    }
    writeln!(out, "-- tokens (index, id, * = trained on, piece, text)")?;
    for (i, ((id, piece), (text, &trained))) in example
        .ids
        .iter()
        .zip(&example.pieces)
        .zip(example.texts.iter().zip(&example.mask))
        .enumerate()
    {
        let row = format!(
            "{i:>5} {id:>7} {} {:<20} {:?}",
            if trained { '*' } else { ' ' },
            piece,
            text
        );
        match (colour, trained) {
            (true, true) => writeln!(out, "{TARGET_ON}{row}{STYLE_OFF}")?,
            (true, false) => writeln!(out, "{DIM_ON}{row}{STYLE_OFF}")?,
            (false, _) => writeln!(out, "{row}")?,
        }
    }
    writeln!(out)
}
