//! job: one vertex of the graph, resolved for running — the middle floor's vocabulary.
//!
//! `resolve` turns each node instance (and each derived artifact, such as a teacher's outputs)
//! into a [`Job`]: the layer configs it needs, its inputs by role with their keys, its seed and
//! whether it needs the device. Nothing below this module sees a spec type, and a job is plain
//! data: it can be written to a file (`plan --json`, `distillery worker JOB.json`) and run in
//! another process against the same store.
//!
//! Architecture invariant: a job's cache key is the hash of [`Job::key_value`], which holds every
//! part of the job that can change its result — defaults included, since they are filled in here
//! — and nothing else (names, paths, the device and locations are left out).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::data;
use crate::engine;
use crate::graph::{CacheKey, FORMAT_VERSION};
use crate::losses::WeightedLoss;

/// A vertex to compute, with everything its runner needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// The instance's name (`kd[seed=1]`, `teacher_outputs(t on d)`).
    pub name: String,
    /// `train`, `finetune`, `distill`, `evaluate`, `report`, `teacher_outputs`.
    pub kind: String,
    /// The experiment's name (the store's index of recorded settings is per experiment).
    pub experiment: String,
    /// Its cache key (hex): the hash of [`Job::key_value`].
    pub key: String,
    /// Seeds the node's initial weights and data order (`None`: not seeded).
    pub seed: Option<u64>,
    /// `cpu`, `cuda`, `cuda:1`, `auto`: where it runs (not part of the key).
    pub device: String,
    /// The experiment file's folder: dataset and weight paths are relative to it.
    pub base_dir: PathBuf,
    /// Where the node is written (`nodes.kd.distill`, `experiment.yaml:12:3`), for errors.
    pub at: Place,
    /// Where settings that can fail at run time are written, by the name a runner uses
    /// (`model`, `pretrained`, `weights`, `data`, `losses`, `teacher`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, Place>,
    /// Inputs by role (`data`, `teacher`, `teacher_outputs`, `rows/0/1` ...), as the graph
    /// linked them.
    pub inputs: Vec<JobInput>,
    pub work: Work,
}

/// A place in the experiment: its key path, and `file:line:col` where known.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Place {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.location {
            Some(l) => write!(f, "{l} ({})", self.path),
            None => f.write_str(&self.path),
        }
    }
}

/// An input of a job: another vertex's stored result, or a dataset selection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobInput {
    pub role: String,
    /// The input's name in the experiment (a node instance or a dataset).
    pub name: String,
    /// Its key (hex): a stored entry's key, or a dataset's key.
    pub key: String,
    pub source: InputSource,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum InputSource {
    /// A stored entry of another vertex; `dims` are the instance's matrix values other than the
    /// seed (a report's row label), `model`: whether the entry holds a trained model.
    Entry {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        dims: Vec<(String, String)>,
        /// The instance's seed (a report pairs rows' seeds).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seed: Option<u64>,
        model: bool,
    },
    /// A dataset selection, read through the data layer.
    Dataset(data::DatasetConfig),
}

/// What a job computes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Work {
    /// train and finetune: one model trained on the `data` input.
    Train(TrainWork),
    /// A student trained from a frozen `teacher` through weighted losses.
    Distill(DistillWork),
    /// A trained `model` input measured on the `data` input.
    Evaluate(EvaluateWork),
    /// A table of the rows' metrics.
    Report(ReportWork),
    /// A teacher's features and logits for every image of the `data` input, kept in the store
    /// so every student distilled from this teacher on this data reuses them.
    TeacherOutputs(TeacherOutputsWork),
    /// distillery's built-in class-conditional generator, trained on the `data` input.
    Generator(GeneratorWork),
    /// A labelled synthetic image set for the `data` input's classes.
    Generate(GenerateWork),
    /// An external program run through the plugin protocol.
    Plugin(PluginWork),
}

impl Work {
    /// Whether the job uses the device (and so one of `run --device-slots`).
    pub fn uses_device(&self) -> bool {
        match self {
            Work::Report(r) => r.eval.is_some(),
            Work::Plugin(p) => p.plugin.gpu,
            Work::Generate(g) => match &g.generator {
                GeneratorSource::Node => true,
                GeneratorSource::Plugin { plugin, .. } => plugin.gpu,
            },
            _ => true,
        }
    }
}

