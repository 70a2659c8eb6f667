//! Does MLX `compile` make the LoRA training step faster? (issue 5)
//!
//! ```sh
//! cargo run --release -p ft-trainer --example compile_step -- [--rounds 4] [--steps 3]
//!     [--variants opt,lossgrad,full] [--parts check,steps,opt,swiglu,shapes,shapeless]
//! ```
//!
//! The default model (SmolLM2-135M-Instruct, dequantized to float32), LoRA
//! rank 8 on all seven projections of the last 16 blocks, one batch of
//! 4 x 128 input tokens (random ids, the second half of each row in the
//! loss). One training step is what `Trainer::run_loop` does for one
//! micro-batch: `loss_and_grads`, scale by 1/targets, clip to global norm
//! 1.0, AdamW, evaluate. Variants:
//!
//! * `eager`: the trainer's code as it is (the baseline);
//! * `opt`: eager loss and gradients, the AdamW update compiled;
//! * `lossgrad`: loss + `value_and_grad` compiled as one function of
//!   (adapter arrays, batch arrays) for the fixed padded shape, then the
//!   trainer's clipping and optimizer;
//! * `full`: the whole step (loss, gradients, scaling, clipping, AdamW) as
//!   one compiled function.
//!
//! Checks first (the run stops on a mismatch): the compiled loss+grad
//! function against `loss_and_grads` (loss and every gradient, relative
//! 1e-5), then three chained steps of every variant from the same start
//! against `eager` (loss and gradient norm, relative 1e-5; the updated
//! arrays are reported in units of the learning rate, since AdamW's first
//! updates are about lr * sign(g)). Then `--rounds` rounds run `--steps`
//! timed steps of each variant in turn (A, B, C, D, A, B, ...), so
//! background load hits every variant alike: wall and process CPU time per
//! step (median, min, max, ratio to `eager`) and the per-round paired
//! ratios. Separate sections time the pieces on their own: the AdamW
//! update, the SiLU-gated MLP product (forward+backward), the cost of a new
//! batch shape for the compiled function, and whether `shapeless`
//! compilation can serve several widths.

use ft_data::Batch;
use ft_lora::{LoraAdapters, LoraLayout, LoraSpec};
use ft_model::{load_model, LoadOptions, Model, Projection};
use ft_optim::{clip_by_global_norm, AdamW, Optimizer};
use ft_trainer::loss::BatchArrays;
use ft_trainer::loss_and_grads;
use ft_trainer::parallel::Workers;
use mlx_rs::error::Exception;
use mlx_rs::transforms::compile::compile;
use mlx_rs::{random, Array};
use std::time::Instant;

