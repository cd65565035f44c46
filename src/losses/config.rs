//! Loss parameters as plain data: what the spec layer fills in, checked by `validate`
//! before any tensor exists, and the paper's presets.

use super::heads::{ConnectorKind, ProjectorKind};

/// Cross-entropy on the student logits.
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CeConfig {
    /// PyTorch's `label_smoothing`, in `[0, 1)`. Default 0.
    pub label_smoothing: f64,
}

impl Default for CeConfig {
    fn default() -> Self {
        Self { label_smoothing: 0.0 }
    }
}

/// Hinton knowledge distillation on the logits.
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KdConfig {
    /// Softmax temperature `T > 0`. Default 4 (the paper).
    pub temperature: f64,
}

impl Default for KdConfig {
    fn default() -> Self {
        Self { temperature: 4.0 }
    }
}

/// Alignment and uniformity (Wang & Isola 2020) between projected embeddings.
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AlignUniformConfig {
    /// Projector on both sides. Default mocov2.
    pub projector: ProjectorKind,
    /// Projected dimension. Default 128.
    pub dim: usize,
    /// Alignment exponent `alpha > 0`. Default 2.
    pub alpha: f64,
    /// Uniformity temperature `t > 0`. Default 2.
    pub t: f64,
    /// Factor on the alignment term inside this loss. Default 1.
    #[serde(skip_serializing_if = "is_one")]
    pub align_weight: f64,
    /// Factor on the uniformity term inside this loss. Default 1.
    #[serde(skip_serializing_if = "is_one")]
    pub uniform_weight: f64,
}

impl Default for AlignUniformConfig {
    fn default() -> Self {
        Self {
            projector: ProjectorKind::MocoV2,
            dim: 128,
            alpha: 2.0,
            t: 2.0,
            align_weight: 1.0,
            uniform_weight: 1.0,
        }
    }
}

/// Contrastive representation distillation with momentum memory banks.
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CrdConfig {
    /// Embedding head on both sides. Default linear (RepDistiller's `Embed`).
    pub projector: ProjectorKind,
    /// Embedding dimension (`dim` in the spec). Default 128.
    #[serde(rename = "dim")]
    pub feat_dim: usize,
    /// Negatives per sample, `1 <= nce_k < n_data`. Default 4096 (the paper).
    pub nce_k: usize,
    /// Temperature `> 0`. Default 0.07.
    pub nce_t: f64,
    /// Memory momentum in `[0, 1)`. Default 0.5.
    pub momentum: f64,
    /// Seed of the negative sampler and the memory initialisation; `None`: the node's seed
    /// ([`LossConfig::seed_unset`]), 0 if there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl Default for CrdConfig {
    fn default() -> Self {
        Self {
            projector: ProjectorKind::Linear,
            feat_dim: 128,
            nce_k: 4096,
            nce_t: 0.07,
            momentum: 0.5,
            seed: None,
        }
    }
}

/// SRRL: a connector to the teacher width, then the teacher's frozen classifier. The loss's
/// weight weighs `srrl.logits` (the paper's l4); `embed_weight` weighs `srrl.embed` (l2) on its own.
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SrrlConfig {
    /// Default mlp2.
    pub connector: ConnectorKind,
    /// Factor on `srrl.embed` (the paper's l2). Default 1.
    pub embed_weight: f64,
}

impl Default for SrrlConfig {
    fn default() -> Self {
        Self { connector: ConnectorKind::Mlp2, embed_weight: 1.0 }
    }
}

fn is_one(v: &f64) -> bool {
    *v == 1.0
}

fn one() -> f64 {
    1.0
}

/// Feature regression (fitnet: MSE; cosine: cosine distance) through a learned linear regressor.
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FeatureConfig {
    /// A `Linear(student_dim, teacher_dim)` regressor; without one the widths must match.
    /// Default true.
    pub regressor: bool,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        Self { regressor: true }
    }
}

/// One loss of a distill node, as the spec writes it (`loss:` is its name; the fields are its
/// settings, every one optional): the spec reads these types directly, so a new loss is a
/// variant here, its head in `mod.rs`, and its code.
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq)]
#[serde(tag = "loss", rename_all = "snake_case")]
pub enum LossConfig {
    Ce(CeConfig),
    Kd(KdConfig),
    AlignUniform(AlignUniformConfig),
    Crd(CrdConfig),
    Srrl(SrrlConfig),
    #[serde(rename = "fitnet")]
    FitNet(FeatureConfig),
    Cosine(FeatureConfig),
}

