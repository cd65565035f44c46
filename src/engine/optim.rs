//! Optimizers (SGD with momentum/Nesterov/weight decay, AdamW) with PyTorch's exact update
//! rules, per-parameter-group learning-rate multipliers, frozen groups, global-norm gradient
//! clipping and per-epoch schedules.
//!
//! [`Trainer::step`] works on any burn [`Module`]: a bare [`crate::engine::Model`], or a
//! struct deriving `Module` that holds a student together with projectors or connectors.
//! Parameters are addressed by their path: field names joined by `.`, vector indices as
//! numbers, enum variant names left out (so a ResNet's head is `fc`, and inside
//! `struct Kd { student: Model, proj: Projector }` it is `student.fc`).

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};

use crate::engine::error::EngineError;
use crate::engine::schedule::{ScheduleConfig, StepEvery, lr_at, momentum_at};

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
pub enum OptimizerConfig {
    /// torch.optim.SGD (dampening 0).
    Sgd { lr: f64, momentum: f64, nesterov: bool, weight_decay: f64 },
    /// torch.optim.AdamW (decoupled weight decay, bias-corrected moments).
    AdamW { lr: f64, betas: (f64, f64), eps: f64, weight_decay: f64 },
}

impl OptimizerConfig {
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::AdamW { lr, .. } => *lr,
        }
    }
}

/// A rule for the parameters under `prefix` (a path prefix ending at a component boundary,
/// `""` for all). Later rules win over earlier ones.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
pub struct ParamRule {
    pub prefix: String,
    /// Multiplies the scheduled learning rate (e.g. 10 for a fine-tuned head).
    pub lr_mult: f64,
    /// Frozen parameters are never updated (linear probing freezes the backbone).
    pub frozen: bool,
}

impl ParamRule {
    pub fn lr_mult(prefix: impl Into<String>, lr_mult: f64) -> Self {
        ParamRule { prefix: prefix.into(), lr_mult, frozen: false }
    }
    pub fn frozen(prefix: impl Into<String>) -> Self {
        ParamRule { prefix: prefix.into(), lr_mult: 0.0, frozen: true }
    }
    fn matches(&self, path: &str) -> bool {
        self.prefix.is_empty()
            || path == self.prefix
            || (path.starts_with(&self.prefix) && path.as_bytes().get(self.prefix.len()) == Some(&b'.'))
    }
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
pub struct TrainerConfig {
    pub optimizer: OptimizerConfig,
    pub schedule: ScheduleConfig,
    /// When the schedule (and its warm-up) advances. Left out of the serialised form at its
    /// default, so that keys made before it existed still mean the same.
    #[serde(default, skip_serializing_if = "StepEvery::is_epoch")]
    pub step_every: StepEvery,
    pub warmup_epochs: usize,
    /// Total epochs (the cosine period counts the epochs after warm-up).
    pub epochs: usize,
    /// Clip the global L2 norm of all trainable gradients (torch `clip_grad_norm_`).
    pub grad_clip: Option<f64>,
    pub rules: Vec<ParamRule>,
}

impl TrainerConfig {
    pub fn new(optimizer: OptimizerConfig) -> Self {
        TrainerConfig {
            optimizer,
            schedule: ScheduleConfig::None,
            step_every: StepEvery::Epoch,
            warmup_epochs: 0,
            epochs: 1,
            grad_clip: None,
            rules: Vec::new(),
        }
    }

    fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::InvalidConfig(m));
        match &self.optimizer {
            OptimizerConfig::Sgd { lr, momentum, weight_decay, nesterov } => {
                if !(*lr >= 0.0 && lr.is_finite()) {
                    return bad(format!("optimizer sgd lr: expected >= 0, got {lr}"));
                }
                if !(0.0..1.0).contains(momentum) {
                    return bad(format!("optimizer sgd momentum: expected in [0, 1), got {momentum}"));
                }
                if *nesterov && *momentum == 0.0 {
                    return bad("optimizer sgd nesterov: needs momentum > 0".into());
                }
                if !(*weight_decay >= 0.0) {
                    return bad(format!("optimizer sgd weight_decay: expected >= 0, got {weight_decay}"));
                }
            }
            OptimizerConfig::AdamW { lr, betas, eps, weight_decay } => {
                if !(*lr >= 0.0 && lr.is_finite()) {
                    return bad(format!("optimizer adamw lr: expected >= 0, got {lr}"));
                }
                if !((0.0..1.0).contains(&betas.0) && (0.0..1.0).contains(&betas.1)) {
                    return bad(format!("optimizer adamw betas: expected each in [0, 1), got {betas:?}"));
                }
                if !(*eps > 0.0) {
                    return bad(format!("optimizer adamw eps: expected > 0, got {eps}"));
                }
                if !(*weight_decay >= 0.0) {
                    return bad(format!("optimizer adamw weight_decay: expected >= 0, got {weight_decay}"));
                }
            }
        }
        if let Some(c) = self.grad_clip
            && !(c > 0.0)
        {
            return bad(format!("grad_clip: expected > 0, got {c}"));
        }
        if self.warmup_epochs > 0 && self.warmup_epochs >= self.epochs {
            return bad(format!(
                "warmup_epochs: expected fewer than epochs ({}), got {}",
                self.epochs, self.warmup_epochs
            ));
        }
        if self.warmup_epochs > 0 && !self.schedule.takes_warmup() {
            return bad(
                "warmup_epochs: onecycle has its own warm-up phase (pct_start); leave warmup_epochs at 0"
                    .into(),
            );
        }
        for r in &self.rules {
            if !r.frozen && !(r.lr_mult >= 0.0 && r.lr_mult.is_finite()) {
                return bad(format!("lr multiplier for {:?}: expected >= 0, got {}", r.prefix, r.lr_mult));
            }
        }
        self.schedule.validate()
    }
}

/// Per-parameter optimizer state, flattened to rank 1 so states of any rank share one map.
#[derive(Clone)]
enum State {
    Sgd { momentum: Tensor<1> },
    Adam { m: Tensor<1>, v: Tensor<1>, step: i32 },
}

/// Optimizer + schedule + parameter rules, with its state. One `step` per batch; call
/// [`Trainer::set_position`] before each step to advance the schedule.
pub struct Trainer {
    config: TrainerConfig,
    states: HashMap<ParamId, State>,
    lr: f64,
    /// One-cycle's momentum (SGD momentum / AdamW beta1) for the next step, when it cycles it.
    momentum: Option<f64>,
    steps: u64,
    /// Gradients summed by [`Trainer::accumulate`] and not yet stepped with.
    pending: Option<GradientsParams>,
}

/// Statistics of one step, for logging.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepInfo {
    /// Base learning rate used (before group multipliers).
    pub lr: f64,
    /// Global gradient norm before clipping (only computed when clipping is on).
    pub grad_norm: Option<f64>,
    /// Number of parameter tensors updated.
    pub updated: usize,
}

impl Trainer {
    pub fn new(config: TrainerConfig) -> Result<Self, EngineError> {
        config.validate()?;
        let mut t =
            Trainer { config, states: HashMap::new(), lr: 0.0, momentum: None, steps: 0, pending: None };
        t.set_position(0, 0, 1);
        Ok(t)
    }

    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    /// Set the schedule to step `step` (0-based) of epoch `epoch`, of `steps_per_epoch`: per
    /// epoch it reads the epoch only, per step the step of the whole run.
    pub fn set_position(&mut self, epoch: usize, step: usize, steps_per_epoch: usize) {
        let c = &self.config;
        let (t, per) = match c.step_every {
            StepEvery::Epoch => (epoch, 1),
            StepEvery::Step => (epoch * steps_per_epoch.max(1) + step, steps_per_epoch.max(1)),
        };
        let (total, warmup) = (c.epochs * per, c.warmup_epochs * per);
        self.lr = lr_at(&c.schedule, c.optimizer.lr(), t, total, warmup, per);
        self.momentum = momentum_at(&c.schedule, t, total);
    }

    /// The momentum (SGD) or beta1 (AdamW) of the next step.
    pub fn momentum(&self) -> f64 {
        self.momentum.unwrap_or(match self.config.optimizer {
            OptimizerConfig::Sgd { momentum, .. } => momentum,
            OptimizerConfig::AdamW { betas, .. } => betas.0,
        })
    }

