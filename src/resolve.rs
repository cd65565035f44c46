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

/// The keys of the spec's datasets, for the graph's cache keys ([`dataset_key`]): content
/// fingerprints computed once per file (cached by path, size and modification time in `cache`).
pub fn fingerprint(
    exp: &spec::Experiment,
    cache: &FingerprintCache,
) -> impl Fn(&str, &DatasetSpec) -> Result<CacheKey, String> {
    move |_name, d| {
        let cfg = dataset_config(d, exp.seed);
        data::fingerprint_with_cache(&cfg, exp.base_dir(), cache)
            .map(|f| dataset_key(&f, d, exp.seed))
            .map_err(|e| e.to_string())
    }
}

/// A dataset's cache key: the content fingerprint of its selection (which files, which records,
/// which images) and every setting of the dataset, since each can change what a node trained on
/// it computes (`transforms` and its `normalize` values, `class_names`, sizes...). Only `path`
/// is left out: the content it points at is hashed, so moving the data keeps the key.
pub fn dataset_key(content: &data::Fingerprint, d: &DatasetSpec, exp_seed: u64) -> CacheKey {
    let mut settings = serde_json::to_value(d).expect("dataset settings serialise");
    if let Some(m) = settings.as_object_mut() {
        m.remove("path");
        // The selection seed a dataset without `seed:` takes from the experiment.
        m.insert("seed".into(), d.seed.unwrap_or(exp_seed).into());
    }
    CacheKey::of(&serde_json::json!({
        "format": crate::graph::FORMAT_VERSION,
        "content": content.to_hex(),
        "settings": settings,
    }))
}

/// The losses layer's weighted losses for a distill node's `losses:` (the spec reads the
/// losses layer's own settings); `seed` seeds CRD's negative sampler unless its settings do.
pub fn losses(spec_losses: &spec::Losses, seed: u64) -> Vec<crate::losses::WeightedLoss> {
    let mut out = spec_losses.0.clone();
    for l in &mut out {
        l.config.seed_unset(seed);
    }
    out
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
            // CRD's sampler takes the node's seed (0 here).
            theirs.iter_mut().for_each(|l| l.config.seed_unset(0));
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
        // srrl's weight weighs its logits term; embed_weight its feature term.
        assert_eq!((got[1].weight, s.embed_weight), (0.5, 4.0));
    }
}

/// The engine's model for a spec architecture, given the data's shape and class count.
pub fn model_config(
    m: &spec::ModelSpec,
    in_channels: usize,
    image_size: usize,
    num_classes: usize,
) -> crate::engine::ModelConfig {
    model_template(m).config(in_channels, image_size, num_classes)
}

/// A spec architecture with every default filled in (base widths, dropout, the image-size rules
/// of `stem: auto` and ViT patches): what a job trains, and so what its key hashes.
pub fn model_template(m: &spec::ModelSpec) -> crate::job::ModelTemplate {
    use crate::engine::{Arch, Stem, VitPreset};
    use crate::job::{ModelTemplate, SizeRule};
    // `stem: auto`: the CIFAR stem up to 64x64 images, ImageNet's above.
    let stem = |s: spec::Stem| match s {
        spec::Stem::Cifar => (Stem::Cifar, None),
        spec::Stem::Imagenet => (Stem::ImageNet, None),
        spec::Stem::Auto => (Stem::Cifar, Some(SizeRule::Stem { cifar_up_to: 64 })),
    };
    let (arch, by_image_size) = match m {
        spec::ModelSpec::Mlp { hidden } => {
            (Arch::Mlp { hidden: hidden.iter().map(|&h| h as usize).collect() }, None)
        }
        spec::ModelSpec::Cnn { channels } => {
            (Arch::Cnn { channels: channels.iter().map(|&c| c as usize).collect() }, None)
        }
        spec::ModelSpec::Resnet { depth, width, stem: s, .. } => {
            // The engine scales each depth's base width (16 for the CIFAR ResNet-8, 64 otherwise).
            let base = if *depth == 8 { 16.0 } else { 64.0 };
            let width_mult = width.map(|w| w as f32 / base).unwrap_or(1.0);
            let (stem, rule) = stem(*s);
            (Arch::ResNet { depth: *depth as usize, width_mult, stem }, rule)
        }
        spec::ModelSpec::Mobilenetv2 { width_mult, stem: s, .. } => {
            let (stem, rule) = stem(*s);
            (Arch::MobileNetV2 { width_mult: *width_mult as f32, stem, dropout: 0.2 }, rule)
        }
        spec::ModelSpec::Vit { preset, patch_size, depth, heads, dim, .. } => {
            // Small images get small patches (an 8x8 digit in 16x16 patches would be one token).
            let rule =
                patch_size.is_none().then_some(SizeRule::Patch { small_up_to: 32, small: 4, large: 16 });
            let arch = Arch::Vit {
                preset: match preset {
                    spec::VitPreset::Tiny => VitPreset::Tiny,
                    spec::VitPreset::Small => VitPreset::Small,
                    spec::VitPreset::B16 => VitPreset::B16,
                },
                patch_size: patch_size.map(|p| p as usize).unwrap_or(16),
                depth: depth.map(|d| d as usize),
                heads: heads.map(|h| h as usize),
                dim: dim.map(|d| d as usize),
            };
            (arch, rule)
        }
    };
    ModelTemplate { arch, by_image_size }
}

