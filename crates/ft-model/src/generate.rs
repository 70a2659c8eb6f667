//! Decoding with a KV cache: chunked prompt processing, then one token at a
//! time with greedy or temperature / top-k / top-p sampling, a repetition
//! penalty, a seed, a token budget and stop ids; each token is streamed to a
//! callback.

use crate::model::{AttentionScope, KvCache, LinearAdapter, Model};
use crate::{Error, Result};
use mlx_rs::{ops, Array, Dtype};
use std::time::Instant;

/// How to pick tokens.
#[derive(Clone, Debug)]
pub struct SamplingOptions {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling mass in (0, 1]; 1 disables it.
    pub top_p: f32,
    /// Keep only the k most likely tokens; 0 disables it.
    pub top_k: usize,
    /// > 1 discourages tokens already in the context (CTRL-style).
    pub repetition_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repetition_context: usize,
    /// Seed of the sampling random stream.
    pub seed: u64,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Generation stops after any of these ids (it is included in the output).
    pub stop_ids: Vec<u32>,
    /// Prompt tokens processed per forward pass.
    pub prefill_chunk: usize,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            repetition_context: 64,
            seed: 0,
            max_tokens: 256,
            stop_ids: Vec::new(),
            prefill_chunk: 512,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A stop id was produced.
    StopToken,
    /// `max_tokens` were produced.
    MaxTokens,
    /// The callback asked to stop.
    Cancelled,
}

/// The result of [`generate`].
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated ids (without the prompt).
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Prompt length.
    pub prompt_tokens: usize,
    /// Seconds spent on the prompt (up to the first token).
    pub prompt_seconds: f64,
    /// Seconds spent producing the remaining tokens.
    pub decode_seconds: f64,
}

/// Generates after `prompt`; `on_token` sees each new id and returns
/// `false` to stop early.
pub fn generate(
    model: &Model,
    adapter: &dyn LinearAdapter,
    prompt: &[u32],
    options: &SamplingOptions,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::InvalidRequest("the prompt has no tokens".into()));
    }
    if let Some(&bad) = prompt
        .iter()
        .find(|&&id| id as usize >= model.args.vocab_size)
    {
        return Err(Error::InvalidRequest(format!(
            "token id {bad} is outside the vocabulary (size {})",
            model.args.vocab_size
        )));
    }
    let started = Instant::now();
    let mut cache = KvCache::new(model.args.num_layers);
    let chunk = options.prefill_chunk.max(1);
    let mut last_hidden = None;
    for piece in prompt.chunks(chunk) {
        let ids = ids_array(piece);
        let hidden =
            model.hidden_states(&ids, adapter, Some(&mut cache), AttentionScope::Causal)?;
        let last = hidden.take_axis(Array::from_int(piece.len() as i32 - 1), 1)?;
        last.eval()?;
        last_hidden = Some(last);
    }
    let Some(last_hidden) = last_hidden else {
        return Err(Error::InvalidRequest("the prompt has no tokens".into()));
    };
    let logits = model.logits(&last_hidden)?;
    let timing = Timing {
        started,
        prompt_tokens: prompt.len(),
    };
    if options.temperature <= 0.0 && options.repetition_penalty == 1.0 {
        return greedy_on_device(model, adapter, cache, logits, options, on_token, timing);
    }
    let mut logits = logits;
    let mut sampler = Sampler::new(options.seed);
    let mut context: Vec<u32> = prompt.to_vec();
    let mut tokens = Vec::new();
    let mut prompt_seconds = None;
    let mut decode_started = Instant::now();
    let stop_reason = loop {
        let values = host_logits(&logits)?;
        let next = sampler.pick(values, &context, options);
        if prompt_seconds.is_none() {
            prompt_seconds = Some(started.elapsed().as_secs_f64());
            decode_started = Instant::now();
        }
        tokens.push(next);
        context.push(next);
        if let Some(reason) = stop_after(next, tokens.len(), options, on_token) {
            break reason;
        }
        logits = model.forward(
            &ids_array(&[next]),
            adapter,
            Some(&mut cache),
            AttentionScope::Causal,
        )?;
    };
    Ok(timing.finish(tokens, stop_reason, prompt_seconds, decode_started))
}