    /// The current base learning rate.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The optimizer's per-parameter state, by the paths of `module`'s parameters (for a
    /// checkpoint: [`crate::engine::state`]): `<path>#momentum` for SGD, `<path>#m`, `#v` and
    /// `#step` for AdamW. With [`Trainer::steps`] it is everything [`Trainer::restore`] needs.
    pub fn state_of<M: Module>(&self, module: &M) -> crate::engine::state::Tensors {
        let flat = |t: &Tensor<1>| {
            let v = t.clone().into_data().convert::<f32>().try_to_vec::<f32>().expect("float state");
            (vec![v.len()], v)
        };
        let mut out = crate::engine::state::Tensors::default();
        for (path, id) in param_paths(module) {
            match self.states.get(&id) {
                Some(State::Sgd { momentum }) => {
                    out.0.insert(format!("{path}#momentum"), flat(momentum));
                }
                Some(State::Adam { m, v, step }) => {
                    out.0.insert(format!("{path}#m"), flat(m));
                    out.0.insert(format!("{path}#v"), flat(v));
                    // Exact in f32 up to 2^24 steps.
                    out.0.insert(format!("{path}#step"), (vec![1], vec![*step as f32]));
                }
                None => {}
            }
        }
        out
    }

    /// Re-attaches a state [`Trainer::state_of`] took to `module`'s parameters (by path; the
    /// module may be a rebuilt one with new parameter ids) and sets the step count. Every entry
    /// must belong to a parameter of the module, of its size, and be of this optimizer's kind.
    pub fn restore<M: Module>(
        &mut self,
        module: &M,
        state: &crate::engine::state::Tensors,
        steps: u64,
        source: &std::path::Path,
    ) -> Result<(), EngineError> {
        let bad = |reason: String| EngineError::Checkpoint { path: source.into(), reason };
        let ids: HashMap<String, ParamId> = param_paths(module).into_iter().collect();
        let sizes = param_sizes(module);
        let device = module_device(module);
        let adam = matches!(self.config.optimizer, OptimizerConfig::AdamW { .. });
        let mut states = HashMap::new();
        let mut used = 0;
        for (path, id) in &ids {
            let get = |suffix: &str| state.0.get(&format!("{path}{suffix}"));
            let tensor = |(shape, v): &(Vec<usize>, Vec<f32>)| -> Result<Tensor<1>, EngineError> {
                if v.len() != sizes[path] {
                    return Err(bad(format!(
                        "optimizer state of {path:?} has {} values, the parameter {}",
                        v.len(),
                        sizes[path]
                    )));
                }
                let _ = shape;
                Ok(Tensor::from_data(
                    TensorData::new(v.clone(), [v.len()]),
                    device.as_ref().expect("a module with parameters has a device"),
                ))
            };
            let entry = match (adam, get("#momentum"), get("#m"), get("#v"), get("#step")) {
                (false, Some(b), None, None, None) => Some(State::Sgd { momentum: tensor(b)? }),
                (true, None, Some(m), Some(v), Some(st)) => {
                    Some(State::Adam { m: tensor(m)?, v: tensor(v)?, step: st.1[0] as i32 })
                }
                (_, None, None, None, None) => None,
                _ => {
                    return Err(bad(format!(
                        "the optimizer state of {path:?} is not this optimizer's ({})",
                        if adam { "adamw" } else { "sgd" }
                    )));
                }
            };
            if let Some(e) = entry {
                used += match e {
                    State::Sgd { .. } => 1,
                    State::Adam { .. } => 3,
                };
                states.insert(*id, e);
            }
        }
        if used != state.0.len() {
            let extra = state
                .0
                .keys()
                .find(|k| !ids.contains_key(k.split('#').next().unwrap_or("")))
                .cloned()
                .unwrap_or_default();
            return Err(bad(format!("optimizer state {extra:?} belongs to no parameter of the module")));
        }
        self.states = states;
        self.steps = steps;
        self.pending = None;
        Ok(())
    }

    /// Adds the gradients of `loss x weight` to the pending group ([`Trainer::step_accumulated`]
    /// steps with their sum): gradient accumulation, a batch's `weight` being its share of the
    /// group's images.
    pub fn accumulate<M: Module>(&mut self, module: &M, loss: Tensor<1>, weight: f64) {
        let loss = if weight == 1.0 { loss } else { loss.mul_scalar(weight) };
        let grads = GradientsParams::from_grads(loss.backward(), module);
        match self.pending.take() {
            None => self.pending = Some(grads),
            Some(mut sum) => {
                module.visit(&mut AddGrads { sum: &mut sum, add: grads });
                self.pending = Some(sum);
            }
        }
    }

    /// Updates `module` with the summed gradients of the pending group, and empties it.
    pub fn step_accumulated<M: Module>(&mut self, module: M) -> (M, StepInfo) {
        let grads = self.pending.take().unwrap_or_default();
        self.step_with_grads(module, grads)
    }