/// Declares [`LOSS_NAMES`] and [`LossConfig::name`] from one list, so they cannot disagree: the
/// match is exhaustive (a new variant does not compile until it is listed here), and a unit
/// test checks that serde reads each name as the variant it is listed with.
macro_rules! loss_names {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// Every loss name a distill node's `losses:` accepts, in declaration order.
        pub const LOSS_NAMES: &[&str] = &[$($name),*];

        impl LossConfig {
            /// The loss's name in the spec and in term names.
            pub fn name(&self) -> &'static str {
                match self {
                    $(LossConfig::$variant(_) => $name,)*
                }
            }
        }
    };
}

loss_names! {
    Ce => "ce",
    Kd => "kd",
    AlignUniform => "align_uniform",
    Crd => "crd",
    Srrl => "srrl",
    FitNet => "fitnet",
    Cosine => "cosine",
}

/// A range a setting must lie in, checked by `validate` before anything runs (the spec layer
/// words and locates the message).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Check {
    /// Finite and > 0.
    Positive(f64),
    /// Finite and >= 0.
    NonNegative(f64),
    /// In `[lo, hi)`, or `[lo, hi]` when `hi_inclusive`.
    Within { v: f64, lo: f64, hi: f64, hi_inclusive: bool },
    /// A count in `[min, max]`.
    Count { v: u64, min: u64, max: u64 },
}

/// Widest projected embedding (`dim`).
pub const MAX_DIM: u64 = 65_536;
/// Most negatives a sample of CRD (`nce_k`).
pub const MAX_NCE_K: u64 = 1 << 20;

/// Sizes the losses are built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossDims {
    /// Width of the student's distilled feature (pooled penultimate layer).
    pub student_dim: usize,
    /// Width of the teacher's distilled feature.
    pub teacher_dim: usize,
    pub num_classes: usize,
    /// Training-set size (CRD's memory banks).
    pub n_data: usize,
}

/// A bad loss parameter: `losses.<loss>.<field>: expected <expected>, got <got>`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("losses.{loss}.{field}: expected {expected}, got {got}")]
pub struct LossConfigError {
    pub loss: &'static str,
    pub field: &'static str,
    pub expected: String,
    pub got: String,
}

pub(super) fn bad(
    loss: &'static str,
    field: &'static str,
    expected: &str,
    got: impl ToString,
) -> LossConfigError {
    LossConfigError { loss, field, expected: expected.to_string(), got: got.to_string() }
}

fn positive(loss: &'static str, field: &'static str, v: f64) -> Result<(), LossConfigError> {
    if v.is_finite() && v > 0.0 { Ok(()) } else { Err(bad(loss, field, "a finite number > 0", v)) }
}

fn non_negative(loss: &'static str, field: &'static str, v: f64) -> Result<(), LossConfigError> {
    if v.is_finite() && v >= 0.0 { Ok(()) } else { Err(bad(loss, field, "a finite number >= 0", v)) }
}

impl LossConfig {
    /// Each setting's range, by its name in the spec: what can be checked without the data.
    pub fn checks(&self) -> Vec<(&'static str, Check)> {
        use Check::*;
        match self {
            LossConfig::Ce(c) => vec![(
                "label_smoothing",
                Within { v: c.label_smoothing, lo: 0.0, hi: 1.0, hi_inclusive: false },
            )],
            LossConfig::Kd(c) => vec![("temperature", Positive(c.temperature))],
            LossConfig::AlignUniform(c) => vec![
                ("alpha", Positive(c.alpha)),
                ("t", Positive(c.t)),
                ("dim", Count { v: c.dim as u64, min: 1, max: MAX_DIM }),
                ("align_weight", NonNegative(c.align_weight)),
                ("uniform_weight", NonNegative(c.uniform_weight)),
            ],
            LossConfig::Crd(c) => vec![
                ("dim", Count { v: c.feat_dim as u64, min: 1, max: MAX_DIM }),
                ("nce_k", Count { v: c.nce_k as u64, min: 1, max: MAX_NCE_K }),
                ("nce_t", Positive(c.nce_t)),
                ("momentum", Within { v: c.momentum, lo: 0.0, hi: 1.0, hi_inclusive: true }),
            ],
            LossConfig::Srrl(c) => vec![("embed_weight", NonNegative(c.embed_weight))],
            LossConfig::FitNet(_) | LossConfig::Cosine(_) => vec![],
        }
    }