/// Greedy replies to several prompts at once. Decoding one token reads all
/// the weights whatever the batch, so a batch of prompts costs about what
/// one does. Prompts are left-padded to the longest; padding is kept out of
/// attention with segment ids (RoPE is relative, so a row's shifted
/// positions do not change its scores). Each reply stops at its first stop
/// id (included) or after `max_tokens`.
pub fn generate_batch(
    model: &Model,
    adapter: &dyn LinearAdapter,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    stop_ids: &[u32],
) -> Result<Vec<Vec<u32>>> {
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    let vocab = model.args.vocab_size;
    if let Some(bad) = prompts.iter().flatten().find(|&&id| id as usize >= vocab) {
        return Err(Error::InvalidRequest(format!(
            "token id {bad} is outside the vocabulary (size {vocab})"
        )));
    }
    let rows = prompts.len();
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if width == 0 {
        return Err(Error::InvalidRequest("a prompt has no tokens".into()));
    }
    let mut ids = Vec::with_capacity(rows * width);
    let mut segments = Vec::with_capacity(rows * width);
    for prompt in prompts {
        let pad = width - prompt.len();
        ids.extend(std::iter::repeat_n(0i32, pad).chain(prompt.iter().map(|&id| id as i32)));
        segments.extend(std::iter::repeat_n(0i32, pad).chain(std::iter::repeat_n(1, prompt.len())));
    }
    let shape = [rows as i32, width as i32];
    let mut segment_ids = Array::from_slice(&segments, &shape);
    let mut cache = KvCache::new(model.args.num_layers);
    let hidden = model.hidden_states(
        &Array::from_slice(&ids, &shape),
        adapter,
        Some(&mut cache),
        AttentionScope::Segments(&segment_ids),
    )?;
    let last = hidden.take_axis(Array::from_int(width as i32 - 1), 1)?;
    let mut logits = model.logits(&last)?;
    let mut replies: Vec<Vec<u32>> = vec![Vec::new(); rows];
    let mut done = vec![false; rows];
    let ones = Array::from_slice(&vec![1i32; rows], &[rows as i32, 1]);
    for _ in 0..max_tokens {
        let next = ops::indexing::argmax_axis(&logits, -1, false)?.as_dtype(Dtype::Uint32)?;
        next.eval()?;
        let picked = next.as_slice::<u32>().to_vec();
        for (row, &id) in picked.iter().enumerate() {
            if !done[row] {
                replies[row].push(id);
                done[row] = stop_ids.contains(&id);
            }
        }
        if done.iter().all(|&d| d) || replies.iter().all(|r| r.len() >= max_tokens) {
            break;
        }
        segment_ids = ops::concatenate(&[segment_ids, ones.clone()], 1)?;
        let input = next.as_dtype(Dtype::Int32)?.reshape(&[rows as i32, 1])?;
        let out = model.forward(
            &input,
            adapter,
            Some(&mut cache),
            AttentionScope::Segments(&segment_ids),
        )?;
        logits = out.reshape(&[rows as i32, -1])?;
    }
    Ok(replies)
}

/// When generation started and how long the prompt was.
struct Timing {
    started: Instant,
    prompt_tokens: usize,
}

impl Timing {
    fn finish(
        self,
        tokens: Vec<u32>,
        stop_reason: StopReason,
        prompt_seconds: Option<f64>,
        decode_started: Instant,
    ) -> Generation {
        Generation {
            tokens,
            stop_reason,
            prompt_tokens: self.prompt_tokens,
            prompt_seconds: prompt_seconds.unwrap_or(0.0),
            decode_seconds: decode_started.elapsed().as_secs_f64(),
        }
    }
}

