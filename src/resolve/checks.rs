//! Checks that need the data or a model's size, not only the spec: what would otherwise fail
//! (or exhaust memory) at run time, reported by validate and plan after the spec and graph
//! checks, each located at the setting to change.
//!
//! Each dataset a node reads is loaded once. Models are never built: their sizes come from
//! [`crate::engine::ModelConfig::footprint`].

use std::collections::HashMap;
use std::sync::Arc;

use crate::data::{self, DataError, Dataset, FingerprintCache};
use crate::diag::{Code, Diagnostic};
use crate::engine::models::Footprint;
use crate::spec::{self, Experiment, Node, NodeKind};

/// Memory the estimates are compared with when the machine's cannot be read.
const FALLBACK_MEMORY: u64 = 16 << 30;

/// The memory a node's estimate must fit in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: u64,
    /// Whether `bytes` was read from the machine (`/proc/meminfo`, the GPU) rather than assumed.
    pub measured: bool,
    /// Whether `bytes` is a GPU's memory (the smallest of those the nodes may run on).
    pub gpu: bool,
}

impl MemoryLimit {
    /// This machine's physical memory (`MemTotal` of `/proc/meminfo`), or 16 GiB if unknown.
    pub fn of_this_machine() -> MemoryLimit {
        let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| mem_total(&t));
        match total {
            Some(bytes) => MemoryLimit { bytes, measured: true, gpu: false },
            None => MemoryLimit { bytes: FALLBACK_MEMORY, measured: false, gpu: false },
        }
    }

    /// Where the nodes of `exp` train: the smallest memory of the GPUs `device:` may use when
    /// CUDA runs here, else this machine's memory.
    pub fn for_device(exp: &Experiment) -> MemoryLimit {
        let cuda = crate::engine::device::cuda;
        let gpus: Vec<u64> = match exp.device {
            spec::Device::Cpu => Vec::new(),
            _ if cuda().problem().is_some() => Vec::new(),
            spec::Device::Cuda(Some(i)) => {
                cuda().gpus.iter().filter(|g| g.index == i).map(|g| g.memory_bytes).collect()
            }
            spec::Device::Cuda(None) | spec::Device::Auto => {
                cuda().gpus.iter().map(|g| g.memory_bytes).collect()
            }
        };
        match gpus.into_iter().filter(|&b| b > 0).min() {
            Some(bytes) => MemoryLimit { bytes, measured: true, gpu: true },
            None => MemoryLimit::of_this_machine(),
        }
    }
}

/// `MemTotal:  32658400 kB` -> bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => Some(n.saturating_mul(1024)),
        None => Some(n),
        Some(_) => None,
    }
}

/// Checks that need the data: CRD's `nce_k` negatives must exist in the distillation set; each
/// dataset a node reads loads (`per_class` fits every class, an image folder has images); a
/// training node's `batch_size` fits its data; a feature loss without a regressor compares
/// features of one width; and each model a node trains fits this machine's memory
/// ([`MemoryLimit::for_device`]: the GPU's where nodes run on one). Reported at validate/plan time, located at the setting.
pub fn data_checks(exp: &Experiment, cache: &FingerprintCache) -> Vec<Diagnostic> {
    data_checks_within(exp, cache, MemoryLimit::for_device(exp))
}

/// The experiment's `device:` against this binary and machine ([`crate::engine::device::cuda`]):
/// `cuda` needs CUDA to run here (the driver, a GPU, NVRTC, the headers) and `cuda:N` GPU N too;
/// `cpu` and `auto` (which falls back to the CPU) always pass. `validate` and `run` check it
/// before anything starts; `plan` and `graph` do not touch a device and do not.
pub fn device_checks(exp: &Experiment) -> Vec<Diagnostic> {
    device_checks_with(exp, crate::engine::device::cuda())
}

/// [`device_checks`] against a given report of what the machine has.
pub fn device_checks_with(exp: &Experiment, cuda: &crate::engine::device::CudaReport) -> Vec<Diagnostic> {
    let problem = match exp.device {
        spec::Device::Cpu | spec::Device::Auto => None,
        spec::Device::Cuda(None) => cuda.problem(),
        spec::Device::Cuda(Some(i)) => cuda.check_index(i).err(),
    };
    let Some(problem) = problem else { return Vec::new() };
    // The problem's own text says what to do; the help says how to see the whole picture.
    let d = Diagnostic::new(
        Code::Device,
        "device",
        format!("device `{}` cannot run here: {problem}", exp.device),
    )
    .with_help("`distillery doctor` shows what this binary and machine have for CUDA".to_string());
    vec![d.at(exp.locate_value("device"))]
}

