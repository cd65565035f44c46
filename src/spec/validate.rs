//! Range and consistency checks on typed values (what serde's types cannot say).

use std::collections::HashSet;

use super::join;
use super::types::*;
use super::yaml_index::SpanIndex;
use crate::diag::{Code, Diagnostic, fmt_num};
use crate::losses::Check as Range;

/// What a node's checks need to know beyond the node itself.
pub(super) struct NodeContext<'a> {
    /// The names of the node's losses as written, in order (`losses.2` is `kd`).
    pub loss_names: &'a [String],
    /// Models whose `pretrained:` file gives them first weights.
    pub pretrained_models: &'a HashSet<String>,
}

/// Upper bounds of size-like settings (docs/spec.md, "Limits"): far above what an experiment
/// uses, low enough that no single value makes an allocation abort (`image_size: 4294967295`).
/// The memory a whole model needs is estimated elsewhere; these bound each number alone.
pub(super) mod max {
    /// Pixels of a side: dataset `image_size`, transform `size`, generate `image_size`, ViT `patch_size`.
    pub const IMAGE_SIDE: u64 = 4096;
    /// Batches a gradient-accumulation group sums (`accumulate`).
    pub const ACCUMULATE: u64 = 65536;
    /// Epochs between checkpoints (`checkpoint_every`).
    pub const CHECKPOINT_EVERY: u64 = 1_000_000;
    /// Pixels of `pad_crop` padding.
    pub const PADDING: u64 = 1024;
    /// Images a class kept by `per_class`.
    pub const PER_CLASS: u64 = 1_000_000;
    /// Images a batch (training and evaluation).
    pub const BATCH_SIZE: u64 = 65_536;
    /// Passes over the data; warm-up and milestones are within them.
    pub const EPOCHS: u64 = 100_000;
    /// Channels or units of a layer: MLP `hidden`, CNN `channels`, ResNet `width`.
    pub const WIDTH: u64 = 65_536;
    /// Entries of MLP `hidden` / CNN `channels` (layers).
    pub const LAYERS: usize = 256;
    /// Embedding sizes: projector `dim` (align_uniform, crd), ViT `dim`.
    pub const DIM: u64 = crate::losses::MAX_DIM;
    /// ViT blocks (`depth`) and attention `heads`.
    pub const VIT_DEPTH: u64 = 256;
    pub const HEADS: u64 = 1024;
    /// MobileNetV2 `width_mult`.
    pub const WIDTH_MULT: f64 = 16.0;
    /// Synthetic images relative to the real set (`ratio` of generate and `synthetic`).
    pub const RATIO: f64 = 100.0;
    /// Seconds a plugin may run (a week).
    pub const TIMEOUT: u64 = 7 * 24 * 3600;
}

/// Letters, digits, `_` and `-`, 1 to 64 of them, not starting with `-`.
pub fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('-')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub(super) struct Check<'a> {
    diags: &'a mut Vec<Diagnostic>,
    spans: &'a SpanIndex,
    node: &'a str,
}

