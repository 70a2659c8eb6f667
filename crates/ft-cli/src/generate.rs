//! `ft generate`: text from a model, with or without an adapter, streamed.

use crate::common::{data_failure, load_for_inference, model_failure, stop_ids, LoadedModel};
use crate::Failure;
use anyhow::anyhow;
use ft_data::{ChatFormatter, Message, Role, TemplateChoice};
use ft_model::{generate, LinearAdapter, NoAdapter, SamplingOptions};
use std::io::{BufRead, Write};

/// Arguments of `ft generate`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "chat"])))]
pub struct Args {
    #[command(flatten)]
    choice: crate::common::ModelChoice,
    /// One prompt; it is wrapped in the model's chat template unless --raw.
    #[arg(long)]
    prompt: Option<String>,
    /// An interactive conversation on the terminal (an empty line or EOF ends it).
    #[arg(long)]
    chat: bool,
    /// A system prompt.
    #[arg(long)]
    system: Option<String>,
    /// Feed the prompt as plain text, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temp: f32,
    /// Nucleus sampling mass (1 disables it).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep only the k most likely tokens (0 disables it).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Penalty for tokens already present (1 disables it).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the prompt and generated token ids, text and timings as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `ft generate`.
pub fn run(args: &Args) -> Result<(), Failure> {
    if !(0.0..=1.0).contains(&args.top_p) || args.top_p == 0.0 {
        return Err(Failure::User(anyhow!(
            "--top-p must be in (0, 1], got {}",
            args.top_p
        )));
    }
    if args.temp < 0.0 {
        return Err(Failure::User(anyhow!(
            "--temp must be >= 0, got {}",
            args.temp
        )));
    }
    let loaded = load_for_inference(&args.choice.model, args.choice.adapter.as_ref())?;
    let formatter =
        ChatFormatter::new(&TemplateChoice::Auto, &loaded.tokenizer).map_err(data_failure)?;
    let mut history: Vec<Message> = args
        .system
        .iter()
        .map(|s| Message::new(Role::System, s.clone()))
        .collect();
    if let Some(prompt) = &args.prompt {
        history.push(Message::new(Role::User, prompt.clone()));
        reply(args, &loaded, &formatter, &history)?;
        return Ok(());
    }
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        let read = stdin
            .lock()
            .read_line(&mut line)
            .map_err(|error| Failure::User(anyhow!("cannot read the terminal: {error}")))?;
        let line = line.trim_end_matches(['\n', '\r']);
        if read == 0 || line.is_empty() {
            return Ok(());
        }
        history.push(Message::new(Role::User, line.to_string()));
        let text = reply(args, &loaded, &formatter, &history)?;
        history.push(Message::new(Role::Assistant, text));
    }
}

/// Generates the assistant's reply to `history`, streaming it to stdout.
fn reply(
    args: &Args,
    loaded: &LoadedModel,
    formatter: &ChatFormatter,
    history: &[Message],
) -> Result<String, Failure> {
    let tokenizer = &loaded.tokenizer;
    let prompt = if args.raw {
        let text: Vec<&str> = history.iter().map(|m| m.content.as_str()).collect();
        let mut ids = tokenizer.encode(&text.join("\n")).map_err(data_failure)?;
        if let (Some(bos), true) = (tokenizer.special().bos, tokenizer.special().add_bos) {
            ids.insert(0, bos);
        }
        ids
    } else {
        formatter
            .encode_prompt(tokenizer, history)
            .map_err(data_failure)?
    };
    let stops = stop_ids(&loaded.model, tokenizer);
    let options = SamplingOptions {
        temperature: args.temp,
        top_p: args.top_p,
        top_k: args.top_k,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        max_tokens: args.max_tokens,
        stop_ids: stops.clone(),
        ..SamplingOptions::default()
    };
    let adapter: &dyn LinearAdapter = match &loaded.adapters {
        Some(adapters) => &adapters.view(),
        None => &NoAdapter,
    };
    let mut produced: Vec<u32> = Vec::new();
    let mut printed = 0usize;
    let mut out = std::io::stdout();
    let generation = generate(&loaded.model, adapter, &prompt, &options, &mut |id| {
        if args.json || stops.contains(&id) {
            return true;
        }
        produced.push(id);
        // Decode the whole reply so far: multi-byte characters span tokens.
        if let Ok(text) = tokenizer.decode(&produced, true) {
            if text.len() > printed && text.is_char_boundary(printed) && !text.ends_with('\u{FFFD}')
            {
                let _ = write!(out, "{}", &text[printed..]);
                let _ = out.flush();
                printed = text.len();
            }
        }
        true
    })
    .map_err(model_failure)?;
    let text_ids: Vec<u32> = generation
        .tokens
        .iter()
        .copied()
        .filter(|id| !stops.contains(id))
        .collect();
    let text = tokenizer.decode(&text_ids, true).map_err(data_failure)?;
    if args.json {
        let object = serde_json::json!({
            "prompt_tokens": prompt.len(),
            "prompt_ids": prompt,
            "tokens": generation.tokens,
            "text": text,
            "stop_reason": format!("{:?}", generation.stop_reason),
            "prompt_seconds": generation.prompt_seconds,
            "decode_seconds": generation.decode_seconds,
        });
        println!("{object}");
    } else {
        if text.len() > printed && text.is_char_boundary(printed) {
            print!("{}", &text[printed..]);
        }
        println!();
    }
    Ok(text)
}