/// [`data_checks`] against a given memory limit.
pub fn data_checks_within(exp: &Experiment, cache: &FingerprintCache, limit: MemoryLimit) -> Vec<Diagnostic> {
    let mut nodes: HashMap<&str, &Node> = exp.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    for n in &exp.nodes {
        nodes.entry(n.base.as_str()).or_insert(n);
    }
    let mut c = Checks {
        exp,
        cache,
        limit,
        datasets: HashMap::new(),
        nodes,
        models: HashMap::new(),
        out: Vec::new(),
    };
    for node in &exp.nodes {
        for r in node.kind.refs() {
            if r.target == spec::Target::Dataset {
                c.dataset(&r.name);
            }
        }
        if let Some(t) = training(node) {
            c.training_node(node, &t);
        }
        if let NodeKind::Distill(d) = &node.kind {
            c.distill_losses(node, d);
        }
    }
    let mut seen = std::collections::HashSet::new();
    c.out.retain(|d| seen.insert((d.path.clone(), d.message.clone())));
    c.out
}

/// What a training node (train, finetune, distill) trains, on what, how.
struct Training<'a> {
    data: &'a str,
    batch_size: u32,
    drop_last: bool,
    optimizer: &'a spec::OptimizerSpec,
    augment: &'a spec::AugmentSpec,
    /// `None` for a finetune `from` another node: the model is that node's.
    model: Option<&'a str>,
    /// Synthetic images join the data at run time: its size is not known before.
    synthetic: bool,
}

fn training(node: &Node) -> Option<Training<'_>> {
    Some(match &node.kind {
        NodeKind::Train(s) => Training {
            data: &s.data.0,
            batch_size: s.batch_size,
            drop_last: s.drop_last,
            optimizer: &s.optimizer,
            augment: &s.augment,
            model: Some(&s.model.0),
            synthetic: false,
        },
        NodeKind::Finetune(s) => Training {
            data: &s.data.0,
            batch_size: s.batch_size,
            drop_last: s.drop_last,
            optimizer: &s.optimizer,
            augment: &s.augment,
            model: if s.from.is_some() { None } else { s.model.as_ref().map(|m| m.0.as_str()) },
            synthetic: false,
        },
        NodeKind::Distill(s) => Training {
            data: &s.data.0,
            batch_size: s.batch_size,
            drop_last: s.drop_last,
            optimizer: &s.optimizer,
            augment: &s.augment,
            model: Some(&s.student.0),
            synthetic: s.synthetic.is_some(),
        },
        _ => return None,
    })
}

/// A model as one node trains it: its architecture's name and its footprint on that node's data.
struct Sized {
    model: String,
    footprint: Footprint,
}

struct Checks<'a> {
    exp: &'a Experiment,
    cache: &'a FingerprintCache,
    limit: MemoryLimit,
    /// Each dataset loaded once; `None` when it failed (reported once).
    datasets: HashMap<String, Option<Arc<Dataset>>>,
    /// Nodes by instance name, and by declared name (its first instance).
    nodes: HashMap<&'a str, &'a Node>,
    /// [`Checks::model_of`]'s answers.
    models: HashMap<&'a str, Option<&'a str>>,
    out: Vec<Diagnostic>,
}

impl<'a> Checks<'a> {
    fn push(&mut self, code: Code, path: &str, node: &str, message: String, help: String) {
        let d = Diagnostic::new(code, path, message).with_node(node).with_help(help);
        self.out.push(d.at(self.exp.locate_value(path)));
    }

    /// The selection of dataset `name`, loaded once; a failure or an empty selection is
    /// reported at the dataset's setting that causes it.
    fn dataset(&mut self, name: &str) -> Option<Arc<Dataset>> {
        if let Some(d) = self.datasets.get(name) {
            return d.clone();
        }
        let loaded = self.load(name);
        self.datasets.insert(name.to_string(), loaded.clone());
        loaded
    }

