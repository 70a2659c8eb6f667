//! The stability policy on a poisoned batch: the frozen embedding row of
//! one token is NaN and exactly one training example holds that token, so
//! exactly one step of an epoch has a NaN loss. With `skip` that step is
//! skipped (counted, recorded, weights and optimizer state untouched) and
//! training goes on; with `stop` the run ends with a typed error naming the
//! step, and the last good checkpoint stays as it was written.
//! (A learning rate of 1e30, non-finite everywhere, is in training.rs.)

use ft_config::{Config, LoraLayers, NonFinitePolicy, TargetModules};
mod common;

use common::tokenizer;
use ft_model::Model;
use ft_trainer::metrics::read_metrics;
use ft_trainer::{Callbacks, MetricsRecord, NoCallbacks, TrainError, Trainer};
use mlx_rs::Array;
use std::path::{Path, PathBuf};

/// A character no other example (nor the chat template) uses.
const POISON: &str = "Z";
const EXAMPLES: usize = 16;
const POISONED_LINE: usize = 9;
const BATCH: u32 = 4;

/// The tests' tiny random Mistral with the embedding row of `token` set to NaN.
fn poisoned_model(token: u32) -> Model {
    common::model_with(21, |weights| {
        let embed = weights
            .get_mut("model.embed_tokens.weight")
            .expect("embeddings");
        let hidden = embed.shape()[1] as usize;
        let mut values = embed.as_slice::<f32>().to_vec();
        let row = token as usize * hidden;
        values[row..row + hidden].fill(f32::NAN);
        *embed = Array::from_slice(&values, embed.shape());
    })
}

fn write_data(dir: &Path) -> PathBuf {
    let lines: Vec<String> = (0..EXAMPLES)
        .map(|i| {
            let office = if i == POISONED_LINE {
                POISON.to_string()
            } else {
                i.to_string()
            };
            format!(
                r#"{{"messages":[{{"role":"user","content":"Where is office {office}?"}},{{"role":"assistant","content":"Office {office} is in Lima."}}]}}"#
            )
        })
        .collect();
    let path = dir.join("train.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").expect("write data");
    path
}

fn config(dir: &Path, seed: u64, policy: NonFinitePolicy) -> Config {
    let mut config = Config::default();
    config.data.train = Some(write_data(dir));
    config.data.max_seq_len = 128;
    config.lora.rank = 4;
    config.lora.target_modules = TargetModules::AllLinear;
    config.lora.num_layers = LoraLayers::All;
    // One epoch: the poisoned example is in exactly one step.
    config.training.steps = Some(EXAMPLES as u32 / BATCH);
    config.training.batch_size = BATCH;
    config.training.seed = seed;
    config.training.eval_every = 0;
    config.training.save_every = 1;
    config.training.on_nonfinite = policy;
    config.checkpoint.keep_last = 0;
    config.optimizer.learning_rate = 1e-2;
    config.scheduler.warmup_steps = Some(0);
    config.checkpoint.output_dir = dir.join("run");
    config
}

/// The poisoned token id, a seed whose data order puts the poisoned example
/// neither in the first step (a good checkpoint precedes it) nor in the
/// last (steps follow it), and the 1-based step that holds it.
fn poisoned_step_and_seed(dir: &Path) -> (u32, u64, u64) {
    let tokenizer = tokenizer();
    let token = tokenizer.token_id(POISON).expect("poison token");
    for seed in 0..64 {
        let cfg = config(dir, seed, NonFinitePolicy::Skip);
        let (train, _) = ft_trainer::load_datasets(&cfg, &tokenizer).expect("data");
        let holders: Vec<usize> = (0..train.examples.len())
            .filter(|&i| train.examples[i].ids.contains(&token))
            .collect();
        assert_eq!(holders.len(), 1, "the token must be in exactly one example");
        let options = ft_trainer::data_options::batch_options(
            &cfg.training,
            &cfg.data,
            tokenizer.special().pad_id(),
        );
        let plan = train.batcher(options).expect("batcher").plan(0);
        assert_eq!(plan.len(), EXAMPLES / BATCH as usize);
        let batch = plan
            .iter()
            .position(|rows| rows.iter().flatten().any(|&i| i == holders[0]))
            .expect("in a batch");
        if batch >= 1 && batch + 1 < plan.len() {
            return (token, seed, batch as u64 + 1);
        }
    }
    panic!("no seed puts the poisoned example in a middle step");
}