    /// Gives a loss that draws random numbers of its own (CRD's sampler) the node's seed,
    /// unless its settings name one.
    pub fn seed_unset(&mut self, seed: u64) {
        if let LossConfig::Crd(c) = self {
            c.seed.get_or_insert(seed);
        }
    }

    /// Checks every parameter against `dims`; the first bad one is the error.
    pub fn validate(&self, dims: &LossDims) -> Result<(), LossConfigError> {
        let name = self.name();
        match self {
            LossConfig::Ce(c) => {
                if !(c.label_smoothing.is_finite() && (0.0..1.0).contains(&c.label_smoothing)) {
                    return Err(bad(name, "label_smoothing", "a number in [0, 1)", c.label_smoothing));
                }
            }
            LossConfig::Kd(c) => positive(name, "temperature", c.temperature)?,
            LossConfig::AlignUniform(c) => {
                if c.dim == 0 {
                    return Err(bad(name, "dim", "a projector dimension >= 1", 0));
                }
                positive(name, "alpha", c.alpha)?;
                positive(name, "t", c.t)?;
                non_negative(name, "align_weight", c.align_weight)?;
                non_negative(name, "uniform_weight", c.uniform_weight)?;
            }
            LossConfig::Crd(c) => {
                if c.feat_dim == 0 {
                    return Err(bad(name, "dim", "an embedding dimension >= 1", 0));
                }
                if c.nce_k == 0 || c.nce_k >= dims.n_data {
                    return Err(bad(
                        name,
                        "nce_k",
                        &format!(
                            "between 1 and n_data - 1 = {} (negatives are other training samples)",
                            dims.n_data.saturating_sub(1)
                        ),
                        c.nce_k,
                    ));
                }
                positive(name, "nce_t", c.nce_t)?;
                if !(c.momentum.is_finite() && (0.0..1.0).contains(&c.momentum)) {
                    return Err(bad(name, "momentum", "a number in [0, 1)", c.momentum));
                }
            }
            LossConfig::Srrl(c) => non_negative(name, "embed_weight", c.embed_weight)?,
            LossConfig::FitNet(c) | LossConfig::Cosine(c) => {
                if !c.regressor && dims.student_dim != dims.teacher_dim {
                    return Err(bad(
                        name,
                        "regressor",
                        &format!(
                            "true when the student width {} differs from the teacher width {}",
                            dims.student_dim, dims.teacher_dim
                        ),
                        false,
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A loss and its weight in the total: one entry of a distill node's `losses:`
/// (`{ loss: kd, weight: 2, temperature: 3 }`; the weight defaults to 1).
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq)]
pub struct WeightedLoss {
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(flatten)]
    pub config: LossConfig,
}

impl WeightedLoss {
    pub fn new(weight: f64, config: LossConfig) -> Self {
        Self { weight, config }
    }

    pub fn name(&self) -> &'static str {
        self.config.name()
    }
}

/// The paper's presets (`distill.py`: l1 CE, l2 embedding loss, l3 KD, l4 SRRL), with its
/// defaults: kd = CE + KD; srrl = CE + SRRL (embed and logits); align_uniform = CE +
/// align_uniform + KD; crd = CE + CRD + KD. `None` for an unknown name.
pub fn preset(name: &str) -> Option<Vec<WeightedLoss>> {
    let ce = || WeightedLoss::new(1.0, LossConfig::Ce(CeConfig::default()));
    let kd = || WeightedLoss::new(1.0, LossConfig::Kd(KdConfig::default()));
    Some(match name {
        "kd" => vec![ce(), kd()],
        "srrl" => vec![ce(), WeightedLoss::new(1.0, LossConfig::Srrl(SrrlConfig::default()))],
        "align_uniform" => {
            vec![ce(), WeightedLoss::new(1.0, LossConfig::AlignUniform(AlignUniformConfig::default())), kd()]
        }
        "crd" => vec![ce(), WeightedLoss::new(1.0, LossConfig::Crd(CrdConfig::default())), kd()],
        _ => return None,
    })
}

/// Names [`preset`] knows.
pub const PRESETS: [&str; 4] = ["kd", "srrl", "align_uniform", "crd"];