    fn load(&mut self, name: &str) -> Option<Arc<Dataset>> {
        let spec = self.exp.datasets.get(name)?;
        let at = |key: &str| format!("datasets.{name}.{key}");
        let ds = match data::load_with_cache(
            &super::dataset_config(spec, self.exp.seed),
            self.exp.base_dir(),
            self.cache,
        ) {
            Ok(ds) => ds,
            Err(DataError::NotEnough { class, wanted, available }) => {
                self.push(
                    Code::OutOfRange,
                    &at("per_class"),
                    name,
                    format!(
                        "per_class {wanted} is more than class `{class}` has in the {} split: {available} images",
                        split_name(spec.split)
                    ),
                    format!("use per_class {available} or less, or `fraction:` to keep a share of each class"),
                );
                return None;
            }
            Err(e @ DataError::UnknownClass { .. }) => {
                let help = "use the source's class names or indices (docs/data.md lists them)".to_string();
                self.push(Code::OutOfRange, &at("classes"), name, e.to_string(), help);
                return None;
            }
            Err(e) => {
                let path = if spec.path.is_some() { at("path") } else { format!("datasets.{name}") };
                let help = "check the dataset's path and files (docs/data.md lists what each source reads)";
                self.push(Code::Data, &path, name, e.to_string(), help.into());
                return None;
            }
        };
        if ds.is_empty() {
            if spec.source == spec::SourceKind::Folder {
                let dir = spec.path.as_deref().unwrap_or(".");
                self.push(
                    Code::Data,
                    &at("path"),
                    name,
                    format!("image folder `{dir}` has no images for the {} split", split_name(spec.split)),
                    "put images in one sub-directory per class: <path>/<class>/<image>.png (or .jpg, .jpeg)"
                        .into(),
                );
            } else {
                self.push(
                    Code::Data,
                    &format!("datasets.{name}"),
                    name,
                    "the selection has no images".into(),
                    "check `split`, `classes`, `per_class` and `fraction`".into(),
                );
            }
            return None;
        }
        Some(Arc::new(ds))
    }

    fn training_node(&mut self, node: &'a Node, t: &Training<'_>) {
        let Some(ds) = self.dataset(t.data) else { return };
        let kind = node.spec_path();
        if !t.synthetic && t.drop_last && ds.len() < t.batch_size as usize {
            // Training drops the last incomplete batch: no step would run.
            self.push(
                Code::OutOfRange,
                &format!("{kind}.batch_size"),
                &node.name,
                format!(
                    "batch_size {} is larger than dataset `{}`: {} images, and `drop_last: true` drops the last incomplete batch",
                    t.batch_size,
                    t.data,
                    ds.len()
                ),
                format!("use batch_size {} or less, leave `drop_last` at false, or select more images", ds.len()),
            );
        }
        let Some(student) = self.sized(node) else { return };
        let teacher = match &node.kind {
            NodeKind::Distill(d) => self.trained(&d.teacher.0).map(|s| s.footprint.params),
            _ => None,
        };
        self.memory(node, t, &student, teacher.unwrap_or(0));
    }

    /// The model `node` trains, sized on the data it trains on: for a finetune `from` another
    /// node, that node's architecture. `None` after reporting why it cannot be sized.
    fn sized(&mut self, node: &'a Node) -> Option<Sized> {
        let t = training(node)?;
        let model = match t.model {
            Some(m) => m.to_string(),
            None => {
                let NodeKind::Finetune(f) = &node.kind else { return None };
                self.model_of(&f.from.as_ref()?.0)?.to_string()
            }
        };
        let spec = self.exp.models.get(&model)?;
        let ds = self.dataset(t.data)?;
        let dspec = &self.exp.datasets[t.data];
        let transform = super::train_transform(dspec, t.augment, data::Normalize::Dataset).ok()?;
        let cfg = data::LoaderConfig::train(t.batch_size as usize, t.drop_last, node.seed, transform);
        let shape = match data::Loader::new(ds.clone(), cfg) {
            Ok(l) => l.image_shape(),
            Err(e) => {
                self.push(
                    Code::OutOfRange,
                    &format!("datasets.{}.transforms", t.data),
                    t.data,
                    e.to_string(),
                    format!("dataset `{}` has images of {}", t.data, shape_text(ds.shape)),
                );
                return None;
            }
        };
        match super::model_config(spec, shape[0], shape[1], ds.n_classes()).footprint() {
            Ok(footprint) => Some(Sized { model, footprint }),
            Err(e) => {
                self.push(
                    Code::OutOfRange,
                    &format!("models.{model}"),
                    &node.name,
                    format!("{e} (node `{}` trains it on {} images)", node.name, shape_text(shape)),
                    "change the model's settings or the dataset's image size".into(),
                );
                None
            }
        }
    }