    /// Backpropagate `loss` (a scalar on an autodiff device) and update `module`.
    pub fn step<M: Module>(&mut self, module: M, loss: Tensor<1>) -> (M, StepInfo) {
        let grads = GradientsParams::from_grads(loss.backward(), &module);
        self.step_with_grads(module, grads)
    }

    /// Update `module` from gradients already extracted.
    pub fn step_with_grads<M: Module>(&mut self, module: M, mut grads: GradientsParams) -> (M, StepInfo) {
        let mut grad_norm = None;
        let mut scale = 1.0;
        if let Some(max_norm) = self.config.grad_clip {
            let mut v = NormVisitor {
                path: PathTracker::default(),
                rules: &self.config.rules,
                grads: &grads,
                sq: None,
            };
            module.visit(&mut v);
            let norm = v.sq.map(|t| t.into_scalar::<f64>().sqrt()).unwrap_or(0.0);
            // torch clip_grad_norm_: coef = max_norm / (norm + 1e-6), clamped to 1.
            scale = (max_norm / (norm + 1e-6)).min(1.0);
            grad_norm = Some(norm);
        }
        // One-cycle's momentum replaces the configured one for this step, as torch writes it
        // into the param group before each step.
        let mut optimizer = self.config.optimizer.clone();
        if let Some(m) = self.momentum {
            match &mut optimizer {
                OptimizerConfig::Sgd { momentum, .. } => *momentum = m,
                OptimizerConfig::AdamW { betas, .. } => betas.0 = m,
            }
        }
        let mut mapper = StepMapper {
            path: PathTracker::default(),
            trainer_rules: &self.config.rules,
            optimizer: &optimizer,
            states: &mut self.states,
            grads: &mut grads,
            lr: self.lr,
            scale,
            updated: 0,
        };
        let module = module.map(&mut mapper);
        let updated = mapper.updated;
        self.steps += 1;
        (module, StepInfo { lr: self.lr, grad_norm, updated })
    }
}

/// Paths as this crate names parameters: enum variant names are skipped.
#[derive(Default)]
pub(crate) struct PathTracker {
    stack: Vec<(String, bool)>,
}

impl PathTracker {
    pub(crate) fn enter(&mut self, name: &str, container_type: &str) {
        self.stack.push((name.to_string(), container_type.starts_with("Enum:")));
    }
    pub(crate) fn exit(&mut self) {
        self.stack.pop();
    }
    pub(crate) fn components(&self) -> Vec<&str> {
        self.stack.iter().filter(|(_, e)| !e).map(|(n, _)| n.as_str()).collect()
    }
    pub(crate) fn path(&self) -> String {
        self.components().join(".")
    }
}

/// A float tensor of a module (a parameter or a running statistic), as [`float_params`] lists it.
pub(crate) struct FloatParam {
    /// Field names and indices joined by `.`, enum variants left out.
    pub path: String,
    /// The path's components (for torchvision names).
    pub components: Vec<String>,
    pub id: ParamId,
    pub shape: Vec<usize>,
    /// The values as f32, when asked for.
    pub values: Option<Vec<f32>>,
}

/// Every float tensor of `module`, in visiting order (with their values if `with_values`).
pub(crate) fn float_params<M: Module>(module: &M, with_values: bool) -> Vec<FloatParam> {
    struct V(PathTracker, bool, Vec<FloatParam>);
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.0.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.0.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            let shape = t.dims().to_vec();
            let values =
                self.1.then(|| t.into_data().convert::<f32>().try_to_vec::<f32>().expect("float data"));
            let components = self.0.components().into_iter().map(String::from).collect();
            self.2.push(FloatParam { path: self.0.path(), components, id: param.id, shape, values });
        }
    }
    let mut v = V(PathTracker::default(), with_values, Vec::new());
    module.visit(&mut v);
    v.2
}

/// `(path, id)` of every float parameter of `module`, in visiting order.
fn param_paths<M: Module>(module: &M) -> Vec<(String, ParamId)> {
    float_params(module, false).into_iter().map(|p| (p.path, p.id)).collect()
}

fn param_sizes<M: Module>(module: &M) -> HashMap<String, usize> {
    float_params(module, false).into_iter().map(|p| (p.path, p.shape.iter().product())).collect()
}

