//! nodes: what each node kind does, on the engine, the data layer and the losses.
//!
//! Every node that trains a model stores `model.safetensors` (torchvision names), `model.json`
//! (architecture, input shape, classes, normalisation), `history.jsonl` (per-epoch metrics) and
//! returns its final metrics. Nodes report through the executor's event sink only.
//!
//! Architecture invariant: nodes write only into the job's output folder; the executor commits
//! it to the store. A non-finite loss stops the node with an error naming the loss term and the
//! step, before any optimizer update or file of that step is written.

mod checkpoint;
mod generate;
mod plugin;
mod report;
mod train;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::data::{self, Dataset, FingerprintCache, Normalize, TransformConfig};
use crate::engine::{self, Model, ModelConfig};
use crate::exec::{NodeError, NodeOutput, NodeRunner, Task};
use crate::job::{InputSource, Work};

/// Held while a node seeds burn's (process-wide) generator and draws its initial weights.
pub(crate) static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs every kind of job this build supports. It never writes the store: it writes into the
/// task's output folder, which `exec::compute` commits.
pub struct Runner {
    fingerprints: Arc<FingerprintCache>,
}

impl Runner {
    pub fn new(fingerprints: Arc<FingerprintCache>) -> Runner {
        Runner { fingerprints }
    }
}

impl NodeRunner for Runner {
    fn run(&self, task: &Task<'_>) -> Result<NodeOutput, NodeError> {
        match &task.job.work {
            Work::Train(w) => train::run(self, task, train::Training::Plain(w)),
            Work::Distill(w) => train::run(self, task, train::Training::Distill(w)),
            Work::TeacherOutputs(w) => train::teacher_outputs(self, task, w),
            Work::Evaluate(e) => evaluate(self, task, e),
            Work::Report(r) => report::run(self, task, r),
            Work::Generator(w) => generate::train_generator(self, task, w),
            Work::Generate(w) => generate::generate(self, task, w),
            Work::Plugin(w) => plugin::node(task, w),
        }
    }

    fn resuming(&self, job: &crate::job::Job, checkpoint: &Path) -> Option<String> {
        match &job.work {
            Work::Train(_) | Work::Distill(_) => {
                checkpoint::read(checkpoint, &job.key).ok().flatten().map(|s| s.progress.place())
            }
            _ => None,
        }
    }
}

fn failed(e: impl std::fmt::Display) -> NodeError {
    NodeError::Failed(e.to_string())
}

/// What `model.json` says: enough to rebuild the model and feed it the inputs it was trained on.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// The engine's model, as built (architecture with its defaults, input shape, classes).
    pub model: ModelConfig,
    /// `[channels, height, width]` of the inputs the model takes (after preprocessing).
    pub image_shape: [usize; 3],
    pub num_classes: usize,
    pub class_names: Vec<String>,
    /// The per-channel normalisation training applied (the training selection's statistics, or
    /// the dataset's `normalize:` values), applied to every input of this model afterwards.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// The deterministic part of training's preprocessing, applied before normalising whenever
    /// the model is fed afterwards (evaluation, reports, teacher outputs).
    pub preprocess: Preprocess,
    /// Where the classifier head came from, when the model started from other weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<crate::job::HeadPlan>,
    /// The weights are an exponential moving average of the trained ones, with this decay
    /// (`ema: { output: true }`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_decay: Option<f64>,
}

/// Grey-to-RGB, resize and centre crop as training prepared its images, without its random
/// parts ([`TransformConfig::for_evaluation`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub grayscale_to_rgb: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub center_crop: Option<usize>,
}

impl ModelInfo {
    /// What a model trained through `loader` (on `train_transform` over images of `in_shape`)
    /// records about its inputs.
    pub(crate) fn new(
        model: ModelConfig,
        ds: &Dataset,
        train_transform: &TransformConfig,
        loader: &data::Loader,
    ) -> ModelInfo {
        let eval = train_transform.for_evaluation(ds.shape);
        let (mean, std) = loader.normalization();
        ModelInfo {
            model,
            image_shape: loader.image_shape(),
            num_classes: ds.n_classes(),
            class_names: ds.class_names.clone(),
            mean: mean.to_vec(),
            std: std.to_vec(),
            preprocess: Preprocess {
                grayscale_to_rgb: eval.grayscale_to_rgb,
                resize: eval.resize,
                center_crop: eval.center_crop,
            },
            head: None,
            ema_decay: None,
        }
    }