type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const ROWS: usize = 4;
const INPUT_LEN: usize = 128;
const LR: f64 = 2e-4;
const MAX_NORM: f64 = 1.0;
const SETTINGS: AdamW = AdamW {
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weight_decay: 0.0,
};

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let rounds = flag("--rounds", 4);
    let steps = flag("--steps", 3);
    let parts: Vec<String> = args
        .iter()
        .position(|a| a == "--parts")
        .and_then(|i| args.get(i + 1))
        .map_or("check,steps,opt,swiglu,shapes,shapeless", String::as_str)
        .split(',')
        .map(str::to_string)
        .collect();
    let wants = |part: &str| parts.iter().any(|p| p == part);
    // `--variants opt,full`: eager plus these.
    let variant_filter: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--variants")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(str::to_string).collect());

    let model = load_model(
        "smollm2-135m-instruct",
        &LoadOptions {
            dequantize: true,
            ..LoadOptions::default()
        },
    )?;
    let total = model.args.num_layers;
    let spec = LoraSpec {
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        targets: Projection::ALL.to_vec(),
        layers: (total - 16..total).collect(),
        dora: false,
    };
    let mut adapters = LoraAdapters::init(&model, spec, 7)?;
    // Non-zero `b`, so that both halves of every adapter get a gradient.
    let mut key = random::key(11)?;
    for slot in &adapters.layout.slots {
        let (next, sub) = random::split(&key, 2)?;
        key = next;
        let b = &mut adapters.params[slot.first + 1];
        *b = random::normal::<f32>(b.shape(), None, 0.01, &sub)?;
    }
    mlx_rs::transforms::eval(adapters.params.iter())?;
    let layout = adapters.layout.clone();
    let params0 = adapters.params.clone();
    let batch = BatchArrays::new(&synthetic_batch(
        ROWS,
        INPUT_LEN + 1,
        model.args.vocab_size,
        1,
    ));
    println!(
        "model: {} layers, adapters: {} arrays ({} parameters) on the last 16 layers; \
         batch {}x{} inputs, {} targets; MLX {}",
        total,
        params0.len(),
        layout.trainable_parameters(),
        ROWS,
        INPUT_LEN,
        batch.target_tokens,
        ft_model::runtime::mlx_version(),
    );

    if wants("check") {
        // The gradients themselves: eager `loss_and_grads` vs the compiled function.
        let n = params0.len();
        let mut args: Vec<Array> = params0.clone();
        args.extend(batch_args(&batch));
        let mut eager = loss_grad_fn(&model, &layout, n);
        let mut compiled = compile(loss_grad_fn(&model, &layout, n), false);
        let expected = eager(&args)?;
        let got = compiled(&args)?;
        mlx_rs::transforms::eval(expected.iter().chain(&got))?;
        let loss_diff = rel(got[0].item_exact::<f32>(), expected[0].item_exact::<f32>());
        let grad_diff = max_rel_diff(&expected[1..], &got[1..])?;
        let ok = loss_diff <= 1e-5 && grad_diff <= 1e-5;
        println!(
            "check  loss+grad compiled vs eager: loss sum {} vs {}, rel diff {loss_diff:.2e}; \
             gradients max diff / max |g| {grad_diff:.2e} {}",
            got[0].item_exact::<f32>(),
            expected[0].item_exact::<f32>(),
            if ok { "OK" } else { "MISMATCH" }
        );
        if !ok {
            return Err("compiled loss+grad differs from eager".into());
        }
    }
    if !wants("steps") {
        return sections(&wants, &model, &layout, &params0, rounds);
    }

    let names: Vec<&'static str> = ["eager", "opt", "lossgrad", "full"]
        .into_iter()
        .filter(|name| {
            *name == "eager"
                || variant_filter
                    .as_ref()
                    .is_none_or(|wanted| wanted.iter().any(|w| w == name))
        })
        .collect();
    let mut variants: Vec<Variant> = names
        .iter()
        .map(|name| Variant::new(name, &model, &layout, &params0))
        .collect();

    // Correctness: three chained steps each, compared with `eager`.
    let mut reference: Vec<(f32, f32)> = Vec::new();
    for index in 0..variants.len() {
        let started = Instant::now();
        let mut losses = Vec::new();
        for _ in 0..3 {
            losses.push(variants[index].step(&batch)?);
        }
        let first = started.elapsed().as_secs_f64();
        let name = variants[index].name;
        if index == 0 {
            reference = losses.clone();
            println!(
                "check  {name:<9} 3 steps in {first:.1} s (first call included), (loss, norm) {losses:?}"
            );
            continue;
        }
        let loss_diff = losses
            .iter()
            .zip(&reference)
            .map(|(a, b)| rel(a.0, b.0).max(rel(a.1, b.1)))
            .fold(0.0f32, f32::max);
        let param_diff = max_abs_diff(&variants[0].params, &variants[index].params)?;
        // AdamW's first updates are about lr * sign(g): a gradient element
        // near zero that comes out with the other sign moves its parameter
        // by up to 2 lr, so the parameters are compared in units of lr.
        let ok = loss_diff <= 1e-5;
        println!(
            "check  {name:<9} 3 steps in {first:.1} s (first call included): loss/norm rel diff \
             {loss_diff:.2e} {}; params after 3 steps max |diff| {:.3} lr",
            if ok { "OK" } else { "MISMATCH" },
            param_diff / LR as f32,
        );
        if !ok {
            return Err(format!("{name} differs from eager").into());
        }
    }

    // Timing, interleaved.
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..rounds {
        for (index, variant) in variants.iter_mut().enumerate() {
            for _ in 0..steps {
                let (started, cpu_started) = (Instant::now(), cpu_ms());
                variant.step(&batch)?;
                times[index].push(started.elapsed().as_secs_f64() * 1e3);
                cpu[index].push(cpu_ms() - cpu_started);
            }
        }
        let line: Vec<String> = names
            .iter()
            .zip(&times)
            .zip(&cpu)
            .map(|((name, t), c)| {
                format!(
                    "{name} {:.0} (cpu {:.0})",
                    median(&t[t.len() - steps..]),
                    median(&c[c.len() - steps..])
                )
            })
            .collect();
        println!(
            "round {}/{rounds}: wall ms/step {}",
            round + 1,
            line.join(", ")
        );
    }
    println!(
        "\nwhole step, {} steps each ({rounds} rounds x {steps}), interleaved:",
        rounds * steps
    );
    println!(
        "| variant | wall ms/step median | min | max | ratio to eager | CPU ms/step median | min | max | ratio |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let (base, cpu_base) = (median(&times[0]), median(&cpu[0]));
    for ((name, t), c) in names.iter().zip(&times).zip(&cpu) {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.3} | {:.0} | {:.0} | {:.0} | {:.3} |",
            median(t),
            min(t),
            max(t),
            median(t) / base,
            median(c),
            min(c),
            max(c),
            median(c) / cpu_base
        );
    }
    // Paired: each round's median against eager's in the same round, so
    // that slow and quiet stretches of the machine cancel out.
    let paired = |series: &[Vec<f64>], index: usize| -> Vec<f64> {
        (0..rounds)
            .map(|r| {
                let part = |v: &Vec<f64>| median(&v[r * steps..(r + 1) * steps]);
                part(&series[index]) / part(&series[0])
            })
            .collect()
    };
    println!("\nper-round ratio to eager (same round), median [min, max] over {rounds} rounds:");
    println!("| variant | wall | CPU |\n| --- | --- | --- |");
    for (index, name) in names.iter().enumerate().skip(1) {
        let (w, c) = (paired(&times, index), paired(&cpu, index));
        println!(
            "| {name} | {:.3} [{:.3}, {:.3}] | {:.3} [{:.3}, {:.3}] |",
            median(&w),
            min(&w),
            max(&w),
            median(&c),
            min(&c),
            max(&c)
        );
    }

    sections(&wants, &model, &layout, &params0, rounds)
}

