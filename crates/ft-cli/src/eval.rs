//! `ft eval`: loss, perplexity and token count of a model (with an adapter)
//! on a dataset.

use crate::common::{data_failure, load_for_inference, model_failure, stop_ids, train_failure};
use crate::Failure;
use ft_data::{ChatFormatter, Dataset, Example, Message, Role, TemplateChoice};
use ft_model::{generate_batch, LinearAdapter, NoAdapter};
use std::path::PathBuf;

/// Arguments of `ft eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    choice: crate::common::ModelChoice,
    /// A JSONL dataset (chat, prompt/completion, text or preference records).
    #[arg(long)]
    data: PathBuf,
    /// Longest sequence; longer examples are truncated.
    #[arg(long, default_value_t = 2048)]
    max_seq_len: u32,
    /// Sequences per batch.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Compute the loss on every token, not only on completions.
    #[arg(long)]
    train_on_all: bool,
    /// Also generate a reply (greedy) for each example and score it against
    /// the reference: exact match of the whole reply, and, with
    /// --format-regex, whether the reply has the expected shape.
    #[arg(long)]
    generate: bool,
    /// A regular expression a well-formed reply matches (with --generate).
    #[arg(long, requires = "generate")]
    format_regex: Option<String>,
    /// Score only the first N examples (with --generate).
    #[arg(long)]
    limit: Option<usize>,
    /// Most tokens per generated reply (with --generate).
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Print this many generated replies next to their references.
    #[arg(long, default_value_t = 0)]
    show: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Prompts generated for together by `--generate`.
const GENERATION_BATCH: usize = 16;

/// The task metric: replies generated for held-out prompts against their references.
#[derive(Debug, serde::Serialize)]
struct TaskScore {
    examples: usize,
    exact_match: f64,
    format_match: Option<f64>,
    samples: Vec<Sample>,
}

#[derive(Debug, serde::Serialize)]
struct Sample {
    prompt: String,
    reference: String,
    reply: String,
}

/// The conversation before the reply and the reference reply of an example.
fn prompt_and_reference(example: &Example) -> Option<(Vec<Message>, String)> {
    match example {
        Example::Chat { messages, .. } => {
            let last = messages.iter().rposition(|m| m.role == Role::Assistant)?;
            Some((messages[..last].to_vec(), messages[last].content.clone()))
        }
        Example::PromptCompletion { prompt, completion }
        | Example::Preference {
            prompt, completion, ..
        } => Some((
            vec![Message::new(Role::User, prompt.clone())],
            completion.clone(),
        )),
        Example::Text { .. } => None,
    }
}