    pub fn config(&self) -> ModelConfig {
        self.model.clone()
    }

    pub fn read(dir: &Path) -> Result<ModelInfo, NodeError> {
        let p = dir.join("model.json");
        let text = std::fs::read_to_string(&p).map_err(|e| failed(format!("{}: {e}", p.display())))?;
        serde_json::from_str(&text).map_err(|e| failed(format!("{}: {e}", p.display())))
    }

    fn write(&self, dir: &Path) -> Result<(), NodeError> {
        let p = dir.join("model.json");
        std::fs::write(&p, serde_json::to_string_pretty(self).expect("json")).map_err(failed)
    }

    pub fn normalize(&self) -> Normalize {
        Normalize::Given { mean: self.mean.clone(), std: self.std.clone() }
    }

    /// How any image must be prepared for this model: training's deterministic preprocessing
    /// and its normalisation.
    pub fn eval_transform(&self) -> TransformConfig {
        TransformConfig {
            grayscale_to_rgb: self.preprocess.grayscale_to_rgb,
            resize: self.preprocess.resize,
            center_crop: self.preprocess.center_crop,
            normalize: Some(self.normalize()),
            ..TransformConfig::default()
        }
    }
}

/// A trained model of an input node: its info and weights on `device` (inference mode).
pub(crate) fn load_model(entry_dir: &Path, device: &Device) -> Result<(ModelInfo, Model), NodeError> {
    load_weights(entry_dir, crate::job::Weights::Final, device)
}

/// A trained model of an input node with its final or its best-on-validation weights.
pub(crate) fn load_weights(
    entry_dir: &Path,
    which: crate::job::Weights,
    device: &Device,
) -> Result<(ModelInfo, Model), NodeError> {
    let info = ModelInfo::read(entry_dir)?;
    let file = entry_dir.join(which.file());
    if !file.is_file() && which == crate::job::Weights::Best {
        return Err(failed(format!(
            "{} holds no best weights (its node evaluated no `val:` set)",
            entry_dir.display()
        )));
    }
    let model = engine::load(&info.config(), &file, device).map_err(failed)?;
    Ok((info, model))
}

pub(crate) fn device(task: &Task<'_>) -> Result<Device, NodeError> {
    engine::parse_device(&task.job.device).map_err(failed)
}

/// The dataset of a role (`data`, `val`, `eval`), loaded and selected.
pub(crate) fn dataset(
    runner: &Runner,
    task: &Task<'_>,
    role: &str,
) -> Result<(String, Arc<Dataset>), NodeError> {
    let input = task.job.input(role).ok_or_else(|| failed(format!("no `{role}` dataset")))?;
    let InputSource::Dataset(cfg) = &input.source else {
        return Err(failed(format!("input `{role}` is not a dataset")));
    };
    let ds = data::load_with_cache(cfg, &task.job.base_dir, &runner.fingerprints)
        .map_err(|e| task.fail_at(role, format!("dataset `{}`: {e}", input.name)))?;
    Ok((input.name.clone(), Arc::new(ds)))
}

/// The stored result of a node input by role.
pub(crate) fn node_input<'a>(task: &'a Task<'_>, role: &str) -> Result<&'a Path, NodeError> {
    task.entry(role).map(|e| e.dir.as_path()).ok_or_else(|| failed(format!("no `{role}` input")))
}

/// Tensors of a batch on `device`; the images move out of the batch (no copy per step).
pub(crate) fn batch_tensors(b: &mut data::Batch, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let x = Tensor::<4>::from_data(TensorData::new(std::mem::take(&mut b.images), b.shape), device);
    let labels: Vec<i64> = b.labels.iter().map(|&l| l as i64).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [b.labels.len()]), device);
    (x, y)
}