/// The sections after the whole-step table.
fn sections(
    wants: &dyn Fn(&str) -> bool,
    model: &Model,
    layout: &LoraLayout,
    params0: &[Array],
    rounds: usize,
) -> Res<()> {
    if wants("opt") {
        optimizer_only(params0, rounds.max(2))?;
    }
    if wants("swiglu") {
        swiglu_only(model, rounds.max(2))?;
    }
    if wants("shapes") {
        new_shapes(model, layout, params0)?;
    }
    if wants("shapeless") {
        shapeless(model, layout, params0)?;
    }
    Ok(())
}

/// Random ids, every row full, the second half of each row in the loss.
fn synthetic_batch(rows: usize, width: usize, vocab: usize, seed: u64) -> Batch {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let ids: Vec<Vec<u32>> = (0..rows)
        .map(|_| {
            (0..width)
                .map(|_| 3 + (next() % (vocab as u64 - 3)) as u32)
                .collect()
        })
        .collect();
    let mask: Vec<Vec<bool>> = (0..rows)
        .map(|_| (0..width).map(|t| t >= width / 2).collect())
        .collect();
    Batch {
        target_tokens: mask.iter().flatten().filter(|&&m| m).count(),
        ids,
        mask,
        lengths: vec![width; rows],
        segment_ids: None,
        position_ids: None,
        examples: (0..rows).map(|r| vec![r]).collect(),
    }
}

