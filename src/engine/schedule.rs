//! Learning-rate schedules, evaluated per epoch as PyTorch's schedulers are when stepped once
//! per epoch.
//!
//! With `warmup_epochs = w > 0` the first `w` epochs ramp linearly, `lr_e = base (e+1)/(w+1)`
//! (torch `LinearLR(start_factor = 1/(w+1), total_iters = w)`), then the main schedule runs
//! over the remaining `epochs - w` epochs as if it started at epoch 0 (torch `SequentialLR`
//! with milestone `w`).

use crate::engine::error::EngineError;

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
pub enum ScheduleConfig {
    /// Constant learning rate.
    None,
    /// `base (1 + cos(pi e / T)) / 2` with `T` the epochs after warm-up (eta_min 0).
    Cosine,
    /// `base gamma^k` with `k` the number of milestones `<= e` (epochs after warm-up).
    MultiStep { milestones: Vec<usize>, gamma: f64 },
}

impl ScheduleConfig {
    pub fn validate(&self) -> Result<(), EngineError> {
        if let ScheduleConfig::MultiStep { milestones, gamma } = self {
            if !(gamma.is_finite() && *gamma > 0.0) {
                return Err(EngineError::InvalidConfig(format!(
                    "schedule multistep gamma: expected > 0, got {gamma}"
                )));
            }
            if milestones.windows(2).any(|w| w[0] >= w[1]) {
                return Err(EngineError::InvalidConfig(format!(
                    "schedule multistep milestones: expected strictly increasing epochs, got {milestones:?}"
                )));
            }
        }
        Ok(())
    }
}

/// The learning rate of epoch `epoch` (0-based) for base rate `base`.
pub fn lr_at_epoch(
    schedule: &ScheduleConfig,
    base: f64,
    epoch: usize,
    epochs: usize,
    warmup_epochs: usize,
) -> f64 {
    if epoch < warmup_epochs {
        return base * (epoch + 1) as f64 / (warmup_epochs + 1) as f64;
    }
    let e = epoch - warmup_epochs;
    let t = epochs.saturating_sub(warmup_epochs).max(1);
    match schedule {
        ScheduleConfig::None => base,
        ScheduleConfig::Cosine => {
            let e = e.min(t) as f64;
            base * (1.0 + (std::f64::consts::PI * e / t as f64).cos()) / 2.0
        }
        ScheduleConfig::MultiStep { milestones, gamma } => {
            let k = milestones.iter().filter(|&&m| m <= e).count();
            base * gamma.powi(k as i32)
        }
    }
}