    /// The architecture node `name` trains (a finetune `from`: its source's, however long the
    /// chain: walked without recursion, each node's answer kept).
    fn model_of(&mut self, name: &'a str) -> Option<&'a str> {
        let mut chain = Vec::new();
        let mut at = name;
        let found = loop {
            if let Some(&m) = self.models.get(at) {
                break m;
            }
            let Some(node) = self.nodes.get(at).copied() else { break None };
            chain.push(at);
            match &node.kind {
                NodeKind::Train(s) => break Some(s.model.0.as_str()),
                NodeKind::Distill(s) => break Some(s.student.0.as_str()),
                // The graph has no cycles, but stay finite whatever it lets through.
                NodeKind::Finetune(s) if chain.len() <= self.nodes.len() => match (&s.from, &s.model) {
                    (Some(from), _) => at = &from.0,
                    (None, Some(m)) => break Some(m.0.as_str()),
                    (None, None) => break None,
                },
                _ => break None,
            }
        };
        for n in chain {
            self.models.insert(n, found);
        }
        found
    }

    /// The model a referenced node trains, sized on that node's own data.
    fn trained(&mut self, name: &'a str) -> Option<Sized> {
        let node = *self.nodes.get(name)?;
        self.sized(node)
    }

    /// Refuses a node whose training would not fit in memory (see docs/spec.md for the rule).
    fn memory(&mut self, node: &Node, t: &Training<'_>, student: &Sized, teacher_params: u64) {
        let f = &student.footprint;
        let (state, optimizer) = match t.optimizer {
            spec::OptimizerSpec::Sgd { momentum, .. } if *momentum > 0.0 => (1, "SGD momentum"),
            spec::OptimizerSpec::Sgd { .. } => (0, "no optimizer state"),
            spec::OptimizerSpec::Adamw { .. } => (2, "AdamW state"),
        };
        const FLOAT: u128 = 4;
        let trainable = u128::from(f.params.saturating_sub(f.buffers));
        let weights = trainable * FLOAT * (2 + state) + u128::from(f.buffers) * FLOAT;
        // Forward outputs, and as many gradients of them in the backward pass.
        let activations = u128::from(f.activations) * u128::from(t.batch_size) * FLOAT * 2;
        let teacher = u128::from(teacher_params) * FLOAT;
        let total = weights + activations + teacher;
        if total <= u128::from(self.limit.bytes) {
            return;
        }
        let machine = match (self.limit.measured, self.exp.device) {
            _ if self.limit.gpu => format!("the GPU has {}", gib(self.limit.bytes.into())),
            (true, spec::Device::Cpu) => format!("this machine has {}", gib(self.limit.bytes.into())),
            (false, spec::Device::Cpu) => {
                format!(
                    "more than the {} assumed (this machine's memory is unknown)",
                    gib(self.limit.bytes.into())
                )
            }
            (_, device) => format!(
                "this machine has {} (an estimate against host memory: the memory of `{device}` is not queried)",
                gib(self.limit.bytes.into())
            ),
        };
        let teacher_part =
            if teacher > 0 { format!("; the teacher's weights {}", gib(teacher)) } else { String::new() };
        let message = format!(
            "node `{}` needs about {} to train model `{}` ({} parameters: {} with gradients and {optimizer}; {} activation floats an image x batch {} x 2 for the backward pass: {}{teacher_part}), {machine}",
            // The declared name: matrix instances of the same size report once.
            node.base,
            gib(total),
            student.model,
            count(f.params),
            gib(weights),
            count(f.activations),
            t.batch_size,
            gib(activations),
        );
        let model_path = format!("models.{}", student.model);
        let (path, help) = if weights >= activations {
            let key = self.exp.models.get(&student.model).and_then(size_key);
            let path = key.map(|k| format!("{model_path}.{k}")).unwrap_or(model_path);
            (
                path,
                "use a smaller model (width, depth, dim, hidden sizes), or train on a machine with more memory",
            )
        } else {
            (
                format!("{}.batch_size", node.spec_path()),
                "use a smaller batch_size or smaller images (`transforms: resize`), or a smaller model",
            )
        };
        self.push(Code::OutOfRange, &path, &node.name, message, help.into());
    }

    /// `fitnet`/`cosine` without a regressor compare student and teacher features directly.
    fn distill_losses(&mut self, node: &'a Node, d: &'a spec::DistillSpec) {
        for loss in &d.losses.0 {
            use crate::losses::{FeatureConfig, LossConfig};
            match &loss.config {
                LossConfig::Crd(c) => self.crd(node, d, c.nce_k as u32),
                LossConfig::FitNet(FeatureConfig { regressor: false })
                | LossConfig::Cosine(FeatureConfig { regressor: false }) => {
                    let Some(student) = self.sized(node) else { continue };
                    let Some(teacher) = self.trained(&d.teacher.0) else { continue };
                    let (s, t) = (student.footprint.feature_dim, teacher.footprint.feature_dim);
                    if s != t {
                        let name = loss.name();
                        self.push(
                            Code::OutOfRange,
                            &format!("{}.losses.{name}.regressor", node.spec_path()),
                            &node.name,
                            format!(
                                "{name} without a regressor compares features of one width, but student `{}` has {s} and teacher `{}` ({}) has {t}",
                                student.model, d.teacher.0, teacher.model
                            ),
                            format!(
                                "set `regressor: true` (a learned linear map from {s} to {t}), or use a student with {t}-wide features"
                            ),
                        );
                    }
                }
                _ => {}
            }
        }
    }

    fn crd(&mut self, node: &Node, d: &spec::DistillSpec, nce_k: u32) {
        let Some(n) = self.dataset(&d.data.0).map(|ds| ds.len()) else { return };
        // CRD draws nce_k negatives among the other samples of the set.
        if nce_k as usize >= n {
            self.push(
                Code::OutOfRange,
                &format!("{}.losses.crd.nce_k", node.spec_path()),
                &node.name,
                format!("nce_k {nce_k} needs more than {nce_k} images, dataset `{}` has {n}", d.data.0),
                format!("use nce_k below {n} (RepDistiller uses 16384 on CIFAR's 50,000)"),
            );
        }
    }
}

/// The setting that sizes a model, if the file writes one (the diagnostic points at it).
fn size_key(m: &spec::ModelSpec) -> Option<&'static str> {
    match m {
        spec::ModelSpec::Mlp { .. } => Some("hidden"),
        spec::ModelSpec::Cnn { .. } => Some("channels"),
        spec::ModelSpec::Resnet { width: Some(_), .. } => Some("width"),
        spec::ModelSpec::Resnet { .. } => Some("depth"),
        spec::ModelSpec::Mobilenetv2 { width_mult, .. } if *width_mult != 1.0 => Some("width_mult"),
        spec::ModelSpec::Mobilenetv2 { .. } => None,
        spec::ModelSpec::Vit { dim: Some(_), .. } => Some("dim"),
        spec::ModelSpec::Vit { depth: Some(_), .. } => Some("depth"),
        spec::ModelSpec::Vit { .. } => None,
    }
}

fn split_name(s: spec::Split) -> &'static str {
    match s {
        spec::Split::Train => "train",
        spec::Split::Test => "test",
        spec::Split::All => "all",
    }
}

fn shape_text([c, h, w]: [usize; 3]) -> String {
    format!("{c}x{h}x{w}")
}

/// `412 GiB`, `1.5 TiB`, `43 MiB`, `300 bytes`: the largest unit that is at least 1.
fn gib(bytes: u128) -> String {
    let units = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    let Some((unit, shift)) = units.into_iter().find(|(_, s)| bytes >> s > 0) else {
        return format!("{bytes} bytes");
    };
    let v = bytes as f64 / (1u128 << shift) as f64;
    if v >= 10.0 { format!("{v:.0} {unit}") } else { format!("{v:.1} {unit}") }
}

/// `4.1e9` for large counts, digits below a million.
fn count(n: u64) -> String {
    if n < 1_000_000 { n.to_string() } else { format!("{:.1e}", n as f64) }
}

#[cfg(test)]
mod tests;