fn exception(error: impl std::fmt::Display) -> Exception {
    Exception::custom(error.to_string())
}

/// The AdamW update of `ft_optim::Optimizer` (same operations, same order)
/// with the step-dependent scalars as arrays, so that a compiled version
/// takes them as inputs instead of baking in the first step's values.
/// `scalars` = [step_size, second_correction, decay].
fn adamw_arrays(
    params: &[Array],
    grads: &[Array],
    first: &[Array],
    second: &[Array],
    scalars: &[Array],
) -> mlx_rs::error::Result<Vec<Array>> {
    let f = |v: f64| Array::from_f32(v as f32);
    let (b1, b2) = (f(SETTINGS.beta1), f(SETTINGS.beta2));
    let (c1, c2) = (f(1.0 - SETTINGS.beta1), f(1.0 - SETTINGS.beta2));
    let (step_size, correction, decay) = (&scalars[0], &scalars[1], &scalars[2]);
    let n = params.len();
    let mut out = Vec::with_capacity(3 * n);
    let (mut ms, mut vs) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let m = b1.multiply(&first[i])?.add(&c1.multiply(&grads[i])?)?;
        let v = b2
            .multiply(&second[i])?
            .add(&c2.multiply(&grads[i].square()?)?)?;
        let denom = v.sqrt()?.divide(correction)?.add(f(SETTINGS.eps))?;
        let step = m.divide(&denom)?.multiply(step_size)?;
        out.push(params[i].multiply(decay)?.subtract(&step)?);
        ms.push(m);
        vs.push(v);
    }
    out.extend(ms);
    out.extend(vs);
    Ok(out)
}

/// [step_size, second_correction, decay] for update number `t` (from 1).
fn adamw_scalars(t: u64) -> [Array; 3] {
    let t = t as i32;
    [
        Array::from_f32((LR / (1.0 - SETTINGS.beta1.powi(t))) as f32),
        Array::from_f32((1.0 - SETTINGS.beta2.powi(t)).sqrt() as f32),
        Array::from_f32((1.0 - LR * SETTINGS.weight_decay) as f32),
    ]
}

type CompiledFn = Box<dyn FnMut(&[Array]) -> mlx_rs::error::Result<Vec<Array>>>;

/// Loss sum and gradients of (params.., inputs, positions, targets), as
/// `loss_and_grads` computes them.
fn loss_grad_fn(
    model: &Model,
    layout: &LoraLayout,
    n: usize,
) -> impl FnMut(&[Array]) -> mlx_rs::error::Result<Vec<Array>> + 'static {
    let (model, layout) = (model.clone(), layout.clone());
    move |args: &[Array]| {
        let (params, batch) = args.split_at(n);
        let part = BatchArrays {
            inputs: batch[0].clone(),
            positions: batch[1].clone(),
            targets: batch[2].clone(),
            segments: None,
            target_tokens: 1,
            real_tokens: 0,
        };
        let (loss, grads) = loss_and_grads(
            &model,
            &layout,
            params,
            std::slice::from_ref(&part),
            &Workers::single(),
            None,
            0.0,
        )
        .map_err(exception)?;
        let mut out = vec![loss];
        out.extend(grads);
        Ok(out)
    }
}

fn batch_args(batch: &BatchArrays) -> [Array; 3] {
    [
        batch.inputs.clone(),
        batch.positions.clone(),
        batch.targets.clone(),
    ]
}

struct Variant {
    name: &'static str,
    model: Model,
    layout: LoraLayout,
    params: Vec<Array>,
    optimizer: Optimizer,
    first: Vec<Array>,
    second: Vec<Array>,
    updates: u64,
    compiled: Option<CompiledFn>,
}

