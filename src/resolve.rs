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

/// The losses layer's weighted losses for a distill node's `losses:`. `seed` seeds CRD's
/// negative sampler (the node's seed).
pub fn losses(spec_losses: &spec::Losses, seed: u64) -> Vec<crate::losses::WeightedLoss> {
    use crate::losses::{self as l, LossConfig, WeightedLoss};
    let projector = |p: spec::Projector| match p {
        spec::Projector::Linear => l::ProjectorKind::Linear,
        spec::Projector::Mocov2 => l::ProjectorKind::MocoV2,
        spec::Projector::Simclr => l::ProjectorKind::SimClr,
        spec::Projector::Simclrv2 => l::ProjectorKind::SimClrV2,
    };
    spec_losses
        .0
        .iter()
        .map(|loss| match *loss {
            spec::Loss::Ce { weight, label_smoothing } => {
                WeightedLoss::new(weight, LossConfig::Ce(l::CeConfig { label_smoothing }))
            }
            spec::Loss::Kd { weight, temperature } => {
                WeightedLoss::new(weight, LossConfig::Kd(l::KdConfig { temperature }))
            }
            spec::Loss::AlignUniform { weight, alpha, t, projector: p, dim } => WeightedLoss::new(
                weight,
                LossConfig::AlignUniform(l::AlignUniformConfig {
                    projector: projector(p),
                    dim: dim as usize,
                    alpha,
                    t,
                    ..l::AlignUniformConfig::default()
                }),
            ),
            spec::Loss::Crd { weight, projector: p, dim, nce_k, nce_t, momentum } => WeightedLoss::new(
                weight,
                LossConfig::Crd(l::CrdConfig {
                    projector: projector(p),
                    feat_dim: dim as usize,
                    nce_k: nce_k as usize,
                    nce_t,
                    momentum,
                    seed,
                }),
            ),
            // `weight` weighs the logit term, `embed_weight` the feature term (the paper's l4, l2).
            spec::Loss::Srrl { weight, embed_weight, connector } => WeightedLoss::new(
                1.0,
                LossConfig::Srrl(l::SrrlConfig {
                    connector: match connector {
                        spec::Connector::Mlp => l::ConnectorKind::Mlp,
                        spec::Connector::Mlp2 => l::ConnectorKind::Mlp2,
                    },
                    embed_weight,
                    logits_weight: weight,
                }),
            ),
            spec::Loss::Fitnet { weight, regressor } => {
                WeightedLoss::new(weight, LossConfig::FitNet(l::FeatureConfig { regressor }))
            }
            spec::Loss::Cosine { weight, regressor } => {
                WeightedLoss::new(weight, LossConfig::Cosine(l::FeatureConfig { regressor }))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn distill_losses(yaml_losses: &str) -> spec::Losses {
        let text = format!(
            "datasets: {{ d: {{ source: builtin/digits }} }}\nmodels: {{ m: {{ arch: mlp, hidden: [8] }} }}\nnodes:\n  t: {{ train: {{ model: m, data: d }} }}\n  s: {{ distill: {{ teacher: t, student: m, data: d, losses: {yaml_losses} }} }}\n"
        );
        let exp = spec::load_str(std::path::Path::new("x.yaml"), &text).unwrap();
        match &exp.node("s").unwrap().kind {
            spec::NodeKind::Distill(d) => d.losses.clone(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn spec_presets_are_the_losses_layers_presets() {
        for name in spec::PRESETS {
            let mut ours = losses(&distill_losses(name), 0);
            let mut theirs = crate::losses::preset(name).expect("preset exists");
            let key = |w: &crate::losses::WeightedLoss| w.config.name();
            ours.sort_by_key(key);
            theirs.sort_by_key(key);
            // CRD's sampler seed is the node's; the preset's default projector is RepDistiller's.
            assert_eq!(ours, theirs, "preset {name}");
        }
    }

    #[test]
    fn settings_reach_the_losses_layer() {
        let got = losses(
            &distill_losses("{ kd: { weight: 2, temperature: 3 }, srrl: { weight: 0.5, embed_weight: 4 } }"),
            9,
        );
        assert_eq!(
            got[0],
            crate::losses::WeightedLoss::new(
                2.0,
                crate::losses::LossConfig::Kd(crate::losses::KdConfig { temperature: 3.0 })
            )
        );
        let crate::losses::LossConfig::Srrl(s) = &got[1].config else { panic!() };
        assert_eq!((got[1].weight, s.embed_weight, s.logits_weight), (1.0, 4.0, 0.5));
    }
}