/// Streams `next` and says whether generation ends after it.
fn stop_after(
    next: u32,
    produced: usize,
    options: &SamplingOptions,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Option<StopReason> {
    if !on_token(next) {
        Some(StopReason::Cancelled)
    } else if options.stop_ids.contains(&next) {
        Some(StopReason::StopToken)
    } else if produced >= options.max_tokens {
        Some(StopReason::MaxTokens)
    } else {
        None
    }
}

/// Greedy decoding without host copies of the logits: the argmax stays on
/// the device and feeds the next step directly. The first token is read as
/// soon as it exists; after it, step `n + 1` is queued (`async_eval`) before
/// token `n` is read back, so that on backends that run asynchronously
/// (Metal, CUDA) building its graph overlaps the computation of token `n`.
/// When generation stops, the one queued step is waited for, then dropped.
fn greedy_on_device(
    model: &Model,
    adapter: &dyn LinearAdapter,
    mut cache: KvCache,
    logits: Array,
    options: &SamplingOptions,
    on_token: &mut dyn FnMut(u32) -> bool,
    timing: Timing,
) -> Result<Generation> {
    let pick = |logits: &Array| -> Result<Array> { Ok(ops::indexing::argmax(logits, false)?) };
    let mut step = |token: &Array| -> Result<Array> {
        let input = token.reshape(&[1, 1])?;
        let logits = model.forward(&input, adapter, Some(&mut cache), AttentionScope::Causal)?;
        let next = pick(&logits)?;
        mlx_rs::transforms::async_eval([&next])?;
        Ok(next)
    };
    let first = pick(&logits)?;
    let mut tokens = vec![read_token(&first)?];
    let prompt_seconds = Some(timing.started.elapsed().as_secs_f64());
    let decode_started = Instant::now();
    if let Some(reason) = stop_after(tokens[0], 1, options, on_token) {
        return Ok(timing.finish(tokens, reason, prompt_seconds, decode_started));
    }
    let mut queued = step(&first)?;
    let stop_reason = loop {
        let ahead = if tokens.len() + 1 < options.max_tokens {
            Some(step(&queued)?)
        } else {
            None
        };
        let next = read_token(&queued)?;
        tokens.push(next);
        if let Some(reason) = stop_after(next, tokens.len(), options, on_token) {
            // Wait for the step queued ahead: an evaluation still in flight
            // when its arrays are dropped (or the process exits) can leave
            // MLX's CPU scheduler waiting forever.
            if let Some(ahead) = &ahead {
                ahead.eval()?;
            }
            break reason;
        }
        match ahead {
            Some(ahead) => queued = ahead,
            None => break StopReason::MaxTokens,
        }
    };
    Ok(timing.finish(tokens, stop_reason, prompt_seconds, decode_started))
}

/// Waits for a scalar uint32 token id on the device and reads it. It reads
/// the array itself: a new op on it would queue behind work queued since.
fn read_token(token: &Array) -> Result<u32> {
    token.eval()?;
    token
        .try_as_slice::<u32>()
        .ok()
        .and_then(|ids| ids.first().copied())
        .ok_or_else(|| {
            Error::InvalidRequest(format!(
                "argmax gave {:?} of shape {:?}, expected one uint32",
                token.dtype(),
                token.shape()
            ))
        })
}

fn ids_array(ids: &[u32]) -> Array {
    let ids: Vec<i32> = ids.iter().map(|&id| id as i32).collect();
    Array::from_slice(&ids, &[1, ids.len() as i32])
}

fn host_logits(logits: &Array) -> Result<Vec<f32>> {
    let flat = logits.reshape(&[-1])?.as_dtype(Dtype::Float32)?;
    flat.eval()?;
    Ok(flat.as_slice::<f32>().to_vec())
}

/// Token choice on the host: the vocabulary is small next to the cost of a
/// forward pass, and a host RNG makes seeds exact across backends.
struct Sampler {
    rng: ft_config::rng::SplitMix64,
}

impl Sampler {
    fn new(seed: u64) -> Self {
        Self {
            rng: ft_config::rng::SplitMix64::new(seed),
        }
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.rng.uniform()
    }

    fn pick(&mut self, mut logits: Vec<f32>, context: &[u32], options: &SamplingOptions) -> u32 {
        if options.repetition_penalty != 1.0 {
            let start = context.len().saturating_sub(options.repetition_context);
            for &id in &context[start..] {
                if let Some(value) = logits.get_mut(id as usize) {
                    *value = if *value > 0.0 {
                        *value / options.repetition_penalty
                    } else {
                        *value * options.repetition_penalty
                    };
                }
            }
        }
        if options.temperature <= 0.0 {
            return argmax(&logits);
        }
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if options.top_k > 0 {
            order.truncate(options.top_k);
        }
        let max = logits[order[0]];
        let mut weights: Vec<f64> = order
            .iter()
            .map(|&i| f64::from((logits[i] - max) / options.temperature).exp())
            .collect();
        if options.top_p < 1.0 {
            let total: f64 = weights.iter().sum();
            let mut mass = 0.0;
            let mut keep = weights.len();
            for (index, weight) in weights.iter().enumerate() {
                mass += weight / total;
                if mass >= f64::from(options.top_p) {
                    keep = index + 1;
                    break;
                }
            }
            weights.truncate(keep);
        }
        let total: f64 = weights.iter().sum();
        let mut target = self.uniform() * total;
        for (index, weight) in weights.iter().enumerate() {
            target -= weight;
            if target <= 0.0 {
                return order[index] as u32;
            }
        }
        order[weights.len() - 1] as u32
    }
}

fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (index, value) in values.iter().enumerate() {
        if *value > values[best] {
            best = index;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoAdapter;

    #[test]
    fn batched_greedy_replies_equal_one_at_a_time() {
        let model = crate::tiny::tiny_model(3, &crate::LoadOptions::default()).expect("model");
        let prompts = vec![
            vec![1u32, 450, 7, 9],
            vec![1, 12],
            vec![1, 3000, 4, 5, 6, 8, 31000],
        ];
        let batched = generate_batch(&model, &NoAdapter, &prompts, 6, &[]).expect("batch");
        for (prompt, reply) in prompts.iter().zip(&batched) {
            let single = generate(
                &model,
                &NoAdapter,
                prompt,
                &SamplingOptions {
                    max_tokens: 6,
                    ..SamplingOptions::default()
                },
                &mut |_| true,
            )
            .expect("single");
            assert_eq!(reply, &single.tokens, "prompt {prompt:?}");
        }
    }

    fn options(temperature: f32) -> SamplingOptions {
        SamplingOptions {
            temperature,
            ..SamplingOptions::default()
        }
    }

    #[test]
    fn device_greedy_matches_host_argmax_and_stops_like_it() {
        let model = crate::tiny::tiny_model(5, &crate::LoadOptions::default()).expect("model");
        let prompt = [3_u32, 17, 42, 7, 99];
        let run = |options: &SamplingOptions| {
            let mut streamed = Vec::new();
            let generation = generate(&model, &NoAdapter, &prompt, options, &mut |id| {
                streamed.push(id);
                true
            })
            .expect("generates");
            assert_eq!(streamed, generation.tokens);
            generation
        };
        let device = run(&SamplingOptions {
            max_tokens: 12,
            ..options(0.0)
        });
        // top_k 1 at a positive temperature takes the host path, always the argmax.
        let host = run(&SamplingOptions {
            max_tokens: 12,
            top_k: 1,
            ..options(1.0)
        });
        assert_eq!(device.tokens, host.tokens);
        assert_eq!(device.tokens.len(), 12);
        assert_eq!(device.stop_reason, StopReason::MaxTokens);
        // A stop id ends both paths at the same place.
        let stop = device.tokens[4];
        let first = device
            .tokens
            .iter()
            .position(|&t| t == stop)
            .expect("present");
        let stopped = run(&SamplingOptions {
            max_tokens: 12,
            stop_ids: vec![stop],
            ..options(0.0)
        });
        assert_eq!(stopped.tokens, device.tokens[..=first].to_vec());
        assert_eq!(stopped.stop_reason, StopReason::StopToken);
        let single = run(&SamplingOptions {
            max_tokens: 1,
            ..options(0.0)
        });
        assert_eq!(single.tokens, device.tokens[..1].to_vec());
    }

    #[test]
    fn greedy_takes_the_largest_logit() {
        let mut sampler = Sampler::new(1);
        assert_eq!(
            sampler.pick(vec![0.1, 3.0, -1.0, 2.9], &[], &options(0.0)),
            1
        );
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let mut sampler = Sampler::new(7);
        let opts = SamplingOptions {
            top_k: 1,
            ..options(5.0)
        };
        for _ in 0..50 {
            assert_eq!(sampler.pick(vec![0.1, 3.0, -1.0, 2.9], &[], &opts), 1);
        }
    }

    #[test]
    fn top_p_excludes_the_tail() {
        let mut sampler = Sampler::new(3);
        let opts = SamplingOptions {
            top_p: 0.5,
            ..options(1.0)
        };
        // Token 0 holds ~88% of the mass, so top_p 0.5 keeps only it.
        for _ in 0..50 {
            assert_eq!(sampler.pick(vec![4.0, 2.0, 0.0], &[], &opts), 0);
        }
    }

    #[test]
    fn same_seed_same_samples() {
        let draw = |seed| {
            let mut sampler = Sampler::new(seed);
            (0..20)
                .map(|_| sampler.pick(vec![1.0, 1.1, 0.9, 1.05], &[], &options(1.0)))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let mut sampler = Sampler::new(0);
        let opts = SamplingOptions {
            repetition_penalty: 2.0,
            ..options(0.0)
        };
        assert_eq!(sampler.pick(vec![3.0, 2.0], &[0], &opts), 1);
    }
}