impl Variant {
    fn new(name: &'static str, model: &Model, layout: &LoraLayout, params: &[Array]) -> Self {
        let n = params.len();
        let zeros = || -> Vec<Array> {
            params
                .iter()
                .map(|p| mlx_rs::ops::zeros_like(p).expect("zeros"))
                .collect()
        };
        let compiled: Option<CompiledFn> = match name {
            "opt" => {
                let f = move |args: &[Array]| {
                    let (p, rest) = args.split_at(n);
                    let (g, rest) = rest.split_at(n);
                    let (m, rest) = rest.split_at(n);
                    let (v, scalars) = rest.split_at(n);
                    adamw_arrays(p, g, m, v, scalars)
                };
                let mut c = compile(f, false);
                Some(Box::new(move |a: &[Array]| c(a)))
            }
            "lossgrad" => {
                let mut c = compile(loss_grad_fn(model, layout, n), false);
                Some(Box::new(move |a: &[Array]| c(a)))
            }
            "full" => {
                let mut loss_grad = loss_grad_fn(model, layout, n);
                // args: params, m, v, inputs, positions, targets, inverse, 3 scalars
                let f = move |args: &[Array]| -> mlx_rs::error::Result<Vec<Array>> {
                    let (p, rest) = args.split_at(n);
                    let (m, rest) = rest.split_at(n);
                    let (v, rest) = rest.split_at(n);
                    let (batch, rest) = rest.split_at(3);
                    let (inverse, scalars) = rest.split_at(1);
                    let mut lg_args: Vec<Array> = p.to_vec();
                    lg_args.extend_from_slice(batch);
                    let mut out = loss_grad(&lg_args)?;
                    let mut grads: Vec<Array> = out.split_off(1);
                    let loss = out.pop().expect("loss");
                    for g in grads.iter_mut() {
                        *g = g.multiply(&inverse[0])?;
                    }
                    let norm = clip_by_global_norm(&mut grads, MAX_NORM).map_err(exception)?;
                    let mean = loss.multiply(&inverse[0])?;
                    let mut result = vec![mean, norm];
                    result.extend(adamw_arrays(p, &grads, m, v, scalars)?);
                    Ok(result)
                };
                let mut c = compile(f, false);
                Some(Box::new(move |a: &[Array]| c(a)))
            }
            _ => None,
        };
        Variant {
            name,
            model: model.clone(),
            layout: layout.clone(),
            params: params.to_vec(),
            optimizer: Optimizer::adamw(SETTINGS),
            first: zeros(),
            second: zeros(),
            updates: 0,
            compiled,
        }
    }