impl<'a> Check<'a> {
    pub fn new(diags: &'a mut Vec<Diagnostic>, spans: &'a SpanIndex, node: &'a str) -> Check<'a> {
        Check { diags, spans, node }
    }

    fn err(&mut self, code: Code, path: &str, msg: String, help: &str) {
        let by_key = matches!(code, Code::MissingKey | Code::Unsupported);
        let loc = if by_key { self.spans.key(path) } else { self.spans.value(path) };
        self.diags.push(Diagnostic::new(code, path, msg).with_node(self.node).with_help(help).at(loc));
    }

    fn positive(&mut self, path: &str, v: f64) {
        if !(v > 0.0 && v.is_finite()) {
            self.err(
                Code::OutOfRange,
                path,
                format!("expected > 0, got {}", fmt_num(v)),
                "use a positive number",
            );
        }
    }

    /// `0 < v <= max`.
    fn positive_at_most(&mut self, path: &str, v: f64, max: f64) {
        self.positive(path, v);
        if v > max && v.is_finite() {
            let msg = format!("expected <= {}, got {}", fmt_num(max), fmt_num(v));
            self.err(Code::OutOfRange, path, msg, "see docs/spec.md (\"Limits\") for this key's range");
        }
    }

    fn non_negative(&mut self, path: &str, v: f64) {
        if !(v >= 0.0 && v.is_finite()) {
            self.err(
                Code::OutOfRange,
                path,
                format!("expected >= 0, got {}", fmt_num(v)),
                "use zero or a positive number",
            );
        }
    }

    /// `lo <= v < hi` (or `<= hi` when `hi_inclusive`).
    fn within(&mut self, path: &str, v: f64, lo: f64, hi: f64, hi_inclusive: bool) {
        let ok = v >= lo && (v < hi || (hi_inclusive && v == hi));
        if !ok {
            let close = if hi_inclusive { "]" } else { ")" };
            self.err(
                Code::OutOfRange,
                path,
                format!("expected a value in [{}, {}{close}, got {}", fmt_num(lo), fmt_num(hi), fmt_num(v)),
                "see docs/spec.md for this key's range",
            );
        }
    }

    /// `lo < v <= hi`.
    fn within_open_closed(&mut self, path: &str, v: f64, lo: f64, hi: f64) {
        if !(v > lo && v <= hi) {
            self.err(
                Code::OutOfRange,
                path,
                format!("expected a value in ({}, {}], got {}", fmt_num(lo), fmt_num(hi), fmt_num(v)),
                "see docs/spec.md for this key's range",
            );
        }
    }

    /// `min <= v <= max`.
    fn count(&mut self, path: &str, v: u64, min: u64, max: u64) {
        if v < min {
            self.err(Code::OutOfRange, path, format!("expected >= {min}, got {v}"), "use a larger value");
        } else if v > max {
            self.err(
                Code::OutOfRange,
                path,
                format!("expected <= {max}, got {v}"),
                "see docs/spec.md (\"Limits\") for this key's range",
            );
        }
    }

    pub fn dataset(&mut self, p: &str, d: &DatasetSpec) {
        if d.source.needs_path() && d.path.is_none() {
            self.err(
                Code::MissingKey,
                p,
                "missing key `path`".to_string(),
                "this source reads files: add `path:` (relative to the experiment file)",
            );
        }
        if let Some(n) = d.per_class {
            self.count(&join(p, "per_class"), n.into(), 1, max::PER_CLASS);
        }
        if let Some(f) = d.fraction {
            if !(f > 0.0 && f <= 1.0) {
                self.err(
                    Code::OutOfRange,
                    &join(p, "fraction"),
                    format!("expected a value in (0, 1], got {}", fmt_num(f)),
                    "a fraction of each class: 0.1 keeps 10%",
                );
            }
        }
        if d.per_class.is_some() && d.fraction.is_some() {
            self.err(
                Code::Conflict,
                &join(p, "fraction"),
                "`per_class` and `fraction` both given".to_string(),
                "keep one of them",
            );
        }
        if let Some(f) = d.split_fraction {
            if !(f > 0.0 && f < 1.0) {
                self.err(
                    Code::OutOfRange,
                    &join(p, "split_fraction"),
                    format!("expected a value in (0, 1), got {}", fmt_num(f)),
                    "the fraction of each class that goes to `train`",
                );
            }
        }
        let lists = d.train_list.is_some() as u8 + d.test_list.is_some() as u8;
        if (lists > 0 || d.split_fraction.is_some()) && d.source != SourceKind::Folder {
            self.err(
                Code::Conflict,
                p,
                "`train_list`/`test_list`/`split_fraction` apply to `source: folder` only".to_string(),
                "other sources come with their own splits: use `split:`",
            );
        }
        if d.source == SourceKind::Folder {
            if lists == 1 {
                self.err(
                    Code::MissingKey,
                    p,
                    "give both `train_list` and `test_list`".to_string(),
                    "or use `split_fraction`",
                );
            }
            if lists == 2 && d.split_fraction.is_some() {
                self.err(
                    Code::Conflict,
                    &join(p, "split_fraction"),
                    "lists and `split_fraction` both given".to_string(),
                    "keep one way of splitting",
                );
            }
            if lists == 0 && d.split_fraction.is_none() {
                self.err(
                    Code::MissingKey,
                    p,
                    "an image folder needs a split".to_string(),
                    "add `train_list` + `test_list`, or `split_fraction: 0.8`",
                );
            }
        }
        if d.labels.is_some() && d.source != SourceKind::Cifar100 {
            self.err(
                Code::Conflict,
                &join(p, "labels"),
                "`labels` applies to `source: cifar100` only".to_string(),
                "remove it",
            );
        }
        if let Some(h) = d.holdout {
            if !(h > 0.0 && h < 1.0) {
                self.err(
                    Code::OutOfRange,
                    &join(p, "holdout"),
                    format!("expected a value in (0, 1), got {}", fmt_num(h)),
                    "the fraction of each class held out as `test`",
                );
            }
        }
        if let Some(s) = d.image_size {
            self.count(&join(p, "image_size"), s.into(), 1, max::IMAGE_SIDE);
            if d.source != SourceKind::Folder {
                self.err(
                    Code::Conflict,
                    &join(p, "image_size"),
                    "`image_size` applies to `source: folder` only".to_string(),
                    "resize other sources with a `resize` transform",
                );
            }
        }
        if let Some(classes) = &d.classes {
            if classes.is_empty() {
                self.err(
                    Code::OutOfRange,
                    &join(p, "classes"),
                    "empty class list".to_string(),
                    "list at least one class or remove the key",
                );
            }
            let mut seen = std::collections::HashSet::new();
            for (i, c) in classes.iter().enumerate() {
                if !seen.insert(format!("{c:?}")) {
                    self.err(
                        Code::Conflict,
                        &format!("{p}.classes.{i}"),
                        "class listed twice".to_string(),
                        "list each class once",
                    );
                }
            }
        }
        for (i, t) in d.transforms.iter().enumerate() {
            let tp = format!("{p}.transforms.{i}");
            match t {
                TransformSpec::Resize { size }
                | TransformSpec::RandomResizedCrop { size }
                | TransformSpec::CenterCrop { size } => {
                    self.count(&join(&tp, "size"), (*size).into(), 1, max::IMAGE_SIDE)
                }
                TransformSpec::PadCrop { size, padding } => {
                    self.count(&join(&tp, "size"), (*size).into(), 1, max::IMAGE_SIDE);
                    self.count(&join(&tp, "padding"), (*padding).into(), 0, max::PADDING);
                }
                TransformSpec::Flip {} => {}
                TransformSpec::Normalize { mean, std } => {
                    if mean.is_some() != std.is_some() {
                        self.err(
                            Code::MissingKey,
                            &tp,
                            "give both `mean` and `std`, or neither".to_string(),
                            "neither uses the dataset's own statistics",
                        );
                    }
                    for (j, s) in std.iter().flatten().enumerate() {
                        self.positive(&format!("{tp}.std.{j}"), *s);
                    }
                }
            }
        }
    }

    pub fn model(&mut self, p: &str, m: &ModelSpec) {
        if m.pretrained().is_some_and(|f| f.trim().is_empty()) {
            self.err(
                Code::OutOfRange,
                &join(p, "pretrained"),
                "expected a file path, got an empty string".to_string(),
                "give the safetensors file (relative to the experiment file), or remove the key",
            );
        }
        match m {
            ModelSpec::Mlp { hidden } => self.widths(&join(p, "hidden"), hidden),
            ModelSpec::Cnn { channels } => self.widths(&join(p, "channels"), channels),
            ModelSpec::Resnet { depth, width, .. } => {
                if !RESNET_DEPTHS.contains(depth) {
                    self.err(
                        Code::OutOfRange,
                        &join(p, "depth"),
                        format!("unsupported resnet depth {depth}"),
                        "use one of 8, 10, 18, 34, 50",
                    );
                }
                if let Some(w) = width {
                    self.count(&join(p, "width"), (*w).into(), 1, max::WIDTH);
                }
            }
            ModelSpec::Mobilenetv2 { width_mult, .. } => {
                self.positive_at_most(&join(p, "width_mult"), *width_mult, max::WIDTH_MULT)
            }
            ModelSpec::Vit { patch_size, depth, heads, dim, .. } => {
                let sizes = [
                    ("patch_size", patch_size, max::IMAGE_SIDE),
                    ("depth", depth, max::VIT_DEPTH),
                    ("heads", heads, max::HEADS),
                    ("dim", dim, max::DIM),
                ];
                for (k, v, most) in sizes {
                    if let Some(v) = v {
                        self.count(&join(p, k), (*v).into(), 1, most);
                    }
                }
                if let (Some(d), Some(h)) = (dim, heads) {
                    if *h > 0 && d % h != 0 {
                        self.err(
                            Code::OutOfRange,
                            &join(p, "heads"),
                            format!("dim {d} is not divisible by heads {h}"),
                            "choose heads that divide dim",
                        );
                    }
                }
            }
        }
    }

    fn widths(&mut self, p: &str, w: &[u32]) {
        if w.is_empty() {
            self.err(Code::OutOfRange, p, "expected at least one width".to_string(), "e.g. [32, 64]");
        }
        if w.len() > max::LAYERS {
            self.err(
                Code::OutOfRange,
                p,
                format!("expected at most {} layers, got {}", max::LAYERS, w.len()),
                "see docs/spec.md (\"Limits\")",
            );
            return;
        }
        for (i, x) in w.iter().enumerate() {
            self.count(&format!("{p}.{i}"), (*x).into(), 1, max::WIDTH);
        }
    }

    fn optimizer(&mut self, p: &str, o: &OptimizerSpec) {
        match o {
            OptimizerSpec::Sgd { lr, momentum, weight_decay, nesterov } => {
                self.positive(&join(p, "lr"), *lr);
                self.within(&join(p, "momentum"), *momentum, 0.0, 1.0, false);
                self.non_negative(&join(p, "weight_decay"), *weight_decay);
                if *nesterov && *momentum == 0.0 {
                    self.err(
                        Code::Conflict,
                        &join(p, "nesterov"),
                        "nesterov needs momentum > 0".to_string(),
                        "set `momentum:` or drop `nesterov`",
                    );
                }
            }
            OptimizerSpec::Adamw { lr, beta1, beta2, eps, weight_decay } => {
                self.positive(&join(p, "lr"), *lr);
                self.within(&join(p, "beta1"), *beta1, 0.0, 1.0, false);
                self.within(&join(p, "beta2"), *beta2, 0.0, 1.0, false);
                self.positive(&join(p, "eps"), *eps);
                self.non_negative(&join(p, "weight_decay"), *weight_decay);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn loop_settings(
        &mut self,
        p: &str,
        epochs: u32,
        batch_size: u32,
        optimizer: &OptimizerSpec,
        schedule: &ScheduleSpec,
        warmup: u32,
        grad_clip: Option<f64>,
        augment: &AugmentSpec,
    ) {
        self.count(&join(p, "epochs"), epochs.into(), 1, max::EPOCHS);
        self.count(&join(p, "batch_size"), batch_size.into(), 1, max::BATCH_SIZE);
        self.optimizer(&join(p, "optimizer"), optimizer);
        if warmup > epochs {
            self.err(
                Code::OutOfRange,
                &join(p, "warmup_epochs"),
                format!("warm-up of {warmup} epochs is longer than the {epochs} epochs"),
                "use fewer warm-up epochs",
            );
        }
        if let Some(c) = grad_clip {
            self.positive(&join(p, "grad_clip"), c);
        }
        let sp = |k: &str| format!("{p}.schedule.{k}");
        match schedule {
            ScheduleSpec::None | ScheduleSpec::Cosine { .. } => {}
            ScheduleSpec::Linear { end_factor, .. } => {
                self.within(&sp("end_factor"), *end_factor, 0.0, 1.0, true)
            }
            ScheduleSpec::Exponential { gamma, .. } => {
                self.within_open_closed(&sp("gamma"), *gamma, 0.0, 1.0)
            }
            ScheduleSpec::Onecycle {
                max_lr,
                pct_start,
                div_factor,
                final_div_factor,
                cycle_momentum,
                base_momentum,
                max_momentum,
                ..
            } => {
                if let Some(m) = max_lr {
                    self.positive(&sp("max_lr"), *m);
                }
                // (0, 1): the rising phase and the falling one both have steps.
                if *pct_start > 0.0 {
                    self.within(&sp("pct_start"), *pct_start, 0.0, 1.0, false);
                } else {
                    self.positive(&sp("pct_start"), *pct_start);
                }
                self.positive(&sp("div_factor"), *div_factor);
                self.positive(&sp("final_div_factor"), *final_div_factor);
                if *cycle_momentum {
                    self.within(&sp("base_momentum"), *base_momentum, 0.0, 1.0, false);
                    self.within(&sp("max_momentum"), *max_momentum, 0.0, 1.0, false);
                    if base_momentum > max_momentum {
                        self.err(
                            Code::OutOfRange,
                            &sp("base_momentum"),
                            format!("base_momentum {base_momentum} is above max_momentum {max_momentum}"),
                            "the momentum cycles between base_momentum (at the peak lr) and max_momentum",
                        );
                    }
                }
                if warmup > 0 {
                    self.err(
                        Code::Conflict,
                        &join(p, "warmup_epochs"),
                        "onecycle has its own warm-up phase (the first pct_start of the run)".to_string(),
                        "leave warmup_epochs out with schedule: onecycle, and set pct_start instead",
                    );
                }
            }
            ScheduleSpec::Multistep { milestones, gamma } => {
                let mp = format!("{p}.schedule.milestones");
                if milestones.is_empty() {
                    self.err(
                        Code::OutOfRange,
                        &mp,
                        "expected at least one milestone".to_string(),
                        "e.g. [150, 180, 210]",
                    );
                }
                if milestones.windows(2).any(|w| w[0] >= w[1]) {
                    self.err(
                        Code::OutOfRange,
                        &mp,
                        "milestones must increase".to_string(),
                        "list epochs in increasing order",
                    );
                }
                if let Some(m) = milestones.iter().find(|&&m| m == 0 || m >= epochs) {
                    self.err(
                        Code::OutOfRange,
                        &mp,
                        format!("milestone {m} is outside 1..{epochs}"),
                        "milestones are epochs within the run",
                    );
                }
                self.within_open_closed(&format!("{p}.schedule.gamma"), *gamma, 0.0, 1.0);
            }
        }
        if let AugmentSpec::Dsa { strategy, .. } = augment {
            let sp = format!("{p}.augment.strategy");
            for fam in strategy.split('_') {
                if !DSA_FAMILIES.contains(&fam) {
                    let help = match crate::diag::did_you_mean(fam, DSA_FAMILIES) {
                        Some(s) => {
                            format!("did you mean `{s}`? families: {}", DSA_FAMILIES.join(", "))
                        }
                        None => format!("families: {}", DSA_FAMILIES.join(", ")),
                    };
                    self.err(
                        Code::UnknownVariant,
                        &sp,
                        format!("unknown augmentation family `{fam}`"),
                        &help,
                    );
                }
            }
        }
    }

    pub fn node_kind(&mut self, p: &str, k: &NodeKind, ctx: &NodeContext) {
        match k {
            NodeKind::Train(s) => {
                self.loop_settings(
                    p,
                    s.epochs,
                    s.batch_size,
                    &s.optimizer,
                    &s.schedule,
                    s.warmup_epochs,
                    s.grad_clip,
                    &s.augment,
                );
                self.within(&join(p, "label_smoothing"), s.label_smoothing, 0.0, 1.0, false);
                let has_weights = s.init.is_some() || ctx.pretrained_models.contains(&s.model.0);
                self.checkpoint_every(p, s.checkpoint_every);
                self.recipe(
                    p,
                    s.accumulate,
                    s.ema.as_ref(),
                    s.head,
                    has_weights,
                    "`init: <node>` or the model's `pretrained: <file>`",
                );
                if s.freeze == Freeze::Backbone && !has_weights {
                    self.err(
                        Code::Conflict,
                        &join(p, "freeze"),
                        "freezing the backbone of a randomly initialised model".to_string(),
                        "add `init: <node>` (linear probing), give the model `pretrained: <file>`, or remove `freeze`",
                    );
                }
            }
            NodeKind::Finetune(s) => {
                self.loop_settings(
                    p,
                    s.epochs,
                    s.batch_size,
                    &s.optimizer,
                    &s.schedule,
                    s.warmup_epochs,
                    s.grad_clip,
                    &s.augment,
                );
                self.within(&join(p, "label_smoothing"), s.label_smoothing, 0.0, 1.0, false);
                self.positive(&join(p, "head_lr_mult"), s.head_lr_mult);
                if let Some(m) = &s.synthetic {
                    self.positive_at_most(&format!("{p}.synthetic.ratio"), m.ratio, max::RATIO);
                }
                self.checkpoint_every(p, s.checkpoint_every);
                self.recipe(p, s.accumulate, s.ema.as_ref(), s.head, true, "");
                match (&s.from, &s.weights, &s.model) {
                    (Some(_), None, None) | (None, Some(_), Some(_)) => {}
                    (None, None, _) => self.err(
                        Code::MissingKey,
                        p,
                        "missing key `from`".to_string(),
                        "fine-tune `from: <node>`, or from `weights: <file.safetensors>` with `model: <model>`",
                    ),
                    (None, Some(_), None) => self.err(
                        Code::MissingKey,
                        p,
                        "missing key `model`".to_string(),
                        "`weights:` needs `model:` to say which architecture the file holds",
                    ),
                    (Some(_), _, _) => self.err(
                        Code::Conflict,
                        &join(p, "from"),
                        "`from` together with `weights`/`model`".to_string(),
                        "a node's weights already say their model: keep `from` or `weights` + `model`",
                    ),
                }
            }
            NodeKind::Distill(s) => {
                self.loop_settings(
                    p,
                    s.epochs,
                    s.batch_size,
                    &s.optimizer,
                    &s.schedule,
                    s.warmup_epochs,
                    s.grad_clip,
                    &s.augment,
                );
                if let Some(m) = &s.synthetic {
                    self.positive_at_most(&format!("{p}.synthetic.ratio"), m.ratio, max::RATIO);
                }
                let has_weights = s.student_init.is_some() || ctx.pretrained_models.contains(&s.student.0);
                self.checkpoint_every(p, s.checkpoint_every);
                self.recipe(
                    p,
                    s.accumulate,
                    s.ema.as_ref(),
                    s.head,
                    has_weights,
                    "`student_init: <node>` or the student model's `pretrained: <file>`",
                );
                self.losses(&join(p, "losses"), &s.losses, ctx.loss_names);
            }
            NodeKind::Generate(s) => {
                if !s.prompt.contains("{c}") {
                    self.err(
                        Code::OutOfRange,
                        &join(p, "prompt"),
                        format!("prompt `{}` has no `{{c}}`", s.prompt),
                        "put `{c}` where the class name goes, e.g. \"a picture of a {c}\"",
                    );
                }
                match (s.ratio, s.per_class) {
                    (Some(_), Some(_)) => self.err(
                        Code::Conflict,
                        &join(p, "per_class"),
                        "both `ratio` and `per_class`".to_string(),
                        "give one: `ratio` (times the real images a class) or `per_class` (a count)",
                    ),
                    (Some(r), None) => self.positive_at_most(&join(p, "ratio"), r, max::RATIO),
                    (None, Some(n)) => self.count(&join(p, "per_class"), n.into(), 1, max::PER_CLASS),
                    (None, None) => {}
                }
                self.count(&join(p, "preview"), s.preview.into(), 0, 64);
                let g = join(p, "generator");
                match (&s.generator.node, &s.generator.plugin) {
                    (Some(_), Some(_)) => self.err(
                        Code::Conflict,
                        &join(&g, "plugin"),
                        "both `node` and `plugin`".to_string(),
                        "give one: `node: <generator node>` or `plugin: NAME`",
                    ),
                    (None, None) => self.err(
                        Code::MissingKey,
                        &g,
                        "no generator".to_string(),
                        "add `node: <generator node>` (built in) or `plugin: NAME` (docs/plugins.md)",
                    ),
                    (Some(_), None) if !s.generator.params.is_empty() => self.err(
                        Code::Conflict,
                        &join(&g, "params"),
                        "`params` are a plugin's; a generator node takes its settings itself".to_string(),
                        "remove `params`, or set them on the generator node",
                    ),
                    (None, Some(name)) => self.plugin_name(&join(&g, "plugin"), name),
                    _ => {}
                }
                self.count(&join(&g, "timeout"), s.generator.timeout, 1, max::TIMEOUT);
            }
            NodeKind::Generator(s) => {
                self.count(&join(p, "latent"), s.latent.into(), 1, max::DIM);
                if s.hidden.is_empty() || s.hidden.len() > max::LAYERS {
                    self.err(
                        Code::OutOfRange,
                        &join(p, "hidden"),
                        format!("{} hidden layers", s.hidden.len()),
                        "give 1 to 256 widths, e.g. [512, 256]",
                    );
                }
                for (i, w) in s.hidden.iter().enumerate() {
                    self.count(&format!("{p}.hidden.{i}"), (*w).into(), 1, max::WIDTH);
                }
                self.count(&join(p, "epochs"), s.epochs.into(), 1, max::EPOCHS);
                self.count(&join(p, "batch_size"), s.batch_size.into(), 1, max::BATCH_SIZE);
                self.positive(&join(p, "lr"), s.lr);
                self.non_negative(&join(p, "beta"), s.beta);
            }
            NodeKind::Evaluate(s) => {
                self.count(&join(p, "batch_size"), s.batch_size.into(), 1, max::BATCH_SIZE);
                if s.metrics.is_empty() {
                    self.err(
                        Code::OutOfRange,
                        &join(p, "metrics"),
                        "no metrics".to_string(),
                        "e.g. [top1, top5, loss]",
                    );
                }
            }
            NodeKind::Report(s) => {
                if s.rows.is_empty() {
                    self.err(
                        Code::OutOfRange,
                        &join(p, "rows"),
                        "a report needs at least one row".to_string(),
                        "list the nodes to compare",
                    );
                }
                if s.columns.is_empty() {
                    self.err(
                        Code::OutOfRange,
                        &join(p, "columns"),
                        "a report needs at least one column".to_string(),
                        "e.g. [accuracy]",
                    );
                }
            }
            NodeKind::Plugin(s) => {
                self.plugin_name(&join(p, "name"), &s.name);
                for role in s.inputs.keys() {
                    if !plain_name(role) {
                        self.err(
                            Code::OutOfRange,
                            &format!("{p}.inputs.{role}"),
                            format!("input role `{role}` is not a plain name"),
                            "use letters, digits, `_` and `-` (the plugin reads its inputs by these names)",
                        );
                    }
                }
                self.count(&join(p, "timeout"), s.timeout, 1, max::TIMEOUT);
            }
        }
    }

    /// A plugin's name: a folder under plugins/ or `distillery-NAME`, so a plain name.
    fn plugin_name(&mut self, path: &str, name: &str) {
        if !plain_name(name) {
            self.err(
                Code::OutOfRange,
                path,
                format!("plugin name `{name}` is not a plain name"),
                "name a folder under plugins/ (letters, digits, `_`, `-`); docs/plugins.md",
            );
        }
    }

    fn checkpoint_every(&mut self, p: &str, every: crate::spec::types::CheckpointEvery) {
        if let crate::spec::types::CheckpointEvery::Epochs(n) = every {
            self.count(&join(p, "checkpoint_every"), n, 1, max::CHECKPOINT_EVERY);
        }
    }

    /// `accumulate`, `ema` and `head` of a training node; `has_weights`: the model starts from
    /// other weights (`head` means nothing otherwise), `weights_help` says how to give some.
    fn recipe(
        &mut self,
        p: &str,
        accumulate: u32,
        ema: Option<&EmaSpec>,
        head: Option<Head>,
        has_weights: bool,
        weights_help: &str,
    ) {
        self.count(&join(p, "accumulate"), accumulate.into(), 1, max::ACCUMULATE);
        if let Some(e) = ema {
            // (0, 1): 0 is no average, 1 would never move from the first weights.
            if !(e.decay > 0.0 && e.decay < 1.0) {
                self.err(
                    Code::OutOfRange,
                    &format!("{p}.ema.decay"),
                    format!("expected a value in (0, 1), got {}", fmt_num(e.decay)),
                    "the share of the average kept at each step, e.g. 0.999",
                );
            }
        }
        if head.is_some() && !has_weights {
            self.err(
                Code::Conflict,
                &join(p, "head"),
                "`head` with a randomly initialised model (there is no head to keep or replace)".to_string(),
                &format!("start from other weights ({weights_help}), or remove `head`"),
            );
        }
    }

    fn losses(&mut self, p: &str, losses: &Losses, names: &[String]) {
        if losses.0.is_empty() {
            self.err(
                Code::OutOfRange,
                p,
                "no losses".to_string(),
                "use a preset (kd, crd, srrl, align_uniform) or a map such as `{ ce: 1, kd: 1 }`",
            );
            return;
        }
        for (i, loss) in losses.0.iter().enumerate() {
            let name = names.get(i).map(String::as_str).unwrap_or(loss.name());
            let lp = join(p, name);
            self.non_negative(&join(&lp, "weight"), loss.weight);
            // Each loss declares its ranges (losses::LossConfig::checks); they are worded here.
            for (field, check) in loss.config.checks() {
                let at = join(&lp, field);
                match check {
                    Range::Positive(v) => self.positive(&at, v),
                    Range::NonNegative(v) => self.non_negative(&at, v),
                    Range::Within { v, lo, hi, hi_inclusive } => self.within(&at, v, lo, hi, hi_inclusive),
                    Range::Count { v, min, max } => self.count(&at, v, min, max),
                }
            }
        }
        if losses.0.iter().all(|l| l.weight == 0.0) {
            self.err(
                Code::OutOfRange,
                p,
                "every loss has weight 0".to_string(),
                "give at least one loss a positive weight",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::diag::Code;
    use crate::spec::load_str;

    const HEAD: &str = "\
datasets: { d: { source: builtin/digits } }
models:
  m: { arch: mlp, hidden: [8] }
  r: { arch: resnet, depth: 8, pretrained: weights/r8.safetensors }
nodes:
  t: { train: { model: m, data: d } }
";

    /// Every diagnostic of `HEAD` + `rest`: code, key path, node, and `line:col`.
    fn check(rest: &str) -> Vec<(Code, String, Option<String>, String)> {
        let text = format!("{HEAD}{rest}");
        let Err(diags) = load_str(Path::new("x.yaml"), &text) else { return Vec::new() };
        let at =
            |l: Option<crate::diag::Location>| l.map_or(String::new(), |l| format!("{}:{}", l.line, l.col));
        diags.into_iter().map(|d| (d.code, d.path, d.node, at(d.location))).collect()
    }

    fn one(code: Code, path: &str, node: Option<&str>, at: &str) -> (Code, String, Option<String>, String) {
        (code, path.to_string(), node.map(str::to_string), at.to_string())
    }

    const GEN: &str =
        "  gm: { generator: { data: d } }\n  g: { generate: { generator: { node: gm }, data: d } }\n";

    #[test]
    fn generate_plugin_and_synthetic_are_checked_where_written() {
        assert_eq!(check(GEN), []);
        let got = check("  g: { generate: { generator: {}, data: d, prompt: x, ratio: 1, per_class: 3 } }\n");
        assert_eq!(
            got.iter().map(|d| (d.0, d.1.as_str())).collect::<Vec<_>>(),
            [
                (Code::OutOfRange, "nodes.g.generate.prompt"),
                (Code::Conflict, "nodes.g.generate.per_class"),
                (Code::MissingKey, "nodes.g.generate.generator"),
            ]
        );
        let got = check("  g: { generate: { generator: { plugin: ../x, timeout: 0 }, data: d } }\n");
        assert_eq!(
            got.iter().map(|d| (d.0, d.1.as_str())).collect::<Vec<_>>(),
            [
                (Code::OutOfRange, "nodes.g.generate.generator.plugin"),
                (Code::OutOfRange, "nodes.g.generate.generator.timeout")
            ]
        );
        let got = check("  p: { plugin: { name: x, inputs: { a/b: t } } }\n");
        assert_eq!(
            got.iter().map(|d| (d.0, d.1.as_str())).collect::<Vec<_>>(),
            [(Code::OutOfRange, "nodes.p.plugin.inputs.a/b")]
        );
        let kd = "  k: { distill: { teacher: t, student: m, data: d, losses: kd, synthetic: { from: g, ratio: 0 } } }\n";
        let got = check(&format!("{GEN}{kd}"));
        assert_eq!(got, [one(Code::OutOfRange, "nodes.k.distill.synthetic.ratio", Some("k"), "9:93")]);
        let got = check("  gm: { generator: { data: d, hidden: [], lr: 0 } }\n");
        assert_eq!(
            got.iter().map(|d| (d.0, d.1.as_str())).collect::<Vec<_>>(),
            [(Code::OutOfRange, "nodes.gm.generator.hidden"), (Code::OutOfRange, "nodes.gm.generator.lr")]
        );
    }

    #[test]
    fn freezing_needs_first_weights_from_init_or_a_pretrained_model() {
        assert_eq!(check("  lp: { train: { model: r, data: d, freeze: backbone } }\n"), []);
        assert_eq!(check("  lp: { train: { model: m, data: d, init: t, freeze: backbone } }\n"), []);
        assert_eq!(
            check("  lp: { train: { model: m, data: d, freeze: backbone } }\n"),
            [one(Code::Conflict, "nodes.lp.train.freeze", Some("lp"), "7:45")]
        );
    }

    #[test]
    fn pretrained_is_a_non_empty_path() {
        for (arch, col) in [("resnet, depth: 8", 44), ("mobilenetv2", 39), ("vit", 31)] {
            let text =
                HEAD.replace("  m: {", &format!("  e: {{ arch: {arch}, pretrained: \" \" }}\n  m: {{"));
            let Err(d) = load_str(Path::new("x.yaml"), &text) else { panic!("{arch}: accepted") };
            let got: Vec<_> =
                d.iter().map(|d| (d.code, d.path.as_str(), d.location.as_ref().map(|l| l.col))).collect();
            assert_eq!(got, [(Code::OutOfRange, "models.e.pretrained", Some(col))], "{arch}");
            assert_eq!(d[0].message, "expected a file path, got an empty string");
        }
        let text = HEAD.replace("weights/r8.safetensors", "[a]");
        let Err(d) = load_str(Path::new("x.yaml"), &text) else { panic!("accepted") };
        assert_eq!((d[0].code, d[0].path.as_str()), (Code::WrongType, "models.r.pretrained"));
    }
}
