//! AdamW and SGD over a fixed, ordered list of parameter arrays, with state
//! that saves to and restores from one safetensors file bit for bit.

use crate::{OptimError, Result};
use mlx_rs::Array;
use std::collections::HashMap;
use std::path::Path;

/// Adam with decoupled weight decay and bias correction (Loshchilov & Hutter).
#[derive(Clone, Debug)]
pub struct AdamW {
    /// Decay of the first-moment estimate.
    pub beta1: f64,
    /// Decay of the second-moment estimate.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay, multiplied by the learning rate.
    pub weight_decay: f64,
}

/// Stochastic gradient descent with optional momentum and L2 weight decay.
#[derive(Clone, Debug)]
pub struct Sgd {
    /// Momentum (0: plain SGD).
    pub momentum: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
}

/// Per-parameter moments and the number of updates applied.
#[derive(Clone, Debug, Default)]
pub struct OptimizerState {
    /// Updates applied so far.
    pub updates: u64,
    /// First moments (AdamW) or velocities (SGD with momentum), per parameter.
    pub first: Vec<Array>,
    /// Second moments (AdamW only), per parameter.
    pub second: Vec<Array>,
}

/// An optimizer with its state.
#[derive(Clone, Debug)]
pub struct Optimizer {
    rule: Rule,
    state: OptimizerState,
}

#[derive(Clone, Debug)]
enum Rule {
    AdamW(AdamW),
    Sgd(Sgd),
}

impl Optimizer {
    /// AdamW with fresh state.
    pub fn adamw(settings: AdamW) -> Self {
        Self {
            rule: Rule::AdamW(settings),
            state: OptimizerState::default(),
        }
    }

    /// SGD with fresh state.
    pub fn sgd(settings: Sgd) -> Self {
        Self {
            rule: Rule::Sgd(settings),
            state: OptimizerState::default(),
        }
    }

    /// The state (moments and update count).
    pub fn state(&self) -> &OptimizerState {
        &self.state
    }

    /// Every array the next evaluation must materialise along with the
    /// parameters, so the graph does not grow across steps.
    pub fn state_arrays(&self) -> impl Iterator<Item = &Array> {
        self.state.first.iter().chain(&self.state.second)
    }

    /// Applies one update with learning rate `lr`; lazy (nothing is evaluated).
    pub fn update(&mut self, params: &mut [Array], grads: &[Array], lr: f64) -> Result<()> {
        if params.len() != grads.len() {
            return Err(OptimError::Mismatch(format!(
                "{} parameters but {} gradients",
                params.len(),
                grads.len()
            )));
        }
        let state = &mut self.state;
        if state.first.is_empty() {
            state.first = params
                .iter()
                .map(mlx_rs::ops::zeros_like)
                .collect::<std::result::Result<_, _>>()?;
            if matches!(self.rule, Rule::AdamW(_)) {
                state.second = state.first.clone();
            }
        }
        if state.first.len() != params.len() {
            return Err(OptimError::Mismatch(format!(
                "optimizer state holds {} parameters, the model has {}",
                state.first.len(),
                params.len()
            )));
        }
        state.updates += 1;
        let scalar = |value: f64| Array::from_f32(value as f32);
        match &self.rule {
            Rule::AdamW(adam) => {
                let t = state.updates as i32;
                let step_size = lr / (1.0 - adam.beta1.powi(t));
                let second_correction = (1.0 - adam.beta2.powi(t)).sqrt();
                let (b1, b2) = (scalar(adam.beta1), scalar(adam.beta2));
                let (c1, c2) = (scalar(1.0 - adam.beta1), scalar(1.0 - adam.beta2));
                let decay = scalar(1.0 - lr * adam.weight_decay);
                for (i, (param, grad)) in params.iter_mut().zip(grads).enumerate() {
                    let m = b1.multiply(&state.first[i])?.add(&c1.multiply(grad)?)?;
                    let v = b2
                        .multiply(&state.second[i])?
                        .add(&c2.multiply(&grad.square()?)?)?;
                    let denom = v
                        .sqrt()?
                        .divide(scalar(second_correction))?
                        .add(scalar(adam.eps))?;
                    let step = m.divide(&denom)?.multiply(scalar(step_size))?;
                    *param = param.multiply(&decay)?.subtract(&step)?;
                    state.first[i] = m;
                    state.second[i] = v;
                }
            }
            Rule::Sgd(sgd) => {
                for (i, (param, grad)) in params.iter_mut().zip(grads).enumerate() {
                    let mut direction = grad.clone();
                    if sgd.weight_decay > 0.0 {
                        direction = direction.add(&param.multiply(scalar(sgd.weight_decay))?)?;
                    }
                    if sgd.momentum > 0.0 {
                        direction = state.first[i]
                            .multiply(scalar(sgd.momentum))?
                            .add(&direction)?;
                        state.first[i] = direction.clone();
                    }
                    *param = param.subtract(&direction.multiply(scalar(lr))?)?;
                }
            }
        }
        Ok(())
    }

