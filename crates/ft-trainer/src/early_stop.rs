//! Early stopping: when a validation loss counts as an improvement, and
//! when too many evaluations without one end the run.

use crate::checkpoint::TrainerState;
use ft_config::TrainingConfig;

/// The early-stopping rule of a run. The record it keeps (best loss,
/// evaluations since) lives in [`TrainerState`], so that a checkpoint
/// carries it across a resume.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EarlyStopping {
    /// Evaluations without improvement that end the run (`None`: never).
    patience: Option<u32>,
    /// How far below the best a loss must be to count as an improvement.
    min_delta: f64,
}

impl EarlyStopping {
    pub(crate) fn new(patience: Option<u32>, min_delta: f64) -> Self {
        EarlyStopping {
            patience,
            min_delta,
        }
    }

    /// The rule of `training.early_stopping_patience` and
    /// `training.early_stopping_min_delta`.
    pub(crate) fn from_config(training: &TrainingConfig) -> Self {
        Self::new(
            training.early_stopping_patience,
            training.early_stopping_min_delta,
        )
    }

    /// Records an evaluation's loss in `state`; true when it is the new best.
    /// A non-finite loss never is (else a NaN first evaluation would be a
    /// best that nothing beats); any finite loss beats a non-finite best
    /// that an older checkpoint may carry.
    pub(crate) fn record(&self, state: &mut TrainerState, loss: f64) -> bool {
        let improved = loss.is_finite()
            && state
                .best_val_loss
                .is_none_or(|best| !best.is_finite() || loss < best - self.min_delta);
        if improved {
            state.best_val_loss = Some(loss);
            state.evals_without_improvement = 0;
        } else {
            state.evals_without_improvement += 1;
        }
        improved
    }

    /// Whether the evaluations since the best have used up the patience.
    pub(crate) fn should_stop(&self, state: &TrainerState) -> bool {
        self.patience
            .is_some_and(|patience| state.evals_without_improvement >= patience)
    }
}

#[cfg(test)]
mod tests {
    use super::EarlyStopping;
    use crate::checkpoint::TrainerState;

    #[test]
    fn a_non_finite_loss_is_never_the_best() {
        let rule = EarlyStopping::new(Some(2), 0.0);
        let mut state = TrainerState::default();
        assert!(!rule.record(&mut state, f64::NAN));
        assert_eq!(state.best_val_loss, None);
        assert!(rule.record(&mut state, 1.5));
        assert!(!rule.record(&mut state, f64::INFINITY));
        assert_eq!(state.best_val_loss, Some(1.5));
        assert!(rule.should_stop(&{
            let mut later = state.clone();
            rule.record(&mut later, f64::NAN);
            later
        }));
        let mut carried = TrainerState {
            best_val_loss: Some(f64::NAN),
            ..TrainerState::default()
        };
        assert!(rule.record(&mut carried, 9.0));
        assert_eq!(carried.best_val_loss, Some(9.0));
    }

    #[test]
    fn the_first_evaluation_is_the_best_so_far() {
        let rule = EarlyStopping::new(Some(1), 0.5);
        let mut state = TrainerState::default();
        assert!(rule.record(&mut state, 3.0));
        assert_eq!(state.best_val_loss, Some(3.0));
        assert_eq!(state.evals_without_improvement, 0);
        assert!(!rule.should_stop(&state));
    }

    #[test]
    fn an_improvement_must_beat_the_best_by_more_than_min_delta() {
        let rule = EarlyStopping::new(None, 0.1);
        let mut state = TrainerState::default();
        rule.record(&mut state, 2.0);
        // 1.95 is lower, but not by more than 0.1: the best stays 2.0.
        assert!(!rule.record(&mut state, 1.95));
        assert_eq!(state.best_val_loss, Some(2.0));
        assert_eq!(state.evals_without_improvement, 1);
        assert!(rule.record(&mut state, 1.85));
        assert_eq!(state.best_val_loss, Some(1.85));
        assert_eq!(state.evals_without_improvement, 0);
    }

    #[test]
    fn patience_counts_evaluations_since_the_best() {
        let rule = EarlyStopping::new(Some(2), 0.0);
        let mut state = TrainerState::default();
        rule.record(&mut state, 1.0);
        rule.record(&mut state, 1.0);
        assert!(
            !rule.should_stop(&state),
            "one evaluation without improvement"
        );
        // An improvement starts the count again.
        assert!(rule.record(&mut state, 0.9));
        rule.record(&mut state, 1.2);
        assert!(!rule.should_stop(&state));
        rule.record(&mut state, 0.95);
        assert!(
            rule.should_stop(&state),
            "two evaluations without improvement"
        );
    }

    #[test]
    fn without_patience_a_run_never_stops_early() {
        let rule = EarlyStopping::new(None, 0.0);
        let mut state = TrainerState::default();
        rule.record(&mut state, 1.0);
        for _ in 0..100 {
            rule.record(&mut state, 2.0);
        }
        assert_eq!(state.evals_without_improvement, 100);
        assert!(!rule.should_stop(&state));
    }

    #[test]
    fn a_resumed_record_keeps_its_count() {
        let rule = EarlyStopping::new(Some(3), 0.0);
        let mut state = TrainerState {
            best_val_loss: Some(1.0),
            evals_without_improvement: 2,
            ..TrainerState::default()
        };
        assert!(!rule.should_stop(&state));
        assert!(!rule.record(&mut state, 1.5));
        assert!(rule.should_stop(&state));
    }
}
