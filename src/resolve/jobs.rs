//! Every node instance of a graph -> a [`Job`] (resolve once, up front), and its cache key.

use std::collections::HashMap;
use std::path::Path;

use petgraph::graph::NodeIndex;

use super::{dataset_config, losses, model_template, train_transform, trainer_config};
use crate::data::Normalize;
use crate::diag::{Code, Diagnostic};
use crate::graph::{CacheKey, Graph, Vertex};
use crate::job::{
    Column, DistillWork, EvaluateWork, GenerateCount, GenerateWork, GeneratorSource, GeneratorWork, HeadPlan,
    InputSource, Job, JobInput, LoopSettings, ModelSetup, Place, PluginWork, ReportRow, ReportWork,
    TableFormat, TeacherCostMode, TeacherOutputsWork, TrainWork, Weights, WeightsFile, Work,
};
use crate::spec::{self, Experiment, NodeKind};

/// The sha256 (hex) of a file the spec names (pre-trained weights): its content is part of the
/// key, its path is not.
pub type Digest<'a> = &'a dyn Fn(&Path) -> Result<String, String>;

/// A digest of the path alone, for graphs built without reading files (tests, `spec_fingerprint`).
pub fn path_digest(p: &Path) -> Result<String, String> {
    Ok(CacheKey::of(&serde_json::json!({ "path": p.to_string_lossy() })).hex())
}

/// Resolves every node vertex of `graph` in topological order and sets its key (each job's
/// inputs need their keys first). Problems that can only be seen here (a weights file that
/// cannot be read, a kind this build cannot run) are located diagnostics.
pub fn resolve_jobs(exp: &Experiment, graph: &mut Graph, digest: Digest<'_>) -> Result<(), Vec<Diagnostic>> {
    let known = Known {
        nodes: exp.nodes.iter().map(|n| (n.name.as_str(), n)).collect(),
        class_names: Default::default(),
    };
    let nodes = &known.nodes;
    let mut diags = Vec::new();
    let order: Vec<NodeIndex> = graph.node_order().collect();
    // Each dataset's selection, made once (a dataset is read by many nodes).
    let selections: HashMap<&str, crate::data::DatasetConfig> =
        exp.datasets.iter().map(|(n, d)| (n.as_str(), dataset_config(d, exp.seed))).collect();
    for ix in order {
        let name = graph.dag[ix].name().to_string();
        let inputs = job_inputs(graph, ix, nodes, &selections);
        let resolved = match nodes.get(name.as_str()) {
            Some(node) => node_job(exp, &known, node, &inputs, digest),
            // A derived vertex: a teacher's outputs on a dataset.
            None => teacher_outputs_job(exp, graph, ix, &name),
        };
        match resolved {
            Ok(mut job) => {
                job.inputs = inputs;
                if let Work::Report(r) = &mut job.work {
                    if r.teacher_cost == TeacherCostMode::Amortised
                        || r.rows.iter().any(|row| row.teacher_cost == Some(TeacherCostMode::Amortised))
                    {
                        r.students_per_teacher = students_per_teacher(exp, graph);
                    }
                }
                let canonical = job.key_value();
                let key = CacheKey::of(&canonical);
                job.key = key.hex();
                graph.canonical.insert(ix, canonical);
                graph.keys.insert(ix, key);
                graph.jobs.insert(ix, job);
            }
            Err(d) => {
                diags.extend(d);
                // Dependants still get a key (their own problems are reported too).
                graph.keys.insert(ix, CacheKey::of(&serde_json::json!({ "unresolved": name })));
            }
        }
    }
    if diags.is_empty() { Ok(()) } else { Err(diags) }
}

fn job_inputs(
    graph: &Graph,
    ix: NodeIndex,
    nodes: &HashMap<&str, &spec::Node>,
    selections: &HashMap<&str, crate::data::DatasetConfig>,
) -> Vec<JobInput> {
    let mut out = Vec::new();
    for (role, t) in graph.inputs.get(&ix).into_iter().flatten() {
        let name = graph.dag[*t].name().to_string();
        let source = match &graph.dag[*t] {
            Vertex::Dataset { .. } => InputSource::Dataset(selections[name.as_str()].clone()),
            Vertex::Node { .. } => {
                let node = nodes.get(name.as_str());
                InputSource::Entry {
                    dims: node
                        .map(|n| n.assignment.iter().filter(|(k, _)| k != "seed").cloned().collect())
                        .unwrap_or_default(),
                    seed: node.map(|n| n.seed),
                    model: node.is_some_and(|n| n.kind.yields_model()),
                }
            }
        };
        out.push(JobInput { role: role.clone(), name, key: graph.key(*t).hex(), source });
    }
    out
}

fn place(exp: &Experiment, path: String) -> Place {
    let location = exp.locate_value(&path).map(|l| format!("{}:{}:{}", l.file.path.display(), l.line, l.col));
    Place { path, location }
}