/// Top-1/top-5/loss and per-class accuracy of a model on a dataset, normalised as in training:
/// one forward pass a batch, nothing kept between batches.
pub(crate) fn eval_model(
    model: &Model,
    info: &ModelInfo,
    ds: &Arc<Dataset>,
    batch_size: usize,
    device: &Device,
) -> Result<Value, NodeError> {
    let loader = data::Loader::new(ds.clone(), data::LoaderConfig::eval(batch_size, info.eval_transform()))
        .map_err(|e| failed(format!("preparing images as in training: {e}")))?;
    if loader.image_shape() != info.image_shape {
        return Err(failed(format!(
            "the model takes {:?} images, the dataset's {:?} images become {:?} when prepared as in training",
            info.image_shape,
            ds.shape,
            loader.image_shape()
        )));
    }
    let k = info.num_classes;
    let mut per_class = vec![(0usize, 0usize); k];
    let (mut n, mut top1, mut top5, mut loss_sum) = (0usize, 0usize, 0usize, 0f64);
    let model = burn::module::Module::valid(model);
    for b in loader.epoch(0) {
        let mut b = b.map_err(|e| failed(format!("evaluation: {e}")))?;
        let (x, y) = batch_tensors(&mut b, device);
        let (_, z) = model.forward(x);
        loss_sum += engine::cross_entropy(z.clone(), y).into_scalar::<f64>() * b.labels.len() as f64;
        let logits: Vec<f32> =
            z.into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| failed(format!("{e:?}")))?;
        for (row, &label) in logits.chunks_exact(k).zip(&b.labels) {
            let target = row[label as usize];
            // Rank of the true class: how many classes score higher (ties favour the label).
            let rank = row.iter().filter(|&&v| v > target).count();
            top1 += (rank == 0) as usize;
            top5 += (rank < 5) as usize;
            let c = &mut per_class[label as usize];
            c.1 += 1;
            c.0 += (rank == 0) as usize;
        }
        n += b.labels.len();
    }
    if n != ds.len() {
        return Err(failed(format!("evaluation saw {n} of {} images", ds.len())));
    }
    let d = n.max(1) as f64;
    let per_class: Vec<Value> = per_class
        .iter()
        .map(|(hit, n)| if *n == 0 { Value::Null } else { json!(*hit as f64 / *n as f64) })
        .collect();
    Ok(
        json!({ "accuracy": top1 as f64 / d, "top5": top5 as f64 / d, "loss": loss_sum / d, "n": n, "per_class": per_class }),
    )
}

fn evaluate(runner: &Runner, task: &Task<'_>, e: &crate::job::EvaluateWork) -> Result<NodeOutput, NodeError> {
    let device = device(task)?;
    let (info, model) = load_weights(node_input(task, "model")?, e.weights, &device)?;
    let (_, ds) = dataset(runner, task, "data")?;
    let mut metrics = eval_model(&model, &info, &ds, e.batch_size, &device)?;
    // Only what the node asks for (and the image count).
    metrics.as_object_mut().expect("object").retain(|k, _| k == "n" || e.metrics.iter().any(|m| m == k));
    // Which weights were evaluated, said in the result: best-on-validation ones name their epoch.
    if e.weights == crate::job::Weights::Best {
        metrics["weights"] = json!("best");
        let trained = task.entry("model").map(|en| &en.manifest.metrics);
        metrics["best_epoch"] = trained.and_then(|m| m.get("best_epoch").cloned()).unwrap_or(Value::Null);
    }
    // What the evaluated model cost (a report row may be this node).
    if let Some(c) = task.entry("model").and_then(|en| en.manifest.metrics.get("cost")) {
        metrics["cost"] = c.clone();
    }
    write_json(&task.out_dir.join("metrics.json"), &metrics)?;
    Ok(NodeOutput { metrics })
}

pub(crate) fn write_json(path: &PathBuf, v: &Value) -> Result<(), NodeError> {
    std::fs::write(path, serde_json::to_string_pretty(v).expect("json")).map_err(failed)
}
