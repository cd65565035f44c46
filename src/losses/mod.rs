//! Distillation losses: the terms a `distill` node combines, `total = sum(weight * term)`.
//!
//! Losses of Farhat & Chen 2024 (arXiv 2404.03263) as their code (github sfarhat/dapt, built on
//! RepDistiller) computes them: cross-entropy, Hinton KD, alignment/uniformity on projected
//! embeddings, CRD, SRRL, and feature regression (FitNet MSE, cosine distance). Formulas,
//! parameters and defaults for users are in docs/losses.md.
//!
//! Architecture invariant: this module does no I/O and no optimisation. It turns a batch of
//! student/teacher outputs into named scalar terms and owns the small trainable heads those
//! terms need (projectors, connectors, regressors) as one burn [`Module`], which the engine
//! trains with the student. Bad parameters are [`LossConfigError`] data, checked before any
//! tensor exists; a batch the losses cannot use is a [`LossError`]; nothing here panics on
//! user input.

mod config;
mod crd;
mod functional;
mod heads;

#[cfg(test)]
mod tests;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor};

use config::bad;
pub use config::{
    AlignUniformConfig, CeConfig, Check, CrdConfig, FeatureConfig, KdConfig, LOSS_NAMES, LossConfig,
    LossConfigError, LossDims, MAX_DIM, MAX_NCE_K, PRESETS, SrrlConfig, WeightedLoss, preset,
};
pub use crd::{Crd, CrdOutput, NegativeSampler, SharedSampler, UniformNegatives};
pub use functional::{
    align, contrast_loss, cosine_distance, cross_entropy, kd, l2_normalize, mse, uniformity,
};
pub use heads::{BatchNormNoAffine, ConnectorKind, Layer, Projector, ProjectorKind, Sequential, connector};

/// A loss term that is NaN or infinite: the node stops with this error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("loss term {term} is {value} at step {step}: lower the learning rate or check the inputs")]
pub struct NonFiniteLoss {
    pub term: String,
    pub step: u64,
    pub value: f64,
}