    /// One training step; returns (mean loss, gradient norm).
    fn step(&mut self, batch: &BatchArrays) -> Res<(f32, f32)> {
        let n = self.params.len();
        let inverse = 1.0 / batch.target_tokens as f32;
        self.updates += 1;
        let (mean, norm) = match self.name {
            "full" => {
                let mut args: Vec<Array> = self.params.clone();
                args.extend(self.first.iter().cloned());
                args.extend(self.second.iter().cloned());
                args.extend(batch_args(batch));
                args.push(Array::from_f32(inverse));
                args.extend(adamw_scalars(self.updates));
                let compiled = self.compiled.as_mut().expect("compiled");
                let mut out = compiled(&args)?;
                let mut rest = out.split_off(2);
                self.second = rest.split_off(2 * n);
                self.first = rest.split_off(n);
                self.params = rest;
                let norm = out.pop().expect("norm");
                (out.pop().expect("mean"), norm)
            }
            _ => {
                let (loss, mut grads) = if self.name == "lossgrad" {
                    let mut args: Vec<Array> = self.params.clone();
                    args.extend(batch_args(batch));
                    let compiled = self.compiled.as_mut().expect("compiled");
                    let mut out = compiled(&args)?;
                    let grads = out.split_off(1);
                    (out.pop().expect("loss"), grads)
                } else {
                    loss_and_grads(
                        &self.model,
                        &self.layout,
                        &self.params,
                        std::slice::from_ref(batch),
                        &Workers::single(),
                        None,
                        0.0,
                    )?
                };
                // GradAccumulator::take_scaled
                let factor = Array::from_f32(inverse);
                for g in grads.iter_mut() {
                    *g = g.multiply(&factor)?;
                }
                let norm = clip_by_global_norm(&mut grads, MAX_NORM)?;
                let mean = loss.multiply(Array::from_f32(inverse))?;
                if self.name == "opt" {
                    let mut args: Vec<Array> = self.params.clone();
                    args.extend(grads);
                    args.extend(self.first.iter().cloned());
                    args.extend(self.second.iter().cloned());
                    args.extend(adamw_scalars(self.updates));
                    let compiled = self.compiled.as_mut().expect("compiled");
                    let mut rest = compiled(&args)?;
                    self.second = rest.split_off(2 * n);
                    self.first = rest.split_off(n);
                    self.params = rest;
                } else {
                    self.optimizer.update(&mut self.params, &grads, LR)?;
                }
                (mean, norm)
            }
        };
        let mut outputs = vec![&mean, &norm];
        outputs.extend(self.params.iter());
        outputs.extend(self.first.iter());
        outputs.extend(self.second.iter());
        outputs.extend(self.optimizer.state_arrays());
        mlx_rs::transforms::eval(outputs)?;
        Ok((mean.item_exact::<f32>(), norm.item_exact::<f32>()))
    }
}

