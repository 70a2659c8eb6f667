//! Learning-rate schedules: pure functions of the optimizer step.

use serde::{Deserialize, Serialize};

/// The shape of the schedule after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleShape {
    /// Cosine decay from the peak to `min_lr` at the last step.
    Cosine,
    /// Linear decay from the peak to `min_lr` at the last step.
    Linear,
    /// The peak learning rate throughout.
    Constant,
}

/// Linear warmup from 0 to `peak` over `warmup_steps`, then `shape` down to
/// `min_lr` at `total_steps`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Shape after warmup.
    pub shape: ScheduleShape,
    /// Learning rate reached at the end of warmup.
    pub peak: f64,
    /// Final learning rate of a decaying schedule.
    pub min_lr: f64,
    /// Warmup length in steps (0: start at the peak).
    pub warmup_steps: u64,
    /// Length of the run in optimizer steps.
    pub total_steps: u64,
}

impl Schedule {
    /// The learning rate of optimizer step `step` (0-based: the first update
    /// uses `at(0)`). Steps past the end keep the final value.
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            // Warmup reaches the peak at its last step, never 0 at step 0.
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps);
        let progress = if decay_steps <= 1 {
            0.0
        } else {
            ((step - self.warmup_steps) as f64 / (decay_steps - 1) as f64).min(1.0)
        };
        let floor = self.min_lr.min(self.peak);
        match self.shape {
            ScheduleShape::Constant => self.peak,
            ScheduleShape::Linear => self.peak + (floor - self.peak) * progress,
            ScheduleShape::Cosine => {
                floor + (self.peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shape() -> impl Strategy<Value = ScheduleShape> {
        prop_oneof![
            Just(ScheduleShape::Cosine),
            Just(ScheduleShape::Linear),
            Just(ScheduleShape::Constant)
        ]
    }

    fn schedule() -> impl Strategy<Value = Schedule> {
        (shape(), 1e-6..1.0f64, 0.0..1.0f64, 0u64..50, 1u64..500).prop_map(
            |(shape, peak, min_frac, warmup, total)| Schedule {
                shape,
                peak,
                min_lr: peak * min_frac,
                warmup_steps: warmup.min(total),
                total_steps: total,
            },
        )
    }

    proptest! {
        #[test]
        fn stays_between_zero_and_peak(s in schedule(), step in 0u64..1000) {
            let lr = s.at(step);
            prop_assert!(lr > 0.0 || s.min_lr == 0.0 && step + 1 >= s.total_steps);
            prop_assert!(lr <= s.peak * (1.0 + 1e-12));
        }

        #[test]
        fn warmup_rises_and_decay_falls(s in schedule(), step in 0u64..600) {
            let (now, next) = (s.at(step), s.at(step + 1));
            if step + 1 < s.warmup_steps {
                prop_assert!(next > now);
            } else if step >= s.warmup_steps {
                prop_assert!(next <= now * (1.0 + 1e-12));
            }
        }

        #[test]
        fn peak_after_warmup_and_floor_at_the_end(s in schedule()) {
            if s.warmup_steps > 0 {
                prop_assert!((s.at(s.warmup_steps - 1) - s.peak).abs() <= 1e-12 * s.peak);
            }
            let last = s.at(s.total_steps.saturating_sub(1).max(s.warmup_steps));
            let expected = match s.shape {
                ScheduleShape::Constant => s.peak,
                _ if s.total_steps - s.warmup_steps <= 1 => s.peak,
                _ => s.min_lr,
            };
            prop_assert!((last - expected).abs() <= 1e-9 * s.peak);
        }

        #[test]
        fn is_a_pure_function_of_the_step(s in schedule(), step in 0u64..1000) {
            prop_assert_eq!(s.at(step).to_bits(), s.at(step).to_bits());
            let copy = s;
            prop_assert_eq!(s.at(step).to_bits(), copy.at(step).to_bits());
        }
    }

    #[test]
    fn cosine_is_half_way_in_the_middle() {
        let s = Schedule {
            shape: ScheduleShape::Cosine,
            peak: 1.0,
            min_lr: 0.0,
            warmup_steps: 0,
            total_steps: 101,
        };
        assert!((s.at(50) - 0.5).abs() < 1e-12);
        assert!((s.at(0) - 1.0).abs() < 1e-12);
        assert!(s.at(100).abs() < 1e-12);
    }
}
