//! Fine-tune the built-in model on the demo data from Rust, printing the
//! loss as it goes: `cargo run --release -p ft-examples --example fine_tune`.

use ft_trainer::{Callbacks, Control, EvalMetrics, StepMetrics, Trainer};

/// Prints every 10th step and every evaluation.
struct Print;

impl Callbacks for Print {
    fn on_step(&mut self, m: &StepMetrics) -> Control {
        if m.step.is_multiple_of(10) {
            println!(
                "step {:>3}/{}: loss {:.4}, {:.0} tokens/s",
                m.step, m.total_steps, m.loss, m.tokens_per_second
            );
        }
        Control::Continue
    }
    fn on_eval(&mut self, m: &EvalMetrics) -> Control {
        println!("step {:>3}: validation loss {:.4}", m.step, m.loss);
        Control::Continue
    }
}

fn main() -> anyhow::Result<()> {
    let config = ft_config::ConfigLoader::new()
        .file("configs/quickstart.toml")
        .overrides([
            "training.steps=30",
            "checkpoint.output_dir=\"target/example-run\"",
        ])
        .load()?
        .config;
    let mut trainer = Trainer::new(config)?;
    let summary = trainer.train(&mut Print)?;
    println!("adapter written to {}", summary.adapter_dir.display());
    Ok(())
}
