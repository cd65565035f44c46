//! resolve: the spec's settings -> the configs of the layers that act on them.
//!
//! The spec layer owns what a file may say; each lower layer owns plain config types. This is
//! the one place that maps between them, so neither side depends on the other.

use crate::data::{self, FingerprintCache};
use crate::graph::CacheKey;
use crate::spec::{self, DatasetSpec, SourceKind};

/// The data layer's selection for a dataset of the spec. `exp_seed` is the experiment's seed
/// (a dataset without `seed:` uses it). Paths stay as written: the data layer resolves them
/// against the experiment's folder.
pub fn dataset_config(d: &DatasetSpec, exp_seed: u64) -> data::DatasetConfig {
    let path = |p: &Option<String>| std::path::PathBuf::from(p.as_deref().unwrap_or("."));
    let source = match d.source {
        SourceKind::BuiltinDigits => data::Source::BuiltinDigits,
        SourceKind::FashionMnist => data::Source::Idx {
            path: d
                .path
                .as_ref()
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| data::DEBIAN_FASHION_MNIST_DIR.into()),
            flavor: data::IdxFlavor::FashionMnist,
        },
        SourceKind::Idx => data::Source::Idx { path: path(&d.path), flavor: data::IdxFlavor::Mnist },
        SourceKind::MnistJson => data::Source::MnistJson { path: path(&d.path) },
        SourceKind::Cifar10 => data::Source::Cifar10 { path: path(&d.path) },
        SourceKind::Cifar100 => data::Source::Cifar100 {
            path: path(&d.path),
            labels: match d.labels {
                Some(spec::Cifar100Labels::Coarse) => data::Cifar100Labels::Coarse,
                _ => data::Cifar100Labels::Fine,
            },
        },
        SourceKind::Folder => data::Source::ImageFolder {
            root: path(&d.path),
            split: match (&d.train_list, &d.test_list) {
                (Some(tr), Some(te)) => data::FolderSplit::Lists { train: tr.into(), test: te.into() },
                _ => data::FolderSplit::FirstFraction(d.split_fraction.unwrap_or(0.8)),
            },
            image_size: d.image_size.unwrap_or(224) as usize,
        },
    };
    let split = match d.split {
        spec::Split::Train => data::Split::Train,
        spec::Split::Test => data::Split::Test,
        spec::Split::All => data::Split::All,
    };
    let mut cfg = data::DatasetConfig::new(source, split);
    cfg.classes = d.classes.as_ref().map(|cs| {
        cs.iter()
            .map(|c| match c {
                spec::ClassRef::Index(i) => data::ClassRef::Index(*i),
                spec::ClassRef::Name(n) => data::ClassRef::Name(n.clone()),
            })
            .collect()
    });
    cfg.per_class = d.per_class.map(|n| n as usize);
    cfg.fraction = d.fraction;
    cfg.seed = d.seed.unwrap_or(exp_seed);
    if let Some(h) = d.holdout {
        cfg.holdout.fraction = h;
    }
    cfg
}

/// Content fingerprints of the spec's datasets, for the graph's cache keys: computed once per
/// file (cached by path, size and modification time in `cache`).
pub fn fingerprint(
    exp: &spec::Experiment,
    cache: &FingerprintCache,
) -> impl Fn(&str, &DatasetSpec) -> Result<CacheKey, String> {
    move |_name, d| {
        let cfg = dataset_config(d, exp.seed);
        data::fingerprint_with_cache(&cfg, exp.base_dir(), cache)
            .map(|f| CacheKey(f.0))
            .map_err(|e| e.to_string())
    }
}