/// The engine's optimiser and schedule for a node's training settings.
pub fn trainer_config(
    optimizer: &spec::OptimizerSpec,
    schedule: &spec::ScheduleSpec,
    epochs: u32,
    warmup_epochs: u32,
    grad_clip: Option<f64>,
) -> crate::engine::TrainerConfig {
    use crate::engine::{Anneal, OptimizerConfig, ScheduleConfig, StepEvery, TrainerConfig};
    let every = |s: &spec::StepEvery| match s {
        spec::StepEvery::Epoch => StepEvery::Epoch,
        spec::StepEvery::Step => StepEvery::Step,
    };
    let optimizer = match *optimizer {
        spec::OptimizerSpec::Sgd { lr, momentum, nesterov, weight_decay } => {
            OptimizerConfig::Sgd { lr, momentum, nesterov, weight_decay }
        }
        spec::OptimizerSpec::Adamw { lr, beta1, beta2, eps, weight_decay } => {
            OptimizerConfig::AdamW { lr, betas: (beta1, beta2), eps, weight_decay }
        }
    };
    let lr = optimizer.lr();
    let mut cfg = TrainerConfig::new(optimizer);
    (cfg.schedule, cfg.step_every) = match schedule {
        spec::ScheduleSpec::None => (ScheduleConfig::None, StepEvery::Epoch),
        spec::ScheduleSpec::Cosine { step_every } => (ScheduleConfig::Cosine, every(step_every)),
        spec::ScheduleSpec::Multistep { milestones, gamma } => (
            ScheduleConfig::MultiStep {
                milestones: milestones.iter().map(|&m| m as usize).collect(),
                gamma: *gamma,
            },
            StepEvery::Epoch,
        ),
        spec::ScheduleSpec::Linear { end_factor, step_every } => {
            (ScheduleConfig::Linear { end_factor: *end_factor }, every(step_every))
        }
        spec::ScheduleSpec::Exponential { gamma, step_every } => {
            (ScheduleConfig::Exponential { gamma: *gamma }, every(step_every))
        }
        spec::ScheduleSpec::Onecycle {
            max_lr,
            pct_start,
            anneal_strategy,
            div_factor,
            final_div_factor,
            cycle_momentum,
            base_momentum,
            max_momentum,
            step_every,
        } => (
            ScheduleConfig::OneCycle {
                max_lr: max_lr.unwrap_or(lr),
                pct_start: *pct_start,
                div_factor: *div_factor,
                final_div_factor: *final_div_factor,
                anneal: match anneal_strategy {
                    spec::AnnealStrategy::Cos => Anneal::Cos,
                    spec::AnnealStrategy::Linear => Anneal::Linear,
                },
                momentum: cycle_momentum.then_some((*base_momentum, *max_momentum)),
            },
            every(step_every),
        ),
    };
    cfg.epochs = epochs as usize;
    cfg.warmup_epochs = warmup_epochs as usize;
    cfg.grad_clip = grad_clip;
    cfg
}

/// Per-image training transforms of a dataset plus the node's batch augmentation; inputs are
/// normalised with `normalize` (the training set's statistics unless the spec gives values).
pub fn train_transform(
    d: &DatasetSpec,
    augment: &spec::AugmentSpec,
    normalize: data::Normalize,
) -> Result<data::TransformConfig, String> {
    let mut t = data::TransformConfig { normalize: Some(normalize), ..data::TransformConfig::default() };
    for tr in &d.transforms {
        match tr {
            spec::TransformSpec::Resize { size } => t.resize = Some(*size as usize),
            spec::TransformSpec::PadCrop { size, padding } => {
                t.random_crop = Some(data::RandomCrop { size: *size as usize, padding: *padding as usize })
            }
            spec::TransformSpec::RandomResizedCrop { size } => t.random_resized_crop = Some(*size as usize),
            spec::TransformSpec::CenterCrop { size } => t.center_crop = Some(*size as usize),
            spec::TransformSpec::Flip {} => t.hflip = true,
            spec::TransformSpec::Normalize { mean: Some(m), std: Some(s) } => {
                t.normalize = Some(data::Normalize::Given {
                    mean: m.iter().map(|&x| x as f32).collect(),
                    std: s.iter().map(|&x| x as f32).collect(),
                })
            }
            spec::TransformSpec::Normalize { .. } => {}
        }
    }
    if let spec::AugmentSpec::Dsa { strategy, mode } = augment {
        let mode = match mode {
            spec::DsaMode::S => data::DsaMode::Single,
            spec::DsaMode::M => data::DsaMode::Multiple,
        };
        t.dsa = Some(data::DsaConfig::from_strategy(strategy, mode).map_err(|e| e.to_string())?);
    }
    Ok(t)
}

mod checks;
mod jobs;
pub use checks::{MemoryLimit, data_checks, data_checks_within, device_checks, device_checks_with};
pub use jobs::{Digest, path_digest, resolve_jobs};

/// The graph of `exp` with every node resolved into a job and keyed: `graph::build` (references,
/// cycles, dataset fingerprints), then [`resolve_jobs`]. `digest` hashes the weights files the
/// spec names ([`path_digest`] reads nothing).
pub fn build(
    exp: &spec::Experiment,
    fingerprint: &dyn Fn(&str, &DatasetSpec) -> Result<CacheKey, String>,
    digest: Digest<'_>,
) -> Result<crate::graph::Graph, Vec<crate::diag::Diagnostic>> {
    let mut g = crate::graph::build(exp, fingerprint)?;
    resolve_jobs(exp, &mut g, digest)?;
    Ok(g)
}

/// The sha256 of a weights file, cached by path, size and modification time in `cache`.
pub fn file_digest(cache: &FingerprintCache) -> impl Fn(&std::path::Path) -> Result<String, String> + '_ {
    move |p| {
        let meta = std::fs::metadata(p).map_err(|e| e.to_string())?;
        if !meta.is_file() {
            return Err("not a regular file".into());
        }
        cache.file_digest(p).map(|d| crate::data::Fingerprint(d).to_hex()).map_err(|e| e.to_string())
    }
}
