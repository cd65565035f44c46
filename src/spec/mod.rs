//! spec: experiment files -> a typed, validated, matrix-expanded [`Experiment`].
//!
//! Architecture invariant: this layer reads only the files it is given (the experiment file and
//! its `include:`s). It never touches datasets, the artifact store or the network, and it reports
//! every problem it finds as a [`Diagnostic`] rather than stopping at the first.

mod load;
mod matrix;
mod schema;
pub mod types;
mod validate;
mod yaml_index;

use std::fmt;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;

pub use load::{load, load_partial, load_str};
pub use schema::json_schema;
pub use types::*;
pub use validate::plain_name;
pub use yaml_index::SpanIndex;

use crate::diag::{Diagnostic, Location};

/// An experiment, ready for the graph layer.
#[derive(Clone, Debug)]
pub struct Experiment {
    /// The MLflow experiment name (`experiment:`).
    pub name: String,
    pub description: Option<String>,
    pub seed: u64,
    pub device: Device,
    /// `launcher:` (`local` unless the file says `slurm`; `run --launcher` overrides it).
    pub launcher: LauncherKind,
    pub datasets: IndexMap<String, DatasetSpec>,
    pub models: IndexMap<String, ModelSpec>,
    /// Nodes after matrix expansion, in declaration order.
    pub nodes: Vec<Node>,
    /// The experiment file.
    pub path: PathBuf,
    /// Every file read: the experiment file first, then its includes.
    pub files: Vec<PathBuf>,
    /// Declared datasets, models and nodes whose settings were invalid (see `load_partial`).
    pub invalid: std::collections::HashSet<String>,
    spans: SpanIndex,
}

impl Experiment {
    /// Relative paths in the spec (data, weights, plugins) are relative to this folder.
    pub fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Where the key at a dotted path is written (falls back to the closest enclosing key).
    pub fn locate(&self, path: &str) -> Option<Location> {
        self.spans.key(path)
    }

    /// Where the value at a dotted path is written.
    pub fn locate_value(&self, path: &str) -> Option<Location> {
        self.spans.value(path)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// One node instance (a matrix expands one declared node into several).
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// `kd`, or `kd[seed=1]` for a matrix instance.
    pub name: String,
    /// The name as declared under `nodes:`.
    pub base: String,
    /// The matrix values of this instance, in name order (`seed` last).
    pub assignment: Vec<(String, String)>,
    /// The seed this instance trains with.
    pub seed: u64,
    pub kind: NodeKind,
    pub description: Option<String>,
    /// What a cluster job for it asks for: its `resources:` over `defaults.resources`.
    pub resources: Resources,
}

impl Node {
    /// Dotted path of this node's kind body in the file (`nodes.kd.distill`).
    pub fn spec_path(&self) -> String {
        format!("nodes.{}.{}", self.base, self.kind.name())
    }
}

/// Where nodes run: `cpu`, `cuda` (every GPU given by `run --gpus`, or all visible), `cuda:N`
/// (that GPU only) or `auto` (CUDA when built with it and a GPU is present, else the CPU).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    /// `Some(n)`: `cuda:n`; `None`: `cuda`, nodes spread over the GPUs.
    Cuda(Option<u32>),
    Auto,
}

impl Device {
    pub fn parse(s: &str) -> Option<Device> {
        match s {
            "cpu" => Some(Device::Cpu),
            "auto" => Some(Device::Auto),
            "cuda" => Some(Device::Cuda(None)),
            _ => s.strip_prefix("cuda:")?.parse().ok().map(|i| Device::Cuda(Some(i))),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Auto => f.write_str("auto"),
            Device::Cuda(None) => f.write_str("cuda"),
            Device::Cuda(Some(i)) => write!(f, "cuda:{i}"),
        }
    }
}

/// `path.seg`; an empty side leaves the other alone (serde may report an empty relative path,
/// and `models.big.` + `depth` must not become `models.big..depth`).
pub(crate) fn join(path: &str, seg: &str) -> String {
    match (path.is_empty(), seg.is_empty()) {
        (_, true) => path.to_string(),
        (true, false) => seg.to_string(),
        (false, false) => format!("{path}.{seg}"),
    }
}

/// A valid experiment, or every problem found in it.
pub type LoadResult = Result<Experiment, Vec<Diagnostic>>;