fn skeleton(exp: &Experiment, name: &str, kind: &str, at: Place, seed: Option<u64>, work: Work) -> Job {
    Job {
        name: name.to_string(),
        kind: kind.to_string(),
        experiment: exp.name.clone(),
        key: String::new(),
        seed,
        device: exp.device.to_string(),
        base_dir: exp.base_dir().to_path_buf(),
        at,
        settings: Default::default(),
        inputs: Vec::new(),
        work,
    }
}

/// A model of `models:` as the job trains it: the architecture with its defaults, and its
/// `pretrained:` file unless the weights come from a node.
fn model_setup(
    exp: &Experiment,
    model: &str,
    init_role: Option<&str>,
    digest: Digest<'_>,
    settings: &mut std::collections::BTreeMap<String, Place>,
    diags: &mut Vec<Diagnostic>,
) -> ModelSetup {
    let m = &exp.models[model];
    settings.insert("model".into(), place(exp, format!("models.{model}")));
    let pretrained = match m {
        spec::ModelSpec::Resnet { pretrained, .. }
        | spec::ModelSpec::Mobilenetv2 { pretrained, .. }
        | spec::ModelSpec::Vit { pretrained, .. } => pretrained.as_deref(),
        _ => None,
    };
    let weights = match (init_role, pretrained) {
        (None, Some(p)) => {
            let path = format!("models.{model}.pretrained");
            settings.insert("pretrained".into(), place(exp, path.clone()));
            weights_file(exp, p, "pretrained", &path, digest, diags)
        }
        _ => None,
    };
    ModelSetup { arch: Some(model_template(m)), init: init_role.map(str::to_string), weights, head: None }
}

