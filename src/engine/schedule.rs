//! Learning-rate schedules, evaluated as PyTorch's schedulers are, per epoch or per step.
//!
//! A schedule is a function of the unit `t` (0-based) it has reached out of `total` units, where
//! a unit is an epoch or an optimizer step ([`StepEvery`]): stepped per epoch, torch's
//! `scheduler.step()` is called once an epoch; per step, once a batch, over `epochs x steps per
//! epoch` units.
//!
//! With `w > 0` warm-up units the first `w` ramp linearly, `lr_t = base (t+1)/(w+1)` (torch
//! `LinearLR(start_factor = 1/(w+1), total_iters = w)`), then the main schedule runs over the
//! remaining `total - w` units as if it started at unit 0 (torch `SequentialLR` with milestone
//! `w`). One-cycle has its own warm-up phase and takes none.

use crate::engine::error::EngineError;

/// When the schedule advances.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StepEvery {
    /// Once an epoch (torch's `scheduler.step()` after each epoch).
    #[default]
    Epoch,
    /// Once an optimizer step (after each batch).
    Step,
}

impl StepEvery {
    pub fn is_epoch(&self) -> bool {
        *self == StepEvery::Epoch
    }
}

/// How one-cycle anneals (torch `anneal_strategy`).
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Anneal {
    #[default]
    Cos,
    Linear,
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
pub enum ScheduleConfig {
    /// Constant learning rate.
    None,
    /// `base (1 + cos(pi t / T)) / 2` with `T` the units after warm-up (torch
    /// `CosineAnnealingLR(T_max = T)`, eta_min 0).
    Cosine,
    /// `base gamma^k` with `k` the number of milestones `<= e` (epochs after warm-up; stepped per
    /// step, a milestone takes effect at the first step of its epoch).
    MultiStep { milestones: Vec<usize>, gamma: f64 },
    /// `base (1 + (end_factor - 1) min(t, T) / T)`: linear from the base rate to
    /// `base end_factor` over the units after warm-up (torch `LinearLR(start_factor = 1,
    /// end_factor, total_iters = T)`).
    Linear { end_factor: f64 },
    /// `base gamma^t` (torch `ExponentialLR(gamma)`).
    Exponential { gamma: f64 },
    /// torch `OneCycleLR(max_lr, total_steps = total, pct_start, anneal_strategy, div_factor,
    /// final_div_factor, three_phase = False)`: from `max_lr / div_factor` up to `max_lr` over
    /// the first `pct_start` of the units, then down to `max_lr / div_factor /
    /// final_div_factor`. The optimizer's own rate is not used. With `momentum: Some((base,
    /// max))` (torch `cycle_momentum`), SGD's momentum (AdamW's beta1) cycles the other way, from
    /// `max` down to `base` and back.
    OneCycle {
        max_lr: f64,
        pct_start: f64,
        div_factor: f64,
        final_div_factor: f64,
        anneal: Anneal,
        momentum: Option<(f64, f64)>,
    },
}

impl ScheduleConfig {
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::InvalidConfig(m));
        match self {
            ScheduleConfig::MultiStep { milestones, gamma } => {
                if !(gamma.is_finite() && *gamma > 0.0) {
                    return bad(format!("schedule multistep gamma: expected > 0, got {gamma}"));
                }
                if milestones.windows(2).any(|w| w[0] >= w[1]) {
                    return bad(format!(
                        "schedule multistep milestones: expected strictly increasing epochs, got {milestones:?}"
                    ));
                }
            }
            ScheduleConfig::Linear { end_factor } if !(0.0..=1.0).contains(end_factor) => {
                return bad(format!("schedule linear end_factor: expected in [0, 1], got {end_factor}"));
            }
            ScheduleConfig::Exponential { gamma } if !(gamma.is_finite() && *gamma > 0.0) => {
                return bad(format!("schedule exponential gamma: expected > 0, got {gamma}"));
            }
            ScheduleConfig::OneCycle {
                max_lr, pct_start, div_factor, final_div_factor, momentum, ..
            } => {
                if !(max_lr.is_finite() && *max_lr > 0.0) {
                    return bad(format!("schedule onecycle max_lr: expected > 0, got {max_lr}"));
                }
                if !(*pct_start > 0.0 && *pct_start < 1.0) {
                    return bad(format!("schedule onecycle pct_start: expected in (0, 1), got {pct_start}"));
                }
                for (k, v) in [("div_factor", div_factor), ("final_div_factor", final_div_factor)] {
                    if !(v.is_finite() && *v > 0.0) {
                        return bad(format!("schedule onecycle {k}: expected > 0, got {v}"));
                    }
                }
                if let Some((base, max)) = momentum
                    && !(0.0 <= *base && base <= max && *max < 1.0)
                {
                    return bad(format!(
                        "schedule onecycle momentum: expected 0 <= base <= max < 1, got {base}, {max}"
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether a linear warm-up may precede it (one-cycle has its own).
    pub fn takes_warmup(&self) -> bool {
        !matches!(self, ScheduleConfig::OneCycle { .. })
    }
}

/// The learning rate of unit `t` (0-based) of `total`, the first `warmup` of them warm-up, for
/// base rate `base`. `per_epoch` is how many units an epoch has (1 when stepped per epoch): the
/// multistep milestones are epochs.
pub fn lr_at(
    schedule: &ScheduleConfig,
    base: f64,
    t: usize,
    total: usize,
    warmup: usize,
    per_epoch: usize,
) -> f64 {
    if let ScheduleConfig::OneCycle { max_lr, pct_start, div_factor, final_div_factor, anneal, .. } = schedule
    {
        let initial = max_lr / div_factor;
        return one_cycle(t, total, *pct_start, *anneal, (initial, *max_lr, initial / final_div_factor));
    }
    if t < warmup {
        return base * (t + 1) as f64 / (warmup + 1) as f64;
    }
    let e = t - warmup;
    let n = total.saturating_sub(warmup).max(1);
    match schedule {
        ScheduleConfig::None => base,
        ScheduleConfig::Cosine => {
            let e = e.min(n) as f64;
            base * (1.0 + (std::f64::consts::PI * e / n as f64).cos()) / 2.0
        }
        ScheduleConfig::MultiStep { milestones, gamma } => {
            let epoch = e / per_epoch.max(1);
            let k = milestones.iter().filter(|&&m| m <= epoch).count();
            base * gamma.powi(k as i32)
        }
        ScheduleConfig::Linear { end_factor } => {
            base * (1.0 + (end_factor - 1.0) * e.min(n) as f64 / n as f64)
        }
        ScheduleConfig::Exponential { gamma } => base * gamma.powi(e.min(i32::MAX as usize) as i32),
        ScheduleConfig::OneCycle { .. } => unreachable!("handled above"),
    }
}

/// The learning rate of epoch `epoch` (0-based) when stepped per epoch.
pub fn lr_at_epoch(
    schedule: &ScheduleConfig,
    base: f64,
    epoch: usize,
    epochs: usize,
    warmup_epochs: usize,
) -> f64 {
    lr_at(schedule, base, epoch, epochs, warmup_epochs, 1)
}

/// One-cycle's momentum (SGD's momentum, AdamW's beta1) at unit `t`, or `None` when it does not
/// cycle it.
pub fn momentum_at(schedule: &ScheduleConfig, t: usize, total: usize) -> Option<f64> {
    match schedule {
        ScheduleConfig::OneCycle { pct_start, anneal, momentum: Some((base, max)), .. } => {
            Some(one_cycle(t, total, *pct_start, *anneal, (*max, *base, *max)))
        }
        _ => None,
    }
}

/// torch `OneCycleLR.get_lr` for two phases: `(start, peak, end)` values, phase one ending at
/// unit `pct_start total - 1` (a float, as torch computes it), phase two at `total - 1`.
fn one_cycle(
    t: usize,
    total: usize,
    pct_start: f64,
    anneal: Anneal,
    (start, peak, end): (f64, f64, f64),
) -> f64 {
    let f = |from: f64, to: f64, pct: f64| match anneal {
        Anneal::Cos => to + (from - to) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0),
        Anneal::Linear => (to - from) * pct + from,
    };
    let t = t as f64;
    let end1 = pct_start * total as f64 - 1.0;
    let end2 = total as f64 - 1.0;
    if t <= end1 {
        f(start, peak, t / end1)
    } else if end1 <= 0.0 && t == 0.0 && end2 <= 0.0 {
        // A one-unit cycle: torch divides by zero here; the peak is the only sensible value.
        peak
    } else {
        f(peak, end, (t - end1) / (end2 - end1))
    }
}