/// The settings of a training loop, shared by train, finetune and distill.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopSettings {
    pub trainer: engine::TrainerConfig,
    pub batch_size: usize,
    /// Drop each epoch's last incomplete batch; else every image is used (a last batch of one
    /// joins the batch before).
    pub drop_last: bool,
    pub label_smoothing: f64,
    /// Per-image transforms and batch augmentation of the training images; `normalize` is the
    /// dataset's own statistics unless the spec gives values.
    pub transform: data::TransformConfig,
    /// Linear probing: train the head alone, batch-norm statistics frozen.
    pub freeze_backbone: bool,
    /// The head's learning rate as a multiple of the optimizer's.
    pub head_lr_mult: f64,
    /// Measure accuracy on the `val` input after each epoch.
    pub validate: bool,
    /// Batches an optimizer step sums the gradients of (left out of the key at 1, so keys made
    /// before it existed still mean the same).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub accumulate: usize,
    /// An exponential moving average of the trained weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<engine::EmaConfig>,
    /// Epochs between checkpoints; `None`: when one costs under 2% of the time since the last
    /// (docs/running.md). Left out of the key: it changes no result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<u32>,
    /// The `synthetic/from` input's images are added to the data, this many times the real
    /// images of each class (`data::merge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<f64>,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// How a model's architecture is known and where its first weights come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSetup {
    /// The architecture; `None`: the one of the node input [`ModelSetup::init`] names
    /// (finetuning a node's model).
    pub arch: Option<ModelTemplate>,
    /// Start from the weights of this node input (`init`, `from`, `student_init`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    /// Or from a safetensors file (a model's `pretrained:`, a finetune's `weights:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<WeightsFile>,
    /// What becomes of the starting weights' classifier head (set whenever `init` or `weights`
    /// is), decided at resolve time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadPlan>,
}

/// The head a model starting from other weights gets, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadPlan {
    /// Load the starting weights' head; else a freshly initialised one.
    pub keep: bool,
    /// Why, for people (`plan`, model.json); not part of the key.
    pub why: String,
}

impl HeadPlan {
    pub fn word(&self) -> &'static str {
        if self.keep { "keep" } else { "new" }
    }
}

/// A file of weights: its content's hash is in the key, its path is not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsFile {
    /// The setting that names it (`pretrained`, `weights`), for errors.
    pub setting: String,
    /// Resolved against the experiment's folder.
    pub file_path: PathBuf,
    /// sha256 of the file's bytes.
    pub sha256: String,
}

/// An architecture with every default filled in; the rules that depend on the prepared images'
/// side (the stem, a ViT's patch size) are part of it, so they are part of the key too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelTemplate {
    /// The architecture; `stem` and ViT `patch_size` are replaced by [`SizeRule`] when set.
    pub arch: engine::Arch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_image_size: Option<SizeRule>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SizeRule {
    /// The CIFAR stem for images up to this side, ImageNet's above (`stem: auto`).
    Stem { cifar_up_to: usize },
    /// Patches of `small` for images up to `small_up_to`, else `large` (an 8x8 digit in 16x16
    /// patches would be one token).
    Patch { small_up_to: usize, small: usize, large: usize },
}

impl ModelTemplate {
    /// A fixed architecture (no rule of the image size).
    pub fn fixed(arch: engine::Arch) -> ModelTemplate {
        ModelTemplate { arch, by_image_size: None }
    }