/// The AdamW update alone, eager (ft-optim) vs compiled, interleaved.
fn optimizer_only(params: &[Array], rounds: usize) -> Res<()> {
    let n = params.len();
    let mut key = random::key(3)?;
    let grads: Vec<Array> = params
        .iter()
        .map(|p| {
            let (next, sub) = random::split(&key, 2).expect("split");
            key = next;
            random::normal::<f32>(p.shape(), None, 1e-3, &sub).expect("normal")
        })
        .collect();
    mlx_rs::transforms::eval(grads.iter())?;
    let f = move |args: &[Array]| {
        let (p, rest) = args.split_at(n);
        let (g, rest) = rest.split_at(n);
        let (m, rest) = rest.split_at(n);
        let (v, scalars) = rest.split_at(n);
        adamw_arrays(p, g, m, v, scalars)
    };
    let mut compiled = compile(f, false);
    let mut eager = Optimizer::adamw(SETTINGS);
    let mut eager_params = params.to_vec();
    let mut state: Vec<Array> = params.to_vec();
    for p in params {
        state.push(mlx_rs::ops::zeros_like(p)?);
    }
    for p in params {
        state.push(mlx_rs::ops::zeros_like(p)?);
    }
    let (mut te, mut tc) = (Vec::new(), Vec::new());
    let mut updates = 0u64;
    for _ in 0..rounds {
        for _ in 0..10 {
            let started = Instant::now();
            eager.update(&mut eager_params, &grads, LR)?;
            let mut outputs: Vec<&Array> = eager_params.iter().collect();
            outputs.extend(eager.state_arrays());
            mlx_rs::transforms::eval(outputs)?;
            te.push(started.elapsed().as_secs_f64() * 1e3);
        }
        for _ in 0..10 {
            updates += 1;
            let started = Instant::now();
            let mut args: Vec<Array> = state[..n].to_vec();
            args.extend(grads.iter().cloned());
            args.extend(state[n..].iter().cloned());
            args.extend(adamw_scalars(updates));
            state = compiled(&args)?;
            mlx_rs::transforms::eval(state.iter())?;
            tc.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let diff = max_rel_diff(&eager_params, &state[..n])?;
    println!(
        "\nAdamW update alone ({n} arrays), {} updates each, interleaved by 10:\n\
         | variant | median ms | min | max |\n| --- | --- | --- | --- |\n\
         | eager (ft-optim) | {:.2} | {:.2} | {:.2} |\n| compiled | {:.2} | {:.2} | {:.2} |\n\
         ratio compiled/eager {:.3}; params after {updates} updates: max diff / max |p| {diff:.2e}",
        te.len(),
        median(&te),
        min(&te),
        max(&te),
        median(&tc),
        min(&tc),
        max(&tc),
        median(&tc) / median(&te)
    );
    Ok(())
}

/// `silu(gate) * up` of one MLP (forward and backward) at the step's
/// shape, eager vs compiled, interleaved; times 30 for the model's layers.
fn swiglu_only(model: &Model, rounds: usize) -> Res<()> {
    let width = model.args.intermediate_size as i32;
    let shape = [ROWS as i32, INPUT_LEN as i32, width];
    let key = random::key(5)?;
    let (k1, k2) = random::split(&key, 2)?;
    let gate = random::normal::<f32>(&shape[..], None, None, &k1)?;
    let up = random::normal::<f32>(&shape[..], None, None, &k2)?;
    let cot = mlx_rs::ops::ones::<f32>(&shape[..])?;
    mlx_rs::transforms::eval([&gate, &up, &cot])?;
    let product = |args: &[Array]| -> mlx_rs::error::Result<Vec<Array>> {
        Ok(vec![mlx_rs::nn::silu(&args[0])?.multiply(&args[1])?])
    };
    let fwd_bwd = move |args: &[Array]| -> mlx_rs::error::Result<Vec<Array>> {
        let (out, grads) = mlx_rs::transforms::fallible_vjp(product, &args[..2], &args[2..3])?;
        let mut all = out;
        all.extend(grads);
        Ok(all)
    };
    let mut compiled = compile(fwd_bwd, false);
    let args = [gate, up, cot];
    let (mut te, mut tc) = (Vec::new(), Vec::new());
    let eager = fwd_bwd;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for _ in 0..10 {
            let started = Instant::now();
            a = eager(&args)?;
            mlx_rs::transforms::eval(a.iter())?;
            te.push(started.elapsed().as_secs_f64() * 1e3);
        }
        for _ in 0..10 {
            let started = Instant::now();
            b = compiled(&args)?;
            mlx_rs::transforms::eval(b.iter())?;
            tc.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let diff = max_rel_diff(&a, &b)?;
    let layers = model.args.num_layers as f64;
    println!(
        "\nsilu(gate)*up forward+backward at {shape:?} (mlx-rs's silu is itself a compiled \
         function), {} runs each:\n\
         | variant | median ms | min | max | x{layers} layers |\n| --- | --- | --- | --- | --- |\n\
         | eager | {:.2} | {:.2} | {:.2} | {:.0} |\n| compiled | {:.2} | {:.2} | {:.2} | {:.0} |\n\
         ratio compiled/eager {:.3}; outputs max diff / max |x| {diff:.2e}",
        te.len(),
        median(&te),
        min(&te),
        max(&te),
        median(&te) * layers,
        median(&tc),
        min(&tc),
        max(&tc),
        median(&tc) * layers,
        median(&tc) / median(&te)
    );
    Ok(())
}

/// What a new padded width costs the compiled loss+grad function: the first
/// call at each shape traces and compiles again.
fn new_shapes(model: &Model, layout: &LoraLayout, params: &[Array]) -> Res<()> {
    let n = params.len();
    let mut compiled = compile(loss_grad_fn(model, layout, n), false);
    let mut eager = loss_grad_fn(model, layout, n);
    println!(
        "\nnew batch shapes, compiled loss+grad, ms wall (CPU) per call; eager = the same \
         function uncompiled:"
    );
    println!("| input width | targets | eager | compiled 1st call | compiled 2nd call |");
    println!("| --- | --- | --- | --- | --- |");
    for (seed, width) in [(2u64, 128usize), (3, 96), (4, 112), (5, 96), (6, 128)] {
        let batch = BatchArrays::new(&synthetic_batch(
            ROWS,
            width + 1,
            model.args.vocab_size,
            seed,
        ));
        let mut args: Vec<Array> = params.to_vec();
        args.extend(batch_args(&batch));
        let time =
            |f: &mut dyn FnMut(&[Array]) -> mlx_rs::error::Result<Vec<Array>>| -> Res<String> {
                let (started, cpu_started) = (Instant::now(), cpu_ms());
                let out = f(&args)?;
                mlx_rs::transforms::eval(out.iter())?;
                Ok(format!(
                    "{:.0} ({:.0})",
                    started.elapsed().as_secs_f64() * 1e3,
                    cpu_ms() - cpu_started
                ))
            };
        let e = time(&mut eager)?;
        let c1 = time(&mut compiled)?;
        let c2 = time(&mut compiled)?;
        println!("| {width} | {} | {e} | {c1} | {c2} |", batch.target_tokens);
    }
    Ok(())
}

/// `shapeless: true`: one trace for every width? Compared with eager.
fn shapeless(model: &Model, layout: &LoraLayout, params: &[Array]) -> Res<()> {
    let n = params.len();
    let mut compiled = compile(loss_grad_fn(model, layout, n), true);
    let mut eager = loss_grad_fn(model, layout, n);
    println!("\nshapeless compile of loss+grad:");
    for (seed, width) in [(2u64, 128usize), (3, 96)] {
        let batch = BatchArrays::new(&synthetic_batch(
            ROWS,
            width + 1,
            model.args.vocab_size,
            seed,
        ));
        let mut args: Vec<Array> = params.to_vec();
        args.extend(batch_args(&batch));
        let expected = eager(&args)?;
        match compiled(&args) {
            Ok(got) => {
                let result = mlx_rs::transforms::eval(got.iter()).map_err(|e| e.to_string());
                match result {
                    Ok(()) => {
                        let same_shapes = got.len() == expected.len()
                            && got
                                .iter()
                                .zip(&expected)
                                .all(|(a, b)| a.shape() == b.shape());
                        let diff = if same_shapes {
                            format!("{:.2e}", max_rel_diff(&expected, &got)?)
                        } else {
                            "shapes differ".into()
                        };
                        println!(
                            "  width {width}: ran; loss {} vs eager {}, max rel diff {diff}",
                            got[0].item_exact::<f32>(),
                            expected[0].item_exact::<f32>()
                        );
                    }
                    Err(e) => println!("  width {width}: evaluation failed: {e}"),
                }
            }
            Err(e) => println!("  width {width}: failed: {e}"),
        }
    }
    Ok(())
}

/// CPU time of the process (all threads, user + system), ms: less
/// sensitive to other work on the machine than wall time.
fn cpu_ms() -> f64 {
    ft_model::runtime::process_cpu_time().as_secs_f64() * 1e3
}

fn rel(a: f32, b: f32) -> f32 {
    (a - b).abs() / b.abs().max(1e-12)
}

/// max |a - b| over all arrays, divided by max |a|.
fn max_rel_diff(a: &[Array], b: &[Array]) -> Res<f32> {
    let (mut diff, mut scale) = (0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        let d = x.subtract(y)?.abs()?.max(None)?.item_exact::<f32>();
        let s = x.abs()?.max(None)?.item_exact::<f32>();
        diff = diff.max(d);
        scale = scale.max(s);
    }
    Ok(diff / scale.max(1e-30))
}

/// max |a - b| over all arrays.
fn max_abs_diff(a: &[Array], b: &[Array]) -> Res<f32> {
    let mut diff = 0.0f32;
    for (x, y) in a.iter().zip(b) {
        diff = diff.max(x.subtract(y)?.abs()?.max(None)?.item_exact::<f32>());
    }
    Ok(diff)
}

fn median(t: &[f64]) -> f64 {
    let mut v = t.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min(t: &[f64]) -> f64 {
    t.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(t: &[f64]) -> f64 {
    t.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}