fn weights_file(
    exp: &Experiment,
    file: &str,
    setting: &str,
    path: &str,
    digest: Digest<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<WeightsFile> {
    let file_path = exp.base_dir().join(file);
    match digest(&file_path) {
        Ok(sha256) => Some(WeightsFile { setting: setting.into(), file_path, sha256 }),
        Err(e) => {
            diags.push(
                Diagnostic::new(Code::Data, path, format!("cannot read the weights file {}: {e}", file_path.display()))
                    .with_help("give a safetensors file with torchvision parameter names, relative to the experiment file")
                    .at(exp.locate_value(path)),
            );
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn loop_settings(
    exp: &Experiment,
    node: &spec::Node,
    data: &str,
    optimizer: &spec::OptimizerSpec,
    schedule: &spec::ScheduleSpec,
    (epochs, warmup_epochs, grad_clip, batch_size, drop_last): (u32, u32, Option<f64>, u32, bool),
    augment: &spec::AugmentSpec,
    (label_smoothing, freeze_backbone, head_lr_mult, validate): (f64, bool, f64, bool),
    (accumulate, ema, checkpoint_every): (u32, Option<&spec::EmaSpec>, spec::CheckpointEvery),
    diags: &mut Vec<Diagnostic>,
) -> LoopSettings {
    let transform = train_transform(&exp.datasets[data], augment, Normalize::Dataset).unwrap_or_else(|e| {
        let path = format!("{}.augment", node.spec_path());
        diags.push(
            Diagnostic::new(Code::OutOfRange, &path, e).with_node(&node.name).at(exp.locate_value(&path)),
        );
        Default::default()
    });
    LoopSettings {
        trainer: trainer_config(optimizer, schedule, epochs, warmup_epochs, grad_clip),
        batch_size: batch_size as usize,
        drop_last,
        label_smoothing,
        transform,
        freeze_backbone,
        head_lr_mult,
        validate,
        accumulate: accumulate as usize,
        ema: ema.map(|e| crate::engine::EmaConfig { decay: e.decay, output: e.output }),
        checkpoint_every: match checkpoint_every {
            spec::CheckpointEvery::Auto => None,
            // validate bounds it to 10^6.
            spec::CheckpointEvery::Epochs(n) => Some(n.min(u32::MAX as u64) as u32),
        },
        synthetic: None,
    }
}

/// What resolving every node shares, so that no node's lookups scan the experiment: the
/// instances by name, and each dataset's class names, read once.
struct Known<'a> {
    nodes: HashMap<&'a str, &'a spec::Node>,
    class_names: std::cell::RefCell<HashMap<String, Result<std::rc::Rc<Vec<String>>, String>>>,
}

impl Known<'_> {
    /// The class names of dataset `name` in label order (`data::class_names`), read once.
    fn class_names(&self, exp: &Experiment, name: &str) -> Result<std::rc::Rc<Vec<String>>, String> {
        if let Some(r) = self.class_names.borrow().get(name) {
            return r.clone();
        }
        let d = &exp.datasets[name];
        let r = crate::data::class_names(&super::dataset_config(d, exp.seed), exp.base_dir())
            .map(std::rc::Rc::new)
            .map_err(|e| e.to_string());
        self.class_names.borrow_mut().insert(name.to_string(), r.clone());
        r
    }
}

fn node_job(
    exp: &Experiment,
    known: &Known<'_>,
    node: &spec::Node,
    inputs: &[JobInput],
    digest: Digest<'_>,
) -> Result<Job, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut settings = std::collections::BTreeMap::new();
    let has = |role: &str| inputs.iter().any(|i| i.role == role);
    // train, finetune and distill name their loop settings alike.
    macro_rules! loop_of {
        ($s:ident, $label_smoothing:expr, $freeze:expr, $head_lr_mult:expr, $validate:expr) => {
            loop_settings(
                exp,
                node,
                &$s.data.0,
                &$s.optimizer,
                &$s.schedule,
                ($s.epochs, $s.warmup_epochs, $s.grad_clip, $s.batch_size, $s.drop_last),
                &$s.augment,
                ($label_smoothing, $freeze, $head_lr_mult, $validate),
                ($s.accumulate, $s.ema.as_ref(), $s.checkpoint_every),
                &mut diags,
            )
        };
    }
    let work = match &node.kind {
        NodeKind::Train(s) => {
            settings.insert("data".into(), place(exp, format!("datasets.{}", s.data.0)));
            let init = s.init.as_ref().map(|_| "init");
            let mut model = model_setup(exp, &s.model.0, init, digest, &mut settings, &mut diags);
            model.head = head_plan(exp, known, node, s.head, &model, inputs, &s.data.0, &mut diags);
            let freeze = s.freeze == spec::Freeze::Backbone;
            let mut settings = loop_of!(s, s.label_smoothing, freeze, 1.0, s.val.is_some());
            settings.synthetic = s.synthetic.as_ref().map(|m| m.ratio);
            Work::Train(TrainWork { model, settings })
        }
        NodeKind::Finetune(s) => {
            settings.insert("data".into(), place(exp, format!("datasets.{}", s.data.0)));
            let model = match (&s.from, &s.weights, &s.model) {
                (Some(_), _, _) => {
                    ModelSetup { arch: None, init: Some("from".into()), weights: None, head: None }
                }
                (None, Some(w), Some(m)) => {
                    let mut setup =
                        model_setup(exp, &m.0, Some("weights"), digest, &mut settings, &mut diags);
                    setup.init = None;
                    let path = format!("{}.weights", node.spec_path());
                    settings.insert("weights".into(), place(exp, path.clone()));
                    setup.weights = weights_file(exp, w, "weights", &path, digest, &mut diags);
                    setup
                }
                // validate reports a finetune without `from` or `weights` + `model`.
                _ => {
                    let path = node.spec_path();
                    diags.push(
                        Diagnostic::new(
                            Code::MissingKey,
                            &path,
                            "finetune needs `from` or `weights` + `model`",
                        )
                        .with_node(&node.name)
                        .at(exp.locate_value(&path)),
                    );
                    ModelSetup { arch: None, init: None, weights: None, head: None }
                }
            };
            let mut model = model;
            model.head = head_plan(exp, known, node, s.head, &model, inputs, &s.data.0, &mut diags);
            let freeze = s.freeze == spec::Freeze::Backbone;
            let mut settings = loop_of!(s, s.label_smoothing, freeze, s.head_lr_mult, s.val.is_some());
            settings.synthetic = s.synthetic.as_ref().map(|m| m.ratio);
            Work::Train(TrainWork { model, settings })
        }
        NodeKind::Distill(s) => {
            settings.insert("data".into(), place(exp, format!("datasets.{}", s.data.0)));
            settings.insert("teacher".into(), place(exp, format!("{}.teacher", node.spec_path())));
            settings.insert("losses".into(), place(exp, format!("{}.losses", node.spec_path())));
            let init = s.student_init.as_ref().map(|_| "student_init");
            let mut student = model_setup(exp, &s.student.0, init, digest, &mut settings, &mut diags);
            student.head = head_plan(exp, known, node, s.head, &student, inputs, &s.data.0, &mut diags);
            let mut settings = loop_of!(s, 0.0, false, 1.0, s.val.is_some());
            settings.synthetic = s.synthetic.as_ref().map(|m| m.ratio);
            Work::Distill(DistillWork {
                student,
                losses: losses(&s.losses, node.seed),
                settings,
                cached_teacher: has("teacher_outputs"),
            })
        }
        NodeKind::Evaluate(e) => {
            let mut metrics: Vec<String> = e
                .metrics
                .iter()
                .map(|m| {
                    match m {
                        spec::Metric::Top1 => "accuracy",
                        spec::Metric::Top5 => "top5",
                        spec::Metric::Loss => "loss",
                        spec::Metric::PerClass => "per_class",
                    }
                    .to_string()
                })
                .collect();
            metrics.sort();
            metrics.dedup();
            let weights = weights_choice(e.weights);
            if weights == Weights::Best {
                let path = format!("{}.weights", node.spec_path());
                best_kept(exp, known, node, &path, inputs.iter().filter(|i| i.role == "model"), &mut diags);
            }
            Work::Evaluate(EvaluateWork { weights, batch_size: e.batch_size as usize, metrics })
        }
        NodeKind::Report(r) => Work::Report({
            let weights = weights_choice(r.weights);
            if weights == Weights::Best {
                let path = format!("{}.weights", node.spec_path());
                if r.eval.is_none() {
                    diags.push(
                        Diagnostic::new(
                            Code::Conflict,
                            &path,
                            "`weights: best` without `eval:` (it chooses the weights `eval` evaluates)",
                        )
                        .with_node(&node.name)
                        .with_help("add `eval: <dataset>`, or remove `weights`")
                        .at(exp.locate_value(&path)),
                    );
                }
                let models = inputs.iter().filter(|i| {
                    i.role.starts_with("rows/") && matches!(i.source, InputSource::Entry { model: true, .. })
                });
                best_kept(exp, known, node, &path, models, &mut diags);
            }
            ReportWork {
                title: r.title.clone(),
                rows: r
                    .rows
                    .iter()
                    .enumerate()
                    .map(|(i, row)| ReportRow {
                        label: row.label().to_string(),
                        role: format!("rows/{i}"),
                        teacher_cost: row.teacher_cost().map(teacher_cost_mode),
                    })
                    .collect(),
                columns: r.columns.iter().map(|c| column(*c)).collect(),
                format: match r.format {
                    spec::TableFormat::Md => TableFormat::Md,
                    spec::TableFormat::Csv => TableFormat::Csv,
                    spec::TableFormat::Latex => TableFormat::Latex,
                },
                eval: r.eval.as_ref().map(|d| d.0.clone()),
                weights,
                pivot: pivot_key(exp, node, r, inputs, &mut diags),
                teacher_cost: teacher_cost_mode(r.teacher_cost),
                // Filled in by `resolve_jobs`, which sees the whole graph.
                students_per_teacher: Default::default(),
                compare_to: compare_row(exp, node, r, &mut diags),
            }
        }),
        NodeKind::Generate(g) => {
            settings.insert("data".into(), place(exp, format!("datasets.{}", g.data.0)));
            let generator = match (&g.generator.node, &g.generator.plugin) {
                (_, Some(name)) => {
                    let path = format!("{}.generator.plugin", node.spec_path());
                    settings.insert("generator".into(), place(exp, path.clone()));
                    match plugin_ref(exp, node, name, &path, &mut diags) {
                        Some(p) if p.produces == "files" => {
                            diags.push(
                                Diagnostic::new(
                                    Code::Conflict,
                                    &path,
                                    format!("plugin `{name}` produces files, not images"),
                                )
                                .with_node(&node.name)
                                .with_help("a generator plugin's manifest says `\"produces\": \"images\"` (docs/plugins.md)")
                                .at(exp.locate_value(&path)),
                            );
                            GeneratorSource::Node
                        }
                        Some(plugin) => GeneratorSource::Plugin {
                            plugin,
                            params: g.generator.params.clone(),
                            timeout_s: g.generator.timeout,
                        },
                        None => GeneratorSource::Node,
                    }
                }
                _ => {
                    let path = format!("{}.generator.node", node.spec_path());
                    settings.insert("generator".into(), place(exp, path));
                    GeneratorSource::Node
                }
            };
            let count = match (g.per_class, g.ratio) {
                (Some(n), _) => GenerateCount::PerClass(n as usize),
                (None, r) => GenerateCount::Ratio(r.unwrap_or(1.0)),
            };
            Work::Generate(GenerateWork {
                generator,
                prompt: g.prompt.clone(),
                count,
                preview: g.preview as usize,
            })
        }
        NodeKind::Generator(g) => {
            settings.insert("data".into(), place(exp, format!("datasets.{}", g.data.0)));
            Work::Generator(GeneratorWork {
                cvae: match g.model {
                    spec::GeneratorModel::Cvae => crate::engine::CvaeConfig {
                        latent: g.latent as usize,
                        hidden: g.hidden.iter().map(|&h| h as usize).collect(),
                    },
                },
                epochs: g.epochs as usize,
                batch_size: g.batch_size as usize,
                lr: g.lr,
                beta: g.beta,
            })
        }
        NodeKind::Plugin(p) => {
            let path = format!("{}.name", node.spec_path());
            settings.insert("plugin".into(), place(exp, path.clone()));
            match plugin_ref(exp, node, &p.name, &path, &mut diags) {
                Some(plugin) => {
                    if plugin.produces == "images" {
                        diags.push(
                            Diagnostic::new(
                                Code::Conflict,
                                &path,
                                format!("plugin `{}` produces images for a generate node", p.name),
                            )
                            .with_node(&node.name)
                            .with_help(format!(
                                "use it as `generate: {{ generator: {{ plugin: {} }}, data: <dataset> }}`",
                                p.name
                            ))
                            .at(exp.locate_value(&path)),
                        );
                    }
                    Work::Plugin(PluginWork { plugin, params: p.params.clone(), timeout_s: p.timeout })
                }
                None => return Err(diags),
            }
        }
    };
    synthetic_checks(exp, known, node, inputs, &work, &mut diags);
    if !diags.is_empty() {
        return Err(diags);
    }
    let seed = node.kind.is_seeded().then_some(node.seed);
    let mut job = skeleton(exp, &node.name, node.kind.name(), place(exp, node.spec_path()), seed, work);
    job.settings = settings;
    Ok(job)
}

/// What can be known of synthetic data before running: a generator node knows the classes a
/// generate node asks for, a generate node makes enough images for the ratio a training node
/// mixes in (same dataset), and a plugin consumes the kinds of inputs it is given.
fn synthetic_checks(
    exp: &Experiment,
    known: &Known<'_>,
    node: &spec::Node,
    inputs: &[JobInput],
    work: &Work,
    diags: &mut Vec<Diagnostic>,
) {
    let err = |diags: &mut Vec<Diagnostic>, code: Code, path: String, msg: String, help: &str| {
        diags.push(
            Diagnostic::new(code, &path, msg)
                .with_node(&node.name)
                .with_help(help)
                .at(exp.locate_value(&path)),
        )
    };
    let input_node = |role: &str| {
        inputs.iter().find(|i| i.role == role).and_then(|i| known.nodes.get(i.name.as_str()).copied())
    };
    match (&node.kind, work) {
        (NodeKind::Generate(g), Work::Generate(w)) if w.generator == GeneratorSource::Node => {
            let Some(gn) = input_node("generator/node") else { return };
            let NodeKind::Generator(gs) = &gn.kind else { return };
            if let (Ok(have), Ok(want)) =
                (known.class_names(exp, &gs.data.0), known.class_names(exp, &g.data.0))
            {
                let missing: Vec<&String> = want.iter().filter(|c| !have.contains(c)).collect();
                if !missing.is_empty() {
                    let shown: Vec<String> = missing.iter().take(5).map(|c| format!("{c:?}")).collect();
                    err(
                        diags,
                        Code::Conflict,
                        format!("{}.generator.node", node.spec_path()),
                        format!(
                            "generator `{}` is trained on `{}`, which has no class {}",
                            gn.base,
                            gs.data.0,
                            shown.join(", ")
                        ),
                        "train the generator on a dataset with every class of the generate node's data",
                    );
                }
            }
        }
        (
            NodeKind::Train(spec::TrainSpec { synthetic: Some(m), data, .. })
            | NodeKind::Finetune(spec::FinetuneSpec { synthetic: Some(m), data, .. })
            | NodeKind::Distill(spec::DistillSpec { synthetic: Some(m), data, .. }),
            _,
        ) => {
            let Some(gn) = input_node("synthetic/from") else { return };
            let NodeKind::Generate(g) = &gn.kind else { return };
            if g.data != *data {
                // Classes are matched by name at run time; sizes depend on both datasets.
                return;
            }
            let made = match (g.per_class, g.ratio) {
                (None, r) => r.unwrap_or(1.0),
                (Some(_), _) => return,
            };
            if m.ratio > made + 1e-9 {
                err(
                    diags,
                    Code::Conflict,
                    format!("{}.synthetic.ratio", node.spec_path()),
                    format!(
                        "ratio {} needs more synthetic images than `{}` makes (ratio {made})",
                        m.ratio, gn.base
                    ),
                    "lower this ratio, or raise the generate node's `ratio`",
                );
            }
        }
        (NodeKind::Plugin(_), Work::Plugin(w)) => {
            let consumes: Vec<&str> = w
                .plugin
                .manifest
                .get("consumes")
                .and_then(|c| c.as_array())
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            // A PATH plugin has no manifest; a manifest without `consumes` takes anything.
            if w.plugin.manifest.get("consumes").is_none() {
                return;
            }
            for i in inputs {
                let kind = match &i.source {
                    InputSource::Dataset(_) => "dataset",
                    InputSource::Entry { model: true, .. } => "model",
                    InputSource::Entry { .. } => "entry",
                };
                let ok = consumes.contains(&kind) || (kind == "model" && consumes.contains(&"entry"));
                if !ok {
                    let role = i.role.strip_prefix("inputs/").unwrap_or(&i.role);
                    err(
                        diags,
                        Code::Conflict,
                        format!("{}.inputs.{role}", node.spec_path()),
                        format!(
                            "plugin `{}` does not take a {kind} (its manifest's `consumes`: {})",
                            w.plugin.name,
                            if consumes.is_empty() { "nothing".to_string() } else { consumes.join(", ") }
                        ),
                        "give it inputs of the kinds it consumes (docs/plugins.md)",
                    );
                }
            }
        }
        _ => {}
    }
}

/// The plugin `name`, found from the experiment's folder, or a located error.
fn plugin_ref(
    exp: &Experiment,
    node: &spec::Node,
    name: &str,
    path: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<crate::job::PluginRef> {
    match crate::plugins::find(exp.base_dir(), name) {
        Ok(p) => Some(p),
        Err(e) => {
            diags.push(
                Diagnostic::new(Code::Data, path, e)
                    .with_node(&node.name)
                    .with_help("add plugins/NAME/plugin.json beside the experiment, or put distillery-NAME on PATH (docs/plugins.md)")
                    .at(exp.locate_value(path)),
            );
            None
        }
    }
}

/// The head of a model that starts from other weights (`None` for a fresh model): `head:` as
/// given, else `keep` when the starting weights were trained on the same class names as this
/// node's data, and `new` otherwise (a weights file's classes are not known: `new`).
fn head_plan(
    exp: &Experiment,
    known: &Known<'_>,
    node: &spec::Node,
    given: Option<spec::Head>,
    setup: &ModelSetup,
    inputs: &[JobInput],
    data: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<HeadPlan> {
    let path = format!("{}.head", node.spec_path());
    let source = match (&setup.init, &setup.weights) {
        (Some(role), _) => inputs.iter().find(|i| &i.role == role).map(|i| i.name.as_str()),
        (None, Some(_)) => None,
        (None, None) => return None,
    };
    let Some(source) = source else {
        // A weights file: safetensors hold no class names.
        let setting = setup.weights.as_ref().map_or("weights", |w| w.setting.as_str());
        return Some(match given {
            Some(spec::Head::Keep) => HeadPlan {
                keep: true,
                why: format!(
                    "set in the spec (the `{setting}` file's head, which must fit this data's classes)"
                ),
            },
            _ => HeadPlan {
                keep: false,
                why: match given {
                    Some(_) => "set in the spec".to_string(),
                    None => format!(
                        "the `{setting}` file says nothing of its classes (head: keep to load its head)"
                    ),
                },
            },
        });
    };
    let names = |dataset: &str| -> Result<std::rc::Rc<Vec<String>>, Box<Diagnostic>> {
        known.class_names(exp, dataset).map_err(|e| {
            let at = format!("datasets.{dataset}");
            Diagnostic::new(
                Code::Data,
                &at,
                format!("cannot read the class names of dataset `{dataset}`: {e}"),
            )
            .with_node(&node.name)
            .with_help("they decide whether the starting weights' head is kept; or set `head: new | keep`")
            .at(exp.locate_value(&at))
            .into()
        })
    };
    let from_data = known.nodes.get(source).and_then(|n| n.kind.data()).map(|d| d.to_string());
    let (ours, theirs) = match (&from_data, given) {
        // An explicit `new` needs no class names.
        (_, Some(spec::Head::New)) => return Some(HeadPlan { keep: false, why: "set in the spec".into() }),
        (Some(fd), _) => match (names(data), names(fd)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                diags.push(*e);
                return None;
            }
        },
        (None, _) => {
            diags.push(
                Diagnostic::new(
                    Code::Conflict,
                    &path,
                    format!("`{source}` trained no model with a head to keep"),
                )
                .with_node(&node.name)
                .at(exp.locate_value(&path)),
            );
            return None;
        }
    };
    let list = |v: &[String]| {
        if v.len() <= 6 { v.join(", ") } else { format!("{}, ... ({} classes)", v[..4].join(", "), v.len()) }
    };
    Some(match given {
        Some(_) if ours.len() != theirs.len() => {
            diags.push(
                Diagnostic::new(
                    Code::Conflict,
                    &path,
                    format!(
                        "head: keep, but `{source}` was trained on {} classes and this node's data has {}",
                        theirs.len(),
                        ours.len()
                    ),
                )
                .with_node(&node.name)
                .with_help("use `head: new` (a fresh head for these classes), or train on the same classes")
                .at(exp.locate_value(&path)),
            );
            return None;
        }
        Some(_) => HeadPlan { keep: true, why: "set in the spec".into() },
        None if ours == theirs => HeadPlan {
            keep: true,
            why: format!("`{source}` was trained on the same classes ({})", list(&ours)),
        },
        None => HeadPlan {
            keep: false,
            why: format!(
                "`{source}` was trained on other classes ({}; this node: {})",
                list(&theirs),
                list(&ours)
            ),
        },
    })
}

fn weights_choice(w: spec::WhichWeights) -> Weights {
    match w {
        spec::WhichWeights::Final => Weights::Final,
        spec::WhichWeights::Best => Weights::Best,
    }
}

/// `weights: best` (at `path`) reads the best-on-validation weights of each of `models`: a node
/// without `val:` keeps none, a located error.
fn best_kept<'a>(
    exp: &Experiment,
    known: &Known<'_>,
    node: &spec::Node,
    path: &str,
    models: impl Iterator<Item = &'a JobInput>,
    diags: &mut Vec<Diagnostic>,
) {
    let mut seen = std::collections::HashSet::new();
    for i in models {
        let Some(n) = known.nodes.get(i.name.as_str()) else { continue };
        if n.kind.validates() || !seen.insert(n.base.clone()) {
            continue;
        }
        diags.push(
            Diagnostic::new(
                Code::Conflict,
                path,
                format!("`weights: best`, but `{}` keeps no best weights (it has no `val:` set)", n.base),
            )
            .with_node(&node.name)
            .with_help(format!(
                "give `{}` a `val: <dataset>` to choose its best epoch on, or use `weights: final`",
                n.base
            ))
            .at(exp.locate_value(path)),
        );
    }
}

/// A report's `pivot:`: a matrix key (not `seed`) that some row's instances have.
fn pivot_key(
    exp: &Experiment,
    node: &spec::Node,
    r: &spec::ReportSpec,
    inputs: &[JobInput],
    diags: &mut Vec<Diagnostic>,
) -> Option<String> {
    let p = r.pivot.as_ref()?;
    let mut keys: Vec<&str> = Vec::new();
    for i in inputs.iter().filter(|i| i.role.starts_with("rows/")) {
        if let InputSource::Entry { dims, .. } = &i.source {
            for (k, _) in dims {
                if !keys.contains(&k.as_str()) {
                    keys.push(k);
                }
            }
        }
    }
    if keys.contains(&p.as_str()) {
        return Some(p.clone());
    }
    let path = format!("{}.pivot", node.spec_path());
    let help = if keys.is_empty() {
        "no row's node is expanded by a matrix key other than `seed`; remove `pivot`".to_string()
    } else {
        format!("use one of: {}", keys.join(", "))
    };
    diags.push(
        Diagnostic::new(
            Code::Conflict,
            &path,
            format!("`pivot: {p}`: no row's instances have that matrix key"),
        )
        .with_node(&node.name)
        .with_help(help)
        .at(exp.locate_value(&path)),
    );
    None
}

/// A report's `compare_to:`: the index of the row it names (by node or label).
fn compare_row(
    exp: &Experiment,
    node: &spec::Node,
    r: &spec::ReportSpec,
    diags: &mut Vec<Diagnostic>,
) -> Option<usize> {
    let want = r.compare_to.as_ref()?;
    let label = |row: &spec::RowSpec| row.label().to_string();
    // Row references point at instances after matrix expansion: compare declared names.
    let base = |n: &str| n.split('[').next().unwrap_or(n).to_string();
    let found = r.rows.iter().position(|row| label(row) == *want || base(&row.node().0) == *want);
    if found.is_none() {
        let path = format!("{}.compare_to", node.spec_path());
        let rows: Vec<String> = r.rows.iter().map(label).collect();
        diags.push(
            Diagnostic::new(
                Code::MissingReference,
                &path,
                format!("`compare_to: {want}` is not one of the report's rows"),
            )
            .with_node(&node.name)
            .with_help(format!("use one of: {}", rows.join(", ")))
            .at(exp.locate_value(&path)),
        );
    }
    found
}

/// The distill instances of the experiment that read each teacher, by the teacher's key: how
/// many of each declared node (teachers not yet keyed are left out: a report only asks about
/// teachers upstream of its rows).
fn students_per_teacher(exp: &Experiment, graph: &Graph) -> crate::job::Sharing {
    let mut out = crate::job::Sharing::new();
    for n in &exp.nodes {
        if let NodeKind::Distill(d) = &n.kind {
            if let Some(k) = graph.get(&d.teacher.0).and_then(|ix| graph.keys.get(&ix)) {
                let students: &mut Vec<(String, usize)> = out.entry(k.hex()).or_default();
                match students.iter_mut().find(|(b, _)| *b == n.base) {
                    Some((_, count)) => *count += 1,
                    None => students.push((n.base.clone(), 1)),
                }
            }
        }
    }
    out
}

fn teacher_cost_mode(t: spec::TeacherCost) -> TeacherCostMode {
    match t {
        spec::TeacherCost::Separate => TeacherCostMode::Separate,
        spec::TeacherCost::Amortised => TeacherCostMode::Amortised,
    }
}

fn column(c: spec::Column) -> Column {
    match c {
        spec::Column::Accuracy => Column::Accuracy,
        spec::Column::Top5 => Column::Top5,
        spec::Column::Loss => Column::Loss,
        spec::Column::TrainSeconds => Column::TrainSeconds,
        spec::Column::ImagesPerSecond => Column::ImagesPerSecond,
        spec::Column::Flops => Column::Flops,
        spec::Column::Params => Column::Params,
        spec::Column::CostSeconds => Column::CostSeconds,
        spec::Column::CostFlops => Column::CostFlops,
        spec::Column::CpuHours => Column::CpuHours,
        spec::Column::GpuHours => Column::GpuHours,
        spec::Column::TeacherSeconds => Column::TeacherSeconds,
        spec::Column::TeacherFlops => Column::TeacherFlops,
    }
}

fn teacher_outputs_job(
    exp: &Experiment,
    graph: &Graph,
    ix: NodeIndex,
    name: &str,
) -> Result<Job, Vec<Diagnostic>> {
    let data = graph.inputs[&ix].iter().find(|(r, _)| r == "data").map(|x| x.1).expect("derived data input");
    let d = &exp.datasets[graph.dag[data].name()];
    // The images as the students see them (nothing random applies, else there is no vertex).
    let transform = train_transform(d, &spec::AugmentSpec::None, Normalize::Dataset).unwrap_or_default();
    let at = place(exp, format!("datasets.{}", graph.dag[data].name()));
    Ok(skeleton(
        exp,
        name,
        "teacher_outputs",
        at,
        None,
        Work::TeacherOutputs(TeacherOutputsWork {
            transform,
            batch_size: 256,
            synthetic: graph.synthetic.get(&ix).copied(),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(text: &str) -> Graph {
        let exp = spec::load_str(Path::new("t.yaml"), text).unwrap();
        super::super::build(&exp, &crate::graph::spec_fingerprint, &path_digest).unwrap()
    }

    fn key_of(g: &Graph, name: &str) -> String {
        g.job(g.get(name).unwrap()).key.clone()
    }

    const SPEC: &str = "datasets: { d: { source: builtin/digits } }\nmodels: { r: { arch: resnet, depth: 8 } }\nnodes:\n  t: { train: { model: r, data: d } }\n";

    #[test]
    fn defaults_are_in_the_key_not_their_spelling() {
        let g = build(SPEC);
        // The default width written out is the same job...
        assert_eq!(key_of(&g, "t"), key_of(&build(&SPEC.replace("depth: 8", "depth: 8, width: 16")), "t"));
        assert_eq!(key_of(&g, "t"), key_of(&build(&SPEC.replace("depth: 8", "depth: 8, stem: auto")), "t"));
        // ...and a changed default (what a new `model_template` would resolve) is another key.
        let mut job = g.job(g.get("t").unwrap()).clone();
        assert_eq!(job.compute_key().hex(), job.key);
        let Work::Train(w) = &mut job.work else { panic!() };
        let Some(crate::engine::Arch::ResNet { width_mult, .. }) = w.model.arch.as_mut().map(|t| &mut t.arch)
        else {
            panic!()
        };
        *width_mult = 2.0;
        assert_ne!(job.compute_key().hex(), job.key);
        // So is a changed rule of the image size (the `stem: auto` threshold).
        let mut job = g.job(g.get("t").unwrap()).clone();
        let Work::Train(w) = &mut job.work else { panic!() };
        w.model.arch.as_mut().unwrap().by_image_size = Some(crate::job::SizeRule::Stem { cifar_up_to: 32 });
        assert_ne!(job.compute_key().hex(), job.key);
    }

    #[test]
    fn names_paths_and_the_device_are_not_in_the_key() {
        let g = build(SPEC);
        let renamed = build(
            &SPEC.replace("{ r: {", "{ q: {").replace("model: r", "model: q").replace("  t:", "  other:"),
        );
        assert_eq!(key_of(&g, "t"), key_of(&renamed, "other"));
        let mut job = g.job(g.get("t").unwrap()).clone();
        job.device = "cuda:1".into();
        job.base_dir = "/elsewhere".into();
        assert_eq!(job.compute_key().hex(), key_of(&g, "t"));
    }

    #[test]
    fn a_pretrained_file_is_keyed_by_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let text = SPEC.replace("depth: 8", "depth: 8, pretrained: w.safetensors");
        let file = dir.path().join("t.yaml");
        let exp = spec::load_str(&file, &text).unwrap();
        let cache = crate::data::FingerprintCache::in_memory();
        let digest = super::super::file_digest(&cache);
        // Missing: a located error at the setting.
        let err = super::super::build(&exp, &crate::graph::spec_fingerprint, &digest).unwrap_err();
        assert_eq!(err[0].path, "models.r.pretrained");
        assert!(err[0].location.is_some());
        std::fs::write(dir.path().join("w.safetensors"), b"one").unwrap();
        let a = super::super::build(&exp, &crate::graph::spec_fingerprint, &digest).unwrap();
        let cache2 = crate::data::FingerprintCache::in_memory();
        std::fs::write(dir.path().join("w.safetensors"), b"two").unwrap();
        let b =
            super::super::build(&exp, &crate::graph::spec_fingerprint, &super::super::file_digest(&cache2))
                .unwrap();
        assert_ne!(key_of(&a, "t"), key_of(&b, "t"));
    }
}
