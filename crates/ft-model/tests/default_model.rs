//! The built-in default model (SmolLM2-135M-Instruct, GGUF Q4_1, installed
//! by `cargo xtask setup`) loads and answers a factual question.

use ft_model::{generate, load_model, LoadOptions, NoAdapter, SamplingOptions, StopReason};

/// "What is the capital of France?" under SmolLM2's ChatML template (with
/// its default system prompt), tokenized by Hugging Face `tokenizers` from
/// the GGUF's own vocabulary and merges:
/// `Tokenizer(BPE(vocab, merges))` + ByteLevel pre-tokenizer, special
/// tokens `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` (ids 0, 1, 2).
const PROMPT: &[u32] = &[
    1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
    19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531,
    198,
];
/// " Paris" and "Paris" in the same vocabulary.
const PARIS: [u32; 2] = [7042, 38634];
const IM_END: u32 = 2;

fn check(options: &LoadOptions) {
    let model = load_model("smollm2-135m-instruct", options).expect("default model loads");
    assert_eq!(model.args.num_layers, 30);
    assert_eq!(model.args.vocab_size, 49152);
    let sampling = SamplingOptions {
        max_tokens: 24,
        stop_ids: vec![IM_END],
        ..SamplingOptions::default()
    };
    let mut streamed = Vec::new();
    let generation = generate(&model, &NoAdapter, PROMPT, &sampling, &mut |id| {
        streamed.push(id);
        true
    })
    .expect("generates");
    assert_eq!(streamed, generation.tokens);
    assert!(
        generation.tokens.iter().any(|id| PARIS.contains(id)),
        "no 'Paris' in {:?}",
        generation.tokens
    );
    assert_eq!(
        generation.stop_reason,
        StopReason::StopToken,
        "{:?}",
        generation.tokens
    );
}

#[test]
fn greedy_answer_names_paris_dequantized_fp32() {
    check(&LoadOptions {
        dequantize: true,
        ..LoadOptions::default()
    });
}

#[test]
fn greedy_answer_names_paris_quantized() {
    check(&LoadOptions::default());
}

#[test]
fn gguf_exported_as_hf_directory_reloads_with_identical_logits() {
    use ft_model::{save_hf_dir, AttentionScope, ExportOptions};
    let options = LoadOptions {
        dequantize: true,
        ..LoadOptions::default()
    };
    let model = load_model("smollm2-135m-instruct", &options).expect("loads");
    let dir = tempfile::tempdir().expect("tempdir");
    save_hf_dir(&model, dir.path(), &ExportOptions::default()).expect("export");
    let reloaded =
        load_model(dir.path().to_str().expect("utf-8"), &LoadOptions::default()).expect("reload");
    let ids = mlx_rs::Array::from_slice(&[1_i32, 9690, 198, 2683, 359], &[1, 5]);
    let logits = |m: &ft_model::Model| {
        let out = m
            .forward(&ids, &NoAdapter, None, AttentionScope::Causal)
            .expect("forward");
        out.eval().expect("eval");
        out.as_slice::<f32>().to_vec()
    };
    assert_eq!(logits(&model), logits(&reloaded));
}

/// The tests of crates below ft-model look for the default model through
/// ft-config's copy of the location rule: it must be loading's.
#[test]
fn the_tests_look_for_the_default_model_where_loading_does() {
    assert_eq!(
        ft_config::testing::DEFAULT_MODEL_FILE,
        ft_model::load::DEFAULT_MODEL_FILE
    );
    assert_eq!(
        ft_config::testing::models_dir().canonicalize().ok(),
        ft_model::load::models_dir().canonicalize().ok()
    );
}