/// Why a batch could not be turned into loss terms.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LossError {
    #[error(transparent)]
    Config(#[from] LossConfigError),
    #[error("losses.{loss}: {tensor} has shape {got:?}, expected {expected}")]
    Shape { loss: &'static str, tensor: &'static str, got: Vec<usize>, expected: String },
    #[error("losses.{loss}: {what}")]
    Batch { loss: &'static str, what: String },
    #[error(transparent)]
    NonFinite(#[from] NonFiniteLoss),
}

/// One batch for the losses.
pub struct DistillInputs {
    /// `[batch, student_dim]` pooled penultimate features of the student.
    pub student_features: Tensor<2>,
    /// `[batch, num_classes]`.
    pub student_logits: Tensor<2>,
    /// `[batch, teacher_dim]`, computed without gradient by the caller.
    pub teacher_features: Tensor<2>,
    /// `[batch, num_classes]`.
    pub teacher_logits: Tensor<2>,
    /// `[batch]` class indices.
    pub labels: Tensor<1, Int>,
    /// Dataset index of each sample, distinct within the batch (CRD's memory rows).
    pub indices: Option<Vec<usize>>,
    /// CRD rows `[positive, negatives...]` to use instead of the sampler (fixtures).
    pub contrast_indices: Option<Vec<Vec<usize>>>,
}

/// A named scalar term and its weight in the total.
#[derive(Debug, Clone)]
pub struct LossTerm {
    /// e.g. `ce`, `kd`, `align`, `uniform`, `crd`, `srrl.embed`, `srrl.logits`.
    pub name: String,
    /// Its factor in the total (the loss weight times any factor inside the loss).
    pub weight: f64,
    /// Shape `[1]`.
    pub value: Tensor<1>,
}

/// The terms of one batch and their weighted sum (the tensor to call `backward` on).
#[derive(Debug, Clone)]
pub struct LossTerms {
    pub terms: Vec<LossTerm>,
    /// Shape `[1]`.
    pub total: Tensor<1>,
}

impl LossTerms {
    /// Every term and `total` as host numbers, in order, for logging.
    pub fn values(&self) -> Vec<(String, f64)> {
        self.terms
            .iter()
            .map(|t| (t.name.clone(), scalar(&t.value)))
            .chain(std::iter::once(("total".to_string(), scalar(&self.total))))
            .collect()
    }

    /// The [`values`](Self::values), or the first non-finite one as an error naming the term
    /// and the step. Call it before `backward` and before writing anything, so a diverged step
    /// leaves no half-written artifact.
    pub fn check_finite(&self, step: u64) -> Result<Vec<(String, f64)>, NonFiniteLoss> {
        let values = self.values();
        check_finite(&values, step)?;
        Ok(values)
    }
}

/// The first non-finite `(term, value)` as a [`NonFiniteLoss`] at `step`.
pub fn check_finite(values: &[(String, f64)], step: u64) -> Result<(), NonFiniteLoss> {
    match values.iter().find(|(_, v)| !v.is_finite()) {
        Some((term, value)) => Err(NonFiniteLoss { term: term.clone(), step, value: *value }),
        None => Ok(()),
    }
}

fn scalar(t: &Tensor<1>) -> f64 {
    t.to_data().iter::<f64>().next().unwrap_or(f64::NAN)
}

/// A loss with the heads it trains.
#[derive(Module, Debug)]
pub enum LossHead {
    Ce(CeHead),
    Kd(KdHead),
    AlignUniform(AlignUniformHead),
    Crd(Crd),
    Srrl(SrrlHead),
    Feature(FeatureHead),
}

#[derive(Module, Debug)]
pub struct CeHead {
    pub label_smoothing: f64,
}

#[derive(Module, Debug)]
pub struct KdHead {
    pub temperature: f64,
}

/// Projectors of both sides; both are trained (the paper trains the teacher's too).
#[derive(Module, Debug)]
pub struct AlignUniformHead {
    pub proj_s: Projector,
    pub proj_t: Projector,
    pub alpha: f64,
    pub t: f64,
    pub align_weight: f64,
    pub uniform_weight: f64,
}

/// The connector (trained) and the teacher's classifier (frozen). The loss's weight weighs
/// `srrl.logits`; `embed_weight` weighs `srrl.embed`.
#[derive(Module, Debug)]
pub struct SrrlHead {
    pub connector: Sequential,
    pub teacher_classifier: Linear,
    pub embed_weight: f64,
}

#[derive(Module, Debug)]
pub struct FeatureHead {
    pub regressor: Option<Linear>,
    /// Cosine distance when true, MSE (FitNet) when false.
    pub cosine: bool,
}

/// One weighted loss with its heads.
#[derive(Module, Debug)]
pub struct LossEntry {
    pub weight: f64,
    pub head: LossHead,
}

/// All losses of a distill node and their trainable heads.
#[derive(Module, Debug)]
pub struct DistillLosses {
    pub entries: Vec<LossEntry>,
    pub dims: [usize; 4],
}

/// `2 x d_in x d_out`: a linear layer's multiply-adds per row.
fn linear_flops(l: &Linear) -> u64 {
    let [d_in, d_out] = l.weight.val().dims();
    2 * d_in as u64 * d_out as u64
}

fn seq_flops(net: &Sequential) -> u64 {
    net.layers.iter().map(|l| if let Layer::Linear(lin) = l { linear_flops(lin) } else { 0 }).sum()
}

fn out_dim(net: &Sequential) -> usize {
    net.layers
        .iter()
        .rev()
        .find_map(|l| match l {
            Layer::Linear(lin) => Some(lin.weight.val().dims()[1]),
            _ => None,
        })
        .unwrap_or(0)
}

impl DistillLosses {
    /// Each CRD head's negative-sampler position, in loss order (for a checkpoint); `None` when
    /// one of them cannot say (a test's sampler).
    pub fn sampler_states(&self) -> Option<Vec<u64>> {
        let mut out = Vec::new();
        for e in &self.entries {
            if let LossHead::Crd(c) = &e.head {
                out.push(c.sampler.0.lock().unwrap_or_else(|p| p.into_inner()).state()?);
            }
        }
        Some(out)
    }

    /// Continues each CRD head's sampler from `states` ([`DistillLosses::sampler_states`]);
    /// false (nothing changed) when their number is not the heads'.
    pub fn set_sampler_states(&self, states: &[u64]) -> bool {
        let heads: Vec<&Crd> = self
            .entries
            .iter()
            .filter_map(|e| if let LossHead::Crd(c) = &e.head { Some(c) } else { None })
            .collect();
        if heads.len() != states.len() {
            return false;
        }
        for (c, s) in heads.iter().zip(states) {
            c.sampler.0.lock().unwrap_or_else(|p| p.into_inner()).set_state(*s);
        }
        true
    }

    /// Forward FLOPs per training image of the losses beyond the two models: every linear layer
    /// of the heads (projectors, connectors, regressors, SRRL's pass through the teacher's
    /// classifier), CRD's products with `nce_k + 1` memory-bank rows in both directions, and
    /// align/uniform's pairwise distances within a batch of `batch` images (both sides).
    /// Element-wise work (normalisation, softmax, the bank update) is left out, as it is for
    /// the models.
    pub fn forward_flops_per_image(&self, batch: usize) -> u64 {
        let b = batch as u64;
        self.entries
            .iter()
            .map(|e| match &e.head {
                LossHead::Ce(_) | LossHead::Kd(_) => 0,
                LossHead::AlignUniform(a) => {
                    let d = out_dim(&a.proj_s.net) as u64;
                    seq_flops(&a.proj_s.net) + seq_flops(&a.proj_t.net) + 2 * 2 * b * d
                }
                LossHead::Crd(c) => {
                    let d = out_dim(&c.embed_s.net) as u64;
                    seq_flops(&c.embed_s.net) + seq_flops(&c.embed_t.net) + 2 * 2 * (c.nce_k as u64 + 1) * d
                }
                LossHead::Srrl(h) => seq_flops(&h.connector) + linear_flops(&h.teacher_classifier),
                LossHead::Feature(f) => f.regressor.as_ref().map_or(0, linear_flops),
            })
            .sum()
    }

    /// Validates every loss, then builds the heads on `device`.
    ///
    /// `teacher_classifier` is the teacher's final `Linear` (`[teacher_dim, num_classes]`),
    /// needed by srrl; it is stored frozen.
    pub fn new(
        losses: &[WeightedLoss],
        dims: LossDims,
        teacher_classifier: Option<Linear>,
        device: &Device,
    ) -> Result<Self, LossConfigError> {
        let mut seen: Vec<&'static str> = Vec::new();
        for l in losses {
            let name = l.config.name();
            if !(l.weight.is_finite() && l.weight >= 0.0) {
                return Err(bad(name, "weight", "a finite number >= 0", l.weight));
            }
            if seen.contains(&name) {
                return Err(bad(name, "name", "each loss at most once", "a second entry"));
            }
            seen.push(name);
            l.config.validate(&dims)?;
        }
        if let Some(fc) = &teacher_classifier {
            let [d_in, d_out] = fc.weight.dims();
            if d_in != dims.teacher_dim || d_out != dims.num_classes {
                return Err(bad(
                    "srrl",
                    "teacher_classifier",
                    &format!(
                        "a [{}, {}] weight (teacher_dim, num_classes)",
                        dims.teacher_dim, dims.num_classes
                    ),
                    format!("[{d_in}, {d_out}]"),
                ));
            }
        }
        let LossDims { student_dim: s, teacher_dim: t, .. } = dims;
        let mut entries = Vec::with_capacity(losses.len());
        for l in losses {
            let head = match &l.config {
                LossConfig::Ce(c) => LossHead::Ce(CeHead { label_smoothing: c.label_smoothing }),
                LossConfig::Kd(c) => LossHead::Kd(KdHead { temperature: c.temperature }),
                LossConfig::AlignUniform(c) => LossHead::AlignUniform(AlignUniformHead {
                    proj_s: Projector::new(c.projector, s, c.dim, device),
                    proj_t: Projector::new(c.projector, t, c.dim, device),
                    alpha: c.alpha,
                    t: c.t,
                    align_weight: c.align_weight,
                    uniform_weight: c.uniform_weight,
                }),
                LossConfig::Crd(c) => LossHead::Crd(Crd::new(
                    c.projector,
                    s,
                    t,
                    c.feat_dim,
                    c.nce_k,
                    c.nce_t,
                    c.momentum,
                    dims.n_data,
                    c.seed.unwrap_or(0),
                    device,
                )),
                LossConfig::Srrl(c) => {
                    let fc = match &teacher_classifier {
                        Some(fc) => fc.clone().no_grad(),
                        None => {
                            return Err(bad(
                                "srrl",
                                "teacher_classifier",
                                "the teacher's final linear layer",
                                "none",
                            ));
                        }
                    };
                    LossHead::Srrl(SrrlHead {
                        connector: connector(c.connector, s, t, device),
                        teacher_classifier: fc,
                        embed_weight: c.embed_weight,
                    })
                }
                LossConfig::FitNet(c) | LossConfig::Cosine(c) => LossHead::Feature(FeatureHead {
                    regressor: c.regressor.then(|| LinearConfig::new(s, t).init(device)),
                    cosine: matches!(l.config, LossConfig::Cosine(_)),
                }),
            };
            entries.push(LossEntry { weight: l.weight, head });
        }
        Ok(Self { entries, dims: [dims.student_dim, dims.teacher_dim, dims.num_classes, dims.n_data] })
    }

    /// Replaces CRD's negative sampler (no-op without crd).
    pub fn with_crd_sampler(mut self, sampler: impl NegativeSampler + 'static) -> Self {
        let shared = SharedSampler::new(sampler);
        for e in &mut self.entries {
            if let LossHead::Crd(crd) = &mut e.head {
                crd.sampler = shared.clone();
            }
        }
        self
    }

    fn loss_dims(&self) -> LossDims {
        let [student_dim, teacher_dim, num_classes, n_data] = self.dims;
        LossDims { student_dim, teacher_dim, num_classes, n_data }
    }

    /// Computes every term of one batch and the weighted total.
    pub fn forward(&self, inputs: DistillInputs) -> Result<LossTerms, LossError> {
        self.check_batch(&inputs)?;
        let DistillInputs {
            student_features: f_s,
            student_logits: z_s,
            teacher_features: f_t,
            teacher_logits: z_t,
            labels,
            indices,
            contrast_indices,
        } = inputs;
        let mut terms = Vec::new();
        let mut push = |name: &str, weight: f64, value: Tensor<1>| {
            terms.push(LossTerm { name: name.to_string(), weight, value })
        };
        for entry in &self.entries {
            let w = entry.weight;
            match &entry.head {
                LossHead::Ce(h) => {
                    push("ce", w, cross_entropy(z_s.clone(), labels.clone(), h.label_smoothing))
                }
                LossHead::Kd(h) => push("kd", w, kd(z_s.clone(), z_t.clone(), h.temperature)),
                LossHead::AlignUniform(h) => {
                    let g_s = h.proj_s.forward(f_s.clone());
                    let g_t = h.proj_t.forward(f_t.clone());
                    let a = align(g_s.clone(), g_t.clone(), h.alpha);
                    let u = (uniformity(g_s, h.t) + uniformity(g_t, h.t)).mul_scalar(1.0 / 2.0);
                    push("align", w * h.align_weight, a);
                    push("uniform", w * h.uniform_weight, u);
                }
                LossHead::Crd(h) => {
                    let idx = indices.as_deref().ok_or(LossError::Batch {
                        loss: "crd",
                        what: "the batch carries no dataset indices (crd needs them for its memory banks)"
                            .into(),
                    })?;
                    let out = h.forward(f_s.clone(), f_t.clone(), idx, contrast_indices.as_deref());
                    push("crd", w, out.student_anchor + out.teacher_anchor);
                }
                LossHead::Srrl(h) => {
                    let mapped = h.connector.forward(f_s.clone());
                    let embed = mse(mapped.clone(), f_t.clone());
                    let logits = mse(h.teacher_classifier.forward(mapped), z_t.clone());
                    push("srrl.embed", h.embed_weight, embed);
                    push("srrl.logits", w, logits);
                }
                LossHead::Feature(h) => {
                    let mapped = match &h.regressor {
                        Some(r) => r.forward(f_s.clone()),
                        None => f_s.clone(),
                    };
                    if h.cosine {
                        push("cosine", w, cosine_distance(mapped, f_t.clone()));
                    } else {
                        push("fitnet", w, mse(mapped, f_t.clone()));
                    }
                }
            }
        }
        let total = terms
            .iter()
            .map(|t| t.value.clone().mul_scalar(t.weight))
            .reduce(|a, b| a + b)
            .unwrap_or_else(|| Tensor::zeros([1], &f_s.device()));
        Ok(LossTerms { terms, total })
    }

    /// Shapes and indices, checked before any arithmetic.
    fn check_batch(&self, x: &DistillInputs) -> Result<(), LossError> {
        let d = self.loss_dims();
        let batch = x.student_features.dims()[0];
        let shape = |tensor: &'static str, got: &[usize], want: [usize; 2]| {
            if got != want {
                Err(LossError::Shape {
                    loss: "inputs",
                    tensor,
                    got: got.to_vec(),
                    expected: format!("{want:?}"),
                })
            } else {
                Ok(())
            }
        };
        shape("student_features", &x.student_features.dims(), [batch, d.student_dim])?;
        shape("teacher_features", &x.teacher_features.dims(), [batch, d.teacher_dim])?;
        shape("student_logits", &x.student_logits.dims(), [batch, d.num_classes])?;
        shape("teacher_logits", &x.teacher_logits.dims(), [batch, d.num_classes])?;
        if x.labels.dims() != [batch] {
            return Err(LossError::Shape {
                loss: "inputs",
                tensor: "labels",
                got: x.labels.dims().to_vec(),
                expected: format!("[{batch}]"),
            });
        }
        for e in &self.entries {
            match &e.head {
                LossHead::AlignUniform(_) if batch < 2 => {
                    return Err(LossError::Batch {
                        loss: "align_uniform",
                        what: format!("uniformity needs a batch of at least 2 samples, got {batch}"),
                    });
                }
                LossHead::Crd(crd) => check_crd_indices(crd, x, batch)?,
                _ => {}
            }
        }
        Ok(())
    }
}

fn check_crd_indices(crd: &Crd, x: &DistillInputs, batch: usize) -> Result<(), LossError> {
    let err = |what: String| Err(LossError::Batch { loss: "crd", what });
    let Some(idx) = &x.indices else {
        return err("the batch carries no dataset indices (crd needs them for its memory banks)".into());
    };
    if idx.len() != batch {
        return err(format!("{} dataset indices for a batch of {batch}", idx.len()));
    }
    let mut sorted = idx.clone();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return err(format!("dataset index {} appears twice in the batch", w[0]));
    }
    if let Some(&i) = idx.iter().find(|&&i| i >= crd.n_data) {
        return err(format!("dataset index {i} is out of range for n_data = {}", crd.n_data));
    }
    if let Some(rows) = &x.contrast_indices {
        if rows.len() != batch {
            return err(format!("{} contrast rows for a batch of {batch}", rows.len()));
        }
        for (r, (row, &pos)) in rows.iter().zip(idx).enumerate() {
            if row.len() != crd.nce_k + 1 || row[0] != pos {
                return err(format!(
                    "contrast row {r} must be [positive {pos}, {} negatives], got {} entries",
                    crd.nce_k,
                    row.len()
                ));
            }
            if let Some(&i) = row.iter().find(|&&i| i >= crd.n_data) {
                return err(format!("contrast index {i} is out of range for n_data = {}", crd.n_data));
            }
        }
    }
    Ok(())
}