    /// The engine's model for images of `[channels, side, side]` and `num_classes` classes.
    pub fn config(&self, in_channels: usize, image_size: usize, num_classes: usize) -> engine::ModelConfig {
        let mut arch = self.arch.clone();
        match (&self.by_image_size, &mut arch) {
            (
                Some(SizeRule::Stem { cifar_up_to }),
                engine::Arch::ResNet { stem, .. } | engine::Arch::MobileNetV2 { stem, .. },
            ) => {
                *stem = if image_size <= *cifar_up_to { engine::Stem::Cifar } else { engine::Stem::ImageNet }
            }
            (Some(SizeRule::Patch { small_up_to, small, large }), engine::Arch::Vit { patch_size, .. }) => {
                *patch_size = if image_size <= *small_up_to { *small } else { *large }
            }
            _ => {}
        }
        engine::ModelConfig { arch, in_channels, image_size, num_classes }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainWork {
    pub model: ModelSetup,
    #[serde(rename = "loop")]
    pub settings: LoopSettings,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillWork {
    pub student: ModelSetup,
    pub losses: Vec<WeightedLoss>,
    #[serde(rename = "loop")]
    pub settings: LoopSettings,
    /// The teacher's outputs come from the `teacher_outputs` input (no teacher forward pass
    /// during training); else the teacher runs on every batch.
    pub cached_teacher: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateWork {
    /// The model input's final weights, or its best on validation (left out of the key when
    /// final, so keys made before it existed still mean the same).
    #[serde(default, skip_serializing_if = "Weights::is_final")]
    pub weights: Weights,
    pub batch_size: usize,
    /// What to report, sorted (`accuracy`, `loss`, `per_class`, `top5`); `n` always.
    pub metrics: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherOutputsWork {
    /// The distillation images' deterministic preparation (normalised with the teacher's own
    /// statistics when run).
    pub transform: data::TransformConfig,
    pub batch_size: usize,
    /// The `synthetic/from` input's images merged into the data at this ratio (as the students
    /// see it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<f64>,
}

/// The built-in generator's training (a conditional VAE, `engine::cvae`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorWork {
    /// The model, named by its kind (so another kind of generator has another key).
    pub cvae: engine::CvaeConfig,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub beta: f64,
}

/// A synthetic image set: how many a class, the prompts, and the generator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateWork {
    pub generator: GeneratorSource,
    /// `{c}` is replaced by each class name.
    pub prompt: String,
    pub count: GenerateCount,
    /// Images a class in `preview.png`.
    pub preview: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum GeneratorSource {
    /// The `generator/node` input (a trained built-in generator).
    Node,
    /// A plugin that produces images.
    Plugin {
        plugin: PluginRef,
        params: serde_json::Map<String, Value>,
        /// Seconds before it is stopped (not in the key: it changes no result that is kept).
        timeout_s: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum GenerateCount {
    /// Times the real images of each class (rounded).
    Ratio(f64),
    PerClass(usize),
}

/// A plugin node: the plugin, its settings and inputs (by role, `inputs/<role>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginWork {
    pub plugin: PluginRef,
    pub params: serde_json::Map<String, Value>,
    /// Seconds before it is stopped (not in the key).
    pub timeout_s: u64,
}

/// A plugin as resolved: its manifest and a hash of its files are in the key, its place is not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    pub name: String,
    /// The program and its arguments (from the manifest; a PATH plugin: its executable).
    pub command: Vec<String>,
    pub protocol: u32,
    /// What the manifest says it produces (`files`, `images`).
    pub produces: String,
    pub gpu: bool,
    /// The manifest as read (`null` for a PATH plugin).
    pub manifest: Value,
    /// sha256 over the plugin's files (relative path and content), or its executable's bytes.
    pub files_sha256: String,
    /// The plugin folder (its working files) or the executable found on PATH.
    pub file_path: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportWork {
    pub title: Option<String>,
    pub rows: Vec<ReportRow>,
    pub columns: Vec<Column>,
    pub format: TableFormat,
    /// Evaluate every row's model on the `eval` input (its name).
    pub eval: Option<String>,
    /// Which weights of the rows' models `eval` evaluates.
    #[serde(default, skip_serializing_if = "Weights::is_final")]
    pub weights: Weights,
    /// Columns for each value of this matrix key; rows grouped by the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pivot: Option<String>,
    /// Teachers' cost: shown apart, or divided among their students and added to each row.
    #[serde(default, skip_serializing_if = "TeacherCostMode::is_separate")]
    pub teacher_cost: TeacherCostMode,
    /// The distill instances of the experiment that read each teacher (by the teacher's key):
    /// how many of each declared node, in the experiment's order.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub students_per_teacher: Sharing,
    /// The row (index) every other row is compared with: compute saved, accuracy gained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare_to: Option<usize>,
}

/// Whether a report adds each teacher's cost to its students' rows, divided among them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeacherCostMode {
    #[default]
    Separate,
    Amortised,
}

impl TeacherCostMode {
    pub fn is_separate(&self) -> bool {
        *self == TeacherCostMode::Separate
    }
}

/// A trained node's weights: its last epoch's (`model.safetensors`), or those of its epoch with
/// the best accuracy on its `val` input (`best.safetensors`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weights {
    #[default]
    Final,
    Best,
}

impl Weights {
    pub fn is_final(&self) -> bool {
        *self == Weights::Final
    }

    /// The entry's file holding them.
    pub fn file(self) -> &'static str {
        match self {
            Weights::Final => "model.safetensors",
            Weights::Best => "best.safetensors",
        }
    }
}

/// A row: its label and the role of its inputs (`rows/0`; a labelled row's are `rows/0/node`):
/// every instance of the row's node, grouped by their matrix values other than the seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportRow {
    pub label: String,
    pub role: String,
    /// The row's own `teacher_cost` (else the report's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_cost: Option<TeacherCostMode>,
}

/// Students that share each teacher, by the teacher's key: `(declared node, instances)` in the
/// experiment's order. A teacher's cost is divided among all of them when a row amortises it.
pub type Sharing = BTreeMap<String, Vec<(String, usize)>>;

/// How many students share a teacher.
pub fn students_of(sharing: &Sharing, teacher_key: &str) -> usize {
    sharing.get(teacher_key).map_or(1, |s| s.iter().map(|(_, n)| n).sum::<usize>().max(1))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Column {
    Accuracy,
    Top5,
    Loss,
    TrainSeconds,
    ImagesPerSecond,
    Flops,
    Params,
    CostSeconds,
    CostFlops,
    CpuHours,
    GpuHours,
    TeacherSeconds,
    TeacherFlops,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    Md,
    Csv,
    Latex,
}

impl Job {
    /// What resolving decided that the spec does not spell out, a line each (`plan` shows them).
    pub fn notes(&self) -> Vec<String> {
        let setup = match &self.work {
            Work::Train(w) => &w.model,
            Work::Distill(w) => &w.student,
            _ => return Vec::new(),
        };
        setup.head.iter().map(|h| format!("head: {}: {}", h.word(), h.why)).collect()
    }

    /// What the key hashes: the format version, the kind, the work with its defaults, the seed,
    /// and each input's key by role — no names, paths, device or locations.
    pub fn key_value(&self) -> Value {
        let mut work = serde_json::to_value(&self.work).expect("work serialises");
        strip_paths(&mut work);
        // A weighted sum does not depend on the order its terms are written in.
        if let Some(Value::Array(losses)) = work.pointer_mut("/distill/losses") {
            losses.sort_by_key(canonical_string);
        }
        // By role; a role with several inputs (a report row of matrix instances) is the sorted
        // list of their keys.
        let mut by_role: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for i in &self.inputs {
            by_role.entry(&i.role).or_default().push(&i.key);
        }
        let inputs: serde_json::Map<String, Value> = by_role
            .into_iter()
            .map(|(role, mut keys)| {
                let v = if keys.len() == 1 {
                    json!(keys[0])
                } else {
                    keys.sort();
                    json!(keys)
                };
                (role.to_string(), v)
            })
            .collect();
        json!({
            "format": FORMAT_VERSION,
            "kind": self.kind,
            "work": work,
            "seed": self.seed,
            "inputs": inputs,
        })
    }

    /// The key of [`Job::key_value`].
    pub fn compute_key(&self) -> CacheKey {
        CacheKey::of(&self.key_value())
    }

    /// The input of a role.
    pub fn input(&self, role: &str) -> Option<&JobInput> {
        self.inputs.iter().find(|i| i.role == role)
    }

    /// Where a setting is written (or the node, when the setting has no place of its own).
    pub fn place_of(&self, setting: &str) -> &Place {
        self.settings.get(setting).unwrap_or(&self.at)
    }
}

fn canonical_string(v: &Value) -> String {
    crate::graph::canonical_json(v)
}

/// Paths never change a result: the content they point at is hashed instead.
fn strip_paths(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("file_path");
            // How often progress is saved, or how long a plugin may take, changes no result.
            m.remove("checkpoint_every");
            m.remove("timeout_s");
            // A head plan's reason is for people; `keep` is what changes the result.
            if let Some(Value::Object(h)) = m.get_mut("head") {
                h.remove("why");
            }
            m.values_mut().for_each(strip_paths);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_paths),
        _ => {}
    }
}