    /// Writes the state to a safetensors file (moments as arrays, the
    /// update count as metadata).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut arrays: HashMap<String, Array> = HashMap::new();
        for (i, m) in self.state.first.iter().enumerate() {
            arrays.insert(format!("first.{i}"), m.clone());
        }
        for (i, v) in self.state.second.iter().enumerate() {
            arrays.insert(format!("second.{i}"), v.clone());
        }
        let metadata = HashMap::from([
            ("updates".to_string(), self.state.updates.to_string()),
            ("rule".to_string(), self.rule_name().to_string()),
            ("parameters".to_string(), self.state.first.len().to_string()),
        ]);
        if arrays.is_empty() {
            // safetensors needs at least one tensor to carry the metadata.
            arrays.insert("empty".into(), Array::from_slice(&[0.0f32], &[1]));
        }
        Array::save_safetensors(arrays, Some(&metadata), path).map_err(|error| OptimError::State {
            path: path.to_path_buf(),
            message: error.to_string(),
        })
    }

    /// Restores the state written by [`save`](Self::save); refuses a file of
    /// another rule or parameter count.
    pub fn load(&mut self, path: &Path, expected_parameters: usize) -> Result<()> {
        let bad = |message: String| OptimError::State {
            path: path.to_path_buf(),
            message,
        };
        let (mut arrays, metadata) =
            Array::load_safetensors_with_metadata(path).map_err(|e| bad(e.to_string()))?;
        let field = |key: &str| {
            metadata
                .get(key)
                .ok_or_else(|| bad(format!("metadata field `{key}` is missing")))
        };
        let rule = field("rule")?;
        if rule != self.rule_name() {
            return Err(bad(format!(
                "state is for optimizer `{rule}`, this run uses `{}`",
                self.rule_name()
            )));
        }
        let parse = |key: &str| -> Result<u64> {
            let text = field(key)?;
            text.parse().map_err(|_| {
                bad(format!(
                    "metadata field `{key}`: expected an integer, got `{text}`"
                ))
            })
        };
        let updates = parse("updates")?;
        let count = parse("parameters")? as usize;
        if count != expected_parameters {
            return Err(bad(format!(
                "state holds {count} parameter arrays, the adapters have {expected_parameters}"
            )));
        }
        let mut take = |prefix: &str| -> Result<Vec<Array>> {
            (0..count)
                .map(|i| {
                    arrays
                        .remove(&format!("{prefix}.{i}"))
                        .ok_or_else(|| bad(format!("tensor `{prefix}.{i}` is missing")))
                })
                .collect()
        };
        let first = take("first")?;
        let second = if matches!(self.rule, Rule::AdamW(_)) && count > 0 {
            take("second")?
        } else {
            Vec::new()
        };
        self.state = OptimizerState {
            updates,
            first,
            second,
        };
        Ok(())
    }

    fn rule_name(&self) -> &'static str {
        match self.rule {
            Rule::AdamW(_) => "adamw",
            Rule::Sgd(_) => "sgd",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adamw() -> Optimizer {
        Optimizer::adamw(AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        })
    }

    /// The textbook AdamW recurrence in f64 on the host.
    fn reference_adamw(p: f64, grads: &[f64], lr: f64) -> f64 {
        let (mut p, mut m, mut v) = (p, 0.0, 0.0);
        for (t, g) in grads.iter().enumerate() {
            let t = t as i32 + 1;
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            let m_hat = m / (1.0 - 0.9f64.powi(t));
            let v_hat = v / (1.0 - 0.999f64.powi(t));
            p = p * (1.0 - lr * 0.01) - lr * m_hat / (v_hat.sqrt() + 1e-8);
        }
        p
    }

    #[test]
    fn adamw_matches_the_textbook_recurrence() {
        let grads = [0.5, -1.0, 0.25, 2.0];
        let mut optimizer = adamw();
        let mut params = vec![Array::from_slice(&[1.0f32], &[1])];
        for g in grads {
            let grad = Array::from_slice(&[g as f32], &[1]);
            optimizer.update(&mut params, &[grad], 0.1).expect("update");
        }
        let got = f64::from(params[0].as_slice::<f32>()[0]);
        let expected = reference_adamw(1.0, &grads, 0.1);
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
    }

    #[test]
    fn state_round_trips_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("optimizer.safetensors");
        let grad = || vec![Array::from_slice(&[0.3f32, -0.7], &[2])];
        let mut original = adamw();
        let mut params = vec![Array::from_slice(&[1.0f32, 2.0], &[2])];
        original.update(&mut params, &grad(), 0.01).expect("update");
        mlx_rs::transforms::eval(original.state_arrays()).expect("eval");
        original.save(&path).expect("save");

        let mut restored = adamw();
        restored.load(&path, 1).expect("load");
        let mut p1 = params.clone();
        let mut p2 = params;
        original.update(&mut p1, &grad(), 0.01).expect("update");
        restored.update(&mut p2, &grad(), 0.01).expect("update");
        assert_eq!(p1[0].as_slice::<f32>(), p2[0].as_slice::<f32>());
        assert_eq!(restored.state().updates, 2);
    }

    #[test]
    fn state_of_another_shape_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("optimizer.safetensors");
        let mut optimizer = adamw();
        let mut params = vec![Array::from_slice(&[1.0f32], &[1])];
        let grads = [Array::from_slice(&[1.0f32], &[1])];
        optimizer.update(&mut params, &grads, 0.1).expect("update");
        optimizer.save(&path).expect("save");
        let error = adamw().load(&path, 3).expect_err("mismatch");
        assert!(error.to_string().contains("adapters have 3"), "{error}");
        let error = Optimizer::sgd(Sgd {
            momentum: 0.0,
            weight_decay: 0.0,
        })
        .load(&path, 1)
        .expect_err("rule");
        assert!(error.to_string().contains("adamw"), "{error}");
    }

    #[test]
    fn sgd_with_momentum_accumulates_velocity() {
        let mut optimizer = Optimizer::sgd(Sgd {
            momentum: 0.5,
            weight_decay: 0.0,
        });
        let mut params = vec![Array::from_slice(&[0.0f32], &[1])];
        for _ in 0..2 {
            let grads = [Array::from_slice(&[1.0f32], &[1])];
            optimizer.update(&mut params, &grads, 1.0).expect("update");
        }
        // Velocities 1 then 1.5: the parameter moved by 2.5.
        assert!((params[0].as_slice::<f32>()[0] + 2.5).abs() < 1e-6);
    }
}