fn read_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_skip_policy_skips_exactly_the_poisoned_step_and_trains_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (token, seed, poisoned) = poisoned_step_and_seed(dir.path());
    let cfg = config(dir.path(), seed, NonFinitePolicy::Skip);
    let total = u64::from(cfg.training.steps.unwrap_or(0));
    let mut trainer =
        Trainer::with_model(cfg, poisoned_model(token), tokenizer()).expect("trainer");
    let summary = trainer.train(&mut NoCallbacks).expect("train");
    assert_eq!(summary.steps, total);
    assert_eq!(summary.skipped_steps, 1, "{summary:?}");
    assert!(summary.final_loss.is_some_and(f64::is_finite));
    for param in &trainer.adapters().params {
        assert!(param.as_slice::<f32>().iter().all(|v| v.is_finite()));
    }
    // The step is recorded (its NaN loss reads back) and is the only one.
    let run = dir.path().join("run");
    let records = read_metrics(&run.join("metrics.jsonl")).expect("metrics");
    let steps: Vec<(u64, bool, f64)> = records
        .iter()
        .filter_map(|r| match r {
            MetricsRecord::Train(m) => Some((m.step, m.skipped, m.loss)),
            MetricsRecord::Eval(_) => None,
        })
        .collect();
    assert_eq!(steps.len() as u64, total, "{steps:?}");
    for (step, skipped, loss) in &steps {
        assert_eq!(*skipped, *step == poisoned, "step {step}: {steps:?}");
        assert_eq!(loss.is_finite(), !skipped, "step {step}: loss {loss}");
    }
    // The skipped update left adapters and optimizer state as they were;
    // the steps after it changed them again.
    let checkpoint = |step: u64| run.join(format!("checkpoints/step-{step:06}"));
    let tensors = |path: PathBuf| {
        let mut arrays: Vec<(String, Vec<u32>)> = Array::load_safetensors(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .into_iter()
            .map(|(name, array)| {
                let bits = array
                    .as_slice::<f32>()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect();
                (name, bits)
            })
            .collect();
        arrays.sort();
        arrays
    };
    for file in ["adapter/adapters.safetensors", "optimizer.safetensors"] {
        assert!(
            tensors(checkpoint(poisoned - 1).join(file))
                == tensors(checkpoint(poisoned).join(file)),
            "{file} changed in the skipped step"
        );
    }
    assert!(
        tensors(checkpoint(poisoned - 1).join("adapter/adapters.safetensors"))
            != tensors(run.join("adapter/adapters.safetensors")),
        "the steps after the skipped one changed nothing"
    );
    let state: serde_json::Value =
        serde_json::from_slice(&read_bytes(&checkpoint(total).join("trainer_state.json")))
            .expect("state");
    assert_eq!(state["skipped_steps"], 1);
}

/// Keeps the adapter bytes of every checkpoint as it was written.
#[derive(Default)]
struct Written(Vec<(PathBuf, Vec<u8>)>);

impl Callbacks for Written {
    fn on_checkpoint(&mut self, dir: &Path) {
        let bytes = read_bytes(&dir.join("adapter/adapters.safetensors"));
        self.0.push((dir.to_path_buf(), bytes));
    }
}

#[test]
fn the_stop_policy_names_the_poisoned_step_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (token, seed, poisoned) = poisoned_step_and_seed(dir.path());
    let cfg = config(dir.path(), seed, NonFinitePolicy::Stop);
    let model = poisoned_model(token);
    let args = model.args.clone();
    let mut trainer = Trainer::with_model(cfg, model, tokenizer()).expect("trainer");
    let mut written = Written::default();
    let error = trainer.train(&mut written).expect_err("stops");
    let TrainError::NonFinite {
        step,
        what,
        last_checkpoint,
        ..
    } = &error
    else {
        panic!("unexpected error {error}");
    };
    assert_eq!(*step, poisoned);
    assert_eq!(*what, "loss");
    assert!(
        error.to_string().starts_with(&format!("step {poisoned}: ")),
        "{error}"
    );
    let last = last_checkpoint.clone().expect("a checkpoint before it");
    let (saved_dir, saved_bytes) = written.0.last().expect("written");
    assert_eq!(&last, saved_dir);
    assert!(error.to_string().contains(&last.display().to_string()));
    // Unchanged since it was written, nothing newer, no final adapter.
    assert!(&read_bytes(&last.join("adapter/adapters.safetensors")) == saved_bytes);
    let run = dir.path().join("run");
    assert_eq!(
        ft_trainer::checkpoint::list(&run).expect("list").last(),
        Some(&last)
    );
    assert!(!run.join("adapter").exists());
    let mut optimizer = ft_optim::Optimizer::adamw(ft_optim::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    });
    let loaded = ft_trainer::checkpoint::load(&last, &args, &mut optimizer).expect("loads");
    assert_eq!(loaded.state.step, poisoned - 1);
    for param in &loaded.adapters.params {
        assert!(param.as_slice::<f32>().iter().all(|v| v.is_finite()));
    }
}