fn score_generation(
    args: &Args,
    loaded: &crate::common::LoadedModel,
    adapter: &dyn LinearAdapter,
) -> Result<TaskScore, Failure> {
    let format_regex = match &args.format_regex {
        Some(pattern) => Some(
            regex::Regex::new(pattern)
                .map_err(|error| Failure::User(anyhow::anyhow!("--format-regex: {error}")))?,
        ),
        None => None,
    };
    let parsed = ft_data::read_jsonl(&args.data, None).map_err(data_failure)?;
    let formatter =
        ChatFormatter::new(&TemplateChoice::Auto, &loaded.tokenizer).map_err(data_failure)?;
    let stops = stop_ids(&loaded.model, &loaded.tokenizer);
    let pairs: Vec<(Vec<Message>, String)> = parsed
        .examples
        .iter()
        .filter_map(|e| prompt_and_reference(&e.example))
        .take(args.limit.unwrap_or(usize::MAX))
        .collect();
    if pairs.is_empty() {
        return Err(Failure::User(anyhow::anyhow!(
            "{}: no example with a reference reply to score",
            args.data.display()
        )));
    }
    let (mut exact, mut formatted) = (0usize, 0usize);
    let mut samples = Vec::new();
    // Batched: decoding reads every weight once per step whatever the batch.
    for chunk in pairs.chunks(GENERATION_BATCH) {
        let prompts = chunk
            .iter()
            .map(|(messages, _)| formatter.encode_prompt(&loaded.tokenizer, messages))
            .collect::<Result<Vec<_>, _>>()
            .map_err(data_failure)?;
        let replies = generate_batch(&loaded.model, adapter, &prompts, args.max_tokens, &stops)
            .map_err(model_failure)?;
        for ((messages, reference), reply_ids) in chunk.iter().zip(replies) {
            let ids: Vec<u32> = reply_ids
                .into_iter()
                .filter(|id| !stops.contains(id))
                .collect();
            let reply = loaded.tokenizer.decode(&ids, true).map_err(data_failure)?;
            let reply = reply.trim().to_string();
            exact += usize::from(reply == reference.trim());
            if let Some(re) = &format_regex {
                formatted += usize::from(re.is_match(&reply));
            }
            if samples.len() < args.show {
                let prompt = messages
                    .iter()
                    .rev()
                    .find(|m| m.role == Role::User)
                    .map(|m| m.content.clone())
                    .unwrap_or_default();
                samples.push(Sample {
                    prompt,
                    reference: reference.clone(),
                    reply,
                });
            }
        }
    }
    let count = pairs.len();
    Ok(TaskScore {
        examples: count,
        exact_match: exact as f64 / count as f64,
        format_match: format_regex.map(|_| formatted as f64 / count as f64),
        samples,
    })
}

/// Runs `ft eval`.
pub fn run(args: &Args) -> Result<(), Failure> {
    // Before the model is loaded: a missing file is a quick, clear error.
    if !args.data.is_file() {
        return Err(Failure::User(anyhow::anyhow!(
            "{}: no such data file (a JSONL dataset is expected)",
            args.data.display()
        )));
    }
    let loaded = load_for_inference(&args.choice.model, args.choice.adapter.as_ref())?;
    let data_config = ft_config::DataConfig {
        max_seq_len: args.max_seq_len,
        mask_prompt: !args.train_on_all,
        ..ft_config::DataConfig::default()
    };
    let options = ft_trainer::data_options::data_options(&data_config);
    let dataset =
        Dataset::load(&[&args.data], &loaded.tokenizer, &options).map_err(data_failure)?;
    let adapter: &dyn LinearAdapter = match &loaded.adapters {
        Some(adapters) => &adapters.view(),
        None => &NoAdapter,
    };
    let result = ft_trainer::evaluate(
        &loaded.model,
        adapter,
        &dataset,
        args.batch_size,
        loaded.tokenizer.special().pad_id(),
        None,
    )
    .map_err(train_failure)?;
    let task = if args.generate {
        Some(score_generation(args, &loaded, adapter)?)
    } else {
        None
    };
    if args.json {
        let object = serde_json::json!({
            "model": args.choice.model,
            "adapter": args.choice.adapter,
            "data": args.data,
            "examples": dataset.examples.len(),
            "loss": result.loss,
            "perplexity": result.perplexity,
            "target_tokens": result.target_tokens,
            "task": task,
        });
        println!("{object}");
    } else {
        println!(
            "{}: {} examples, {} target tokens, loss {:.4}, perplexity {:.3}",
            args.data.display(),
            dataset.examples.len(),
            result.target_tokens,
            result.loss,
            result.perplexity
        );
        if let Some(task) = &task {
            print!(
                "  generated replies: exact match {:.1}% of {}",
                100.0 * task.exact_match,
                task.examples
            );
            match task.format_match {
                Some(rate) => println!(", format match {:.1}%", 100.0 * rate),
                None => println!(),
            }
            for sample in &task.samples {
                // Continuation lines indented under their label.
                let indent = |text: &str| text.replace('\n', "\n             ");
                println!("  prompt:    {}", indent(&sample.prompt));
                println!("  reference: {}", indent(&sample.reference));
                println!("  reply:     {}", indent(&sample.reply));
            }
        }
    }
    Ok(())
}
