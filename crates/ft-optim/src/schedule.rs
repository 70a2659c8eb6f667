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

    /// The documented schedule written independently of [`Schedule::at`]:
    /// warmup rises by `peak / warmup` per step to the peak at its last
    /// step; decay runs over the steps `warmup ..= total - 1`, cosine as
    /// `floor + (peak - floor) cos²(πt/2)`, linear as a weighted mean.
    fn closed_form(s: &Schedule, step: u64) -> f64 {
        if step < s.warmup_steps {
            return s.peak / s.warmup_steps as f64 * (step + 1) as f64;
        }
        let last = s.total_steps.saturating_sub(1);
        let t = if last > s.warmup_steps {
            (step.min(last) - s.warmup_steps) as f64 / (last - s.warmup_steps) as f64
        } else {
            0.0
        };
        let floor = s.min_lr;
        match s.shape {
            ScheduleShape::Constant => s.peak,
            ScheduleShape::Linear => (1.0 - t) * s.peak + t * floor,
            ScheduleShape::Cosine => {
                let c = (std::f64::consts::FRAC_PI_2 * t).cos();
                floor + (s.peak - floor) * c * c
            }
        }
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
        fn matches_the_closed_form_at_every_step(s in schedule(), step in 0u64..1000) {
            let expected = closed_form(&s, step);
            prop_assert!(
                (s.at(step) - expected).abs() <= 1e-12 * s.peak,
                "step {}: {} vs closed form {}", step, s.at(step), expected
            );
        }

        #[test]
        fn decay_is_symmetric_about_its_middle(s in schedule(), k in 0u64..500) {
            // Cosine and linear decay are point-symmetric about the middle of
            // the decay: the rates k steps after its start and k steps before
            // its end add up to peak + floor.
            let last = s.total_steps.saturating_sub(1);
            if s.shape != ScheduleShape::Constant && last > s.warmup_steps {
                let k = k % (last - s.warmup_steps + 1);
                let sum = s.at(s.warmup_steps + k) + s.at(last - k);
                prop_assert!(
                    (sum - (s.peak + s.min_lr)).abs() <= 1e-12 * s.peak,
                    "k {}: {} vs {}", k, sum, s.peak + s.min_lr
                );
            }
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
