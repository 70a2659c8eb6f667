//! The model's hot paths on the tiny random Mistral (2 layers, hidden 64):
//! a forward pass and one LoRA training step (loss and adapter gradients)
//! on a batch of 4 x 64 tokens. `cargo bench -p ft-trainer`.

// criterion_group! and criterion_main! generate undocumented functions.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use ft_config::rng::SplitMix64;
use ft_lora::{LoraAdapters, LoraSpec};
use ft_model::{tiny, AttentionScope, LoadOptions, NoAdapter, Projection};
use ft_trainer::loss::BatchArrays;
use ft_trainer::parallel::Workers;

const ROWS: usize = 4;
const LENGTH: usize = 64;

/// Random ids with the second half of every row as targets.
fn batch(vocab: usize) -> ft_data::Batch {
    let mut rng = SplitMix64::new(3);
    let ids: Vec<Vec<u32>> = (0..ROWS)
        .map(|_| (0..LENGTH).map(|_| rng.below(vocab) as u32).collect())
        .collect();
    let mask: Vec<Vec<bool>> = (0..ROWS)
        .map(|_| (0..LENGTH).map(|i| i >= LENGTH / 2).collect())
        .collect();
    ft_data::Batch {
        ids,
        mask,
        lengths: vec![LENGTH; ROWS],
        target_tokens: ROWS * LENGTH / 2,
        segment_ids: None,
        position_ids: None,
        examples: (0..ROWS).map(|i| vec![i]).collect(),
    }
}

fn model_paths(c: &mut Criterion) {
    let model = tiny::tiny_model(1, &LoadOptions::default()).expect("tiny model");
    let arrays = BatchArrays::new(&batch(model.args.vocab_size));
    let spec = LoraSpec {
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        targets: Projection::ALL.to_vec(),
        layers: (0..model.args.num_layers).collect(),
        dora: false,
    };
    let adapters = LoraAdapters::init(&model, spec, 5).expect("adapters");
    let workers = Workers::single();
    let mut group = c.benchmark_group("tiny model, 4 x 64 tokens");
    group.bench_function("forward", |b| {
        b.iter(|| {
            let logits = model
                .forward(&arrays.inputs, &NoAdapter, None, AttentionScope::Causal)
                .expect("forward");
            logits.eval().expect("eval");
        })
    });
    group.bench_function("training step: loss + LoRA gradients", |b| {
        b.iter(|| {
            let (loss, grads) = ft_trainer::loss_and_grads(
                &model,
                &adapters.layout,
                &adapters.params,
                std::slice::from_ref(&arrays),
                &workers,
                None,
                0.0,
            )
            .expect("step");
            mlx_rs::transforms::eval(std::iter::once(&loss).chain(grads.iter())).expect("eval");
        })
    });
    group.finish();
}

criterion_group!(benches, model_paths);
criterion_main!(benches);