/// The device of a module's first parameter (its optimizer state lives on the inner device).
fn module_device<M: Module>(module: &M) -> Option<burn::tensor::Device> {
    struct V(Option<burn::tensor::Device>);
    impl ModuleVisitor for V {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.0.is_none() {
                self.0 = Some(param.val().inner().device());
            }
        }
    }
    let mut v = V(None);
    module.visit(&mut v);
    v.0
}

fn rule_for<'a>(rules: &'a [ParamRule], path: &str) -> Option<&'a ParamRule> {
    rules.iter().rev().find(|r| r.matches(path))
}

struct NormVisitor<'a> {
    path: PathTracker,
    rules: &'a [ParamRule],
    grads: &'a GradientsParams,
    sq: Option<Tensor<1>>,
}

impl ModuleVisitor for NormVisitor<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if rule_for(self.rules, &self.path.path()).is_some_and(|r| r.frozen) {
            return;
        }
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum();
            self.sq = Some(match self.sq.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

/// Adds `add`'s gradient of each parameter to `sum`'s.
struct AddGrads<'a> {
    sum: &'a mut GradientsParams,
    add: GradientsParams,
}

impl ModuleVisitor for AddGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.add.remove::<D>(param.id) {
            let total = match self.sum.remove::<D>(param.id) {
                Some(s) => s + g,
                None => g,
            };
            self.sum.register::<D>(param.id, total);
        }
    }
}

struct StepMapper<'a> {
    path: PathTracker,
    trainer_rules: &'a [ParamRule],
    optimizer: &'a OptimizerConfig,
    states: &'a mut HashMap<ParamId, State>,
    grads: &'a mut GradientsParams,
    lr: f64,
    scale: f64,
    updated: usize,
}

impl ModuleMapper for StepMapper<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(grad) = self.grads.remove::<D>(param.id) else {
            return param;
        };
        let rule = rule_for(self.trainer_rules, &self.path.path());
        if rule.is_some_and(|r| r.frozen) {
            return param;
        }
        let lr = self.lr * rule.map_or(1.0, |r| r.lr_mult);
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let shape = tensor.dims();
        let n: usize = shape.iter().product();
        let p = tensor.inner().reshape([n]);
        let mut g = grad.inner().reshape([n]);
        if self.scale < 1.0 {
            g = g.mul_scalar(self.scale);
        }
        let state = self.states.remove(&id);
        let (p, state) = update(self.optimizer, lr, p, g, state);
        self.states.insert(id, state);
        self.updated += 1;
        let mut t = Tensor::from_inner(p.reshape(shape));
        if require_grad {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

/// One PyTorch update of a flattened parameter.
fn update(
    optimizer: &OptimizerConfig,
    lr: f64,
    p: Tensor<1>,
    g: Tensor<1>,
    state: Option<State>,
) -> (Tensor<1>, State) {
    match optimizer {
        OptimizerConfig::Sgd { momentum, nesterov, weight_decay, .. } => {
            let mut g = g;
            if *weight_decay != 0.0 {
                g = g + p.clone().mul_scalar(*weight_decay);
            }
            let buf = match state {
                Some(State::Sgd { momentum: buf }) if *momentum != 0.0 => {
                    buf.mul_scalar(*momentum) + g.clone()
                }
                _ => g.clone(),
            };
            let d = if *nesterov {
                g + buf.clone().mul_scalar(*momentum)
            } else if *momentum != 0.0 {
                buf.clone()
            } else {
                g
            };
            (p - d.mul_scalar(lr), State::Sgd { momentum: buf })
        }
        OptimizerConfig::AdamW { betas: (b1, b2), eps, weight_decay, .. } => {
            let (m, v, step) = match state {
                Some(State::Adam { m, v, step }) => (m, v, step + 1),
                _ => (g.zeros_like(), g.zeros_like(), 1),
            };
            let p = if *weight_decay != 0.0 { p.mul_scalar(1.0 - lr * weight_decay) } else { p };
            let m = m.mul_scalar(*b1) + g.clone().mul_scalar(1.0 - b1);
            let v = v.mul_scalar(*b2) + g.square().mul_scalar(1.0 - b2);
            let bc1 = 1.0 - b1.powi(step);
            let bc2 = 1.0 - b2.powi(step);
            let denom = v.clone().sqrt().div_scalar(bc2.sqrt()).add_scalar(*eps);
            let p = p - m.clone().div(denom).mul_scalar(lr / bc1);
            (p, State::Adam { m, v, step })
        }
    }
}
