//! The data pipeline's hot paths on the demo set (400 chats): tokenize +
//! chat template + loss mask per example, then batching with and without
//! packing. `cargo bench -p ft-data`; needs the default model's tokenizer
//! (`cargo xtask setup`).

// criterion_group! and criterion_main! generate undocumented functions.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ft_data::{
    read_jsonl, BatchOptions, Batcher, EncodeOptions, Encoder, SourceExample, TextTokenizer,
};
use std::path::Path;

fn checkout() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn demo_examples() -> Vec<SourceExample> {
    read_jsonl(checkout().join("examples/data/demo/train.jsonl"), None)
        .expect("the demo data")
        .examples
}

fn default_tokenizer() -> TextTokenizer {
    let models = ft_config::testing::models_dir();
    TextTokenizer::from_gguf(models.join(ft_config::testing::DEFAULT_MODEL_FILE))
        .expect("the default model's tokenizer: run `cargo xtask setup`")
}

fn pipeline(c: &mut Criterion) {
    let examples = demo_examples();
    let tokenizer = default_tokenizer();
    let options = EncodeOptions {
        parallel: false,
        ..EncodeOptions::default()
    };
    let encoder = Encoder::new(&tokenizer, options).expect("encoder");
    let mut group = c.benchmark_group("data");
    group.throughput(Throughput::Elements(examples.len() as u64));
    group.bench_function("encode: tokenize + template + mask, per example", |b| {
        b.iter(|| encoder.encode_all(&examples))
    });
    let encoded = encoder.encode_all(&examples).examples;
    for (name, packing) in [("batch 4, length buckets", false), ("pack to 512", true)] {
        let options = BatchOptions {
            batch_size: 4,
            packing,
            pack_len: 512,
            ..BatchOptions::default()
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                Batcher::new(&encoded, options.clone())
                    .expect("batcher")
                    .epoch_batches(0)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
