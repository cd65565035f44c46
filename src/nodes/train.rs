//! train, finetune and distill: one training loop, three ways to build what it trains.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Instant;

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};
use serde_json::{Value, json};

use super::checkpoint::{self, Progress};
use super::{
    ModelInfo, Runner, batch_tensors, dataset, device, eval_model, failed, load_model, node_input, write_json,
};
use crate::data::{self, Dataset};
use crate::engine::{self, LoadOptions, Model, ModelConfig, ParamRule, Trainer, state};
use crate::exec::{Event, NodeError, NodeOutput, Task};
use crate::job::{DistillWork, LoopSettings, ModelSetup, TeacherOutputsWork, TrainWork};
use crate::losses::{DistillInputs, DistillLosses, LossDims};
use crate::report::cost::{Cost, Lineage};

/// The student and every trainable loss head, stepped by one optimizer.
#[derive(Module, Debug)]
struct Distilled {
    student: Model,
    heads: DistillLosses,
}

/// The frozen teacher of a distill node and how to feed it.
struct Teacher {
    model: Model,
    /// The teacher's outputs for every image of the distillation set (row i = dataset index i),
    /// when its inputs are not randomly augmented: no teacher forward pass during training.
    cached: Option<TeacherOutputs>,
    /// Affine map from the student's normalised inputs to the teacher's: x_t = x_s * a + b.
    renorm: Option<(Vec<f32>, Vec<f32>)>,
}

enum Trained {
    Plain(Model),
    Distill(Distilled, Teacher),
}

/// What a node trains and on what; batch size, epochs and the rest are the job's
/// [`LoopSettings`] (`Training::settings`).
struct Setup {
    trained: Trained,
    info: ModelInfo,
    /// The job's optimiser and schedule with the head's and a frozen backbone's rules.
    trainer: engine::TrainerConfig,
    data_name: String,
    data: Arc<Dataset>,
    /// The training batches, prepared by `transform`.
    loader: data::Loader,
}

/// The training data of a node and how its images are prepared: decided before the model is
/// built, since the model's input shape is the prepared images' shape.
struct TrainData {
    name: String,
    ds: Arc<Dataset>,
    transform: data::TransformConfig,
    loader: data::Loader,
}

impl TrainData {
    fn info(&self, model: ModelConfig) -> ModelInfo {
        ModelInfo::new(model, &self.ds, &self.transform, &self.loader)
    }
}

fn train_data(runner: &Runner, task: &Task<'_>, s: &LoopSettings) -> Result<TrainData, NodeError> {
    let (name, ds) = dataset(runner, task, "data")?;
    let ds = super::generate::with_synthetic(task, ds, s.synthetic)?;
    let transform = s.transform.clone();
    let seed = task.job.seed.unwrap_or(0);
    let cfg = data::LoaderConfig::train(s.batch_size, s.drop_last, seed, transform.clone());
    let loader = data::Loader::new(ds.clone(), cfg)
        .map_err(|e| task.fail_at("data", format!("dataset `{name}`: {e}")))?;
    Ok(TrainData { name, ds, transform, loader })
}

/// The model a job trains, on the prepared images of `td`: its architecture (from the job, or
/// the `init` input's), and its first weights (an input node's, a weights file's, or fresh).
fn build_model(
    task: &Task<'_>,
    setup: &ModelSetup,
    td: &TrainData,
    ad: &Device,
) -> Result<(ModelInfo, Model), NodeError> {
    let [c, h, _] = td.loader.image_shape();
    let classes = td.ds.n_classes();
    let from = match &setup.init {
        Some(role) => {
            let dir = node_input(task, role)?;
            Some((dir, ModelInfo::read(dir)?))
        }
        None => None,
    };
    let config = match (&setup.arch, &from) {
        (Some(t), _) => t.config(c, h, classes),
        (None, Some((_, f))) => {
            ModelConfig { in_channels: c, image_size: h, num_classes: classes, ..f.model.clone() }
        }
        (None, None) => return Err(failed("the job names no architecture and no model to start from")),
    };
    let mut info = td.info(config);
    // Decided at resolve time (`head:`, or whether the class names match).
    info.head = setup.head.clone();
    let keep = setup.head.as_ref().is_some_and(|h| h.keep);
    let model = match (&from, &setup.weights) {
        (Some((dir, from)), _) => init_from(dir, from, &info, keep, ad)?,
        (None, Some(w)) => {
            let fresh = info.config().init(ad).map_err(|e| task.fail_at("model", e))?;
            // Hub weights carry their own head (ImageNet's 1000 classes): a new one unless
            // `head: keep`.
            engine::load_into(fresh, &w.file_path, &LoadOptions { skip_head: !keep }).map_err(|e| {
                let hint =
                    if keep { " (`head: keep` loads the file's head too: use `head: new`?)" } else { "" };
                task.fail_at(&w.setting, format!("{e}{hint}"))
            })?
        }
        (None, None) => info.config().init(ad).map_err(|e| task.fail_at("model", e))?,
    };
    Ok((info, model))
}

/// Loads `dir`'s weights into a fresh model for `info`, with their head when `keep_head`.
fn init_from(
    dir: &std::path::Path,
    from: &ModelInfo,
    info: &ModelInfo,
    keep_head: bool,
    device: &Device,
) -> Result<Model, NodeError> {
    let same_shape =
        from.model.in_channels == info.model.in_channels && from.model.image_size == info.model.image_size;
    if from.model.arch != info.model.arch || !same_shape {
        return Err(failed(format!(
            "the initial weights come from a different architecture or input shape ({:?} on {:?} images, this node trains {:?} on {:?})",
            from.model.arch, from.image_shape, info.model.arch, info.image_shape
        )));
    }
    if keep_head && from.num_classes != info.num_classes {
        return Err(failed(format!(
            "head: keep, but the initial weights' head has {} classes and this node's data {}",
            from.num_classes, info.num_classes
        )));
    }
    let model = info.config().init(device).map_err(failed)?;
    engine::load_into(model, &dir.join("model.safetensors"), &LoadOptions { skip_head: !keep_head })
        .map_err(failed)
}

/// What a training job trains: a model on its own, or a student through distillation losses.
#[derive(Clone, Copy)]
pub(super) enum Training<'a> {
    Plain(&'a TrainWork),
    Distill(&'a DistillWork),
}

impl<'a> Training<'a> {
    /// How the trained model starts: a node's weights, a file's, or fresh.
    fn model(self) -> &'a crate::job::ModelSetup {
        match self {
            Training::Plain(w) => &w.model,
            Training::Distill(w) => &w.student,
        }
    }

    /// The loop's settings, whichever it trains.
    fn settings(self) -> &'a LoopSettings {
        match self {
            Training::Plain(w) => &w.settings,
            Training::Distill(w) => &w.settings,
        }
    }
}

fn setup(
    runner: &Runner,
    task: &Task<'_>,
    what: Training<'_>,
    ad: &Device,
    plain: &Device,
) -> Result<Setup, NodeError> {
    let s = what.settings();
    let td = train_data(runner, task, s)?;
    match what {
        Training::Plain(w) => {
            let (info, model) = build_model(task, &w.model, &td, ad)?;
            Ok(plain_setup(model, info, s, td))
        }
        Training::Distill(w) => {
            let (tinfo, teacher) = load_model(node_input(task, "teacher")?, plain)?;
            let (info, student) = build_model(task, &w.student, &td, ad)?;
            if tinfo.num_classes != info.num_classes || tinfo.image_shape != info.image_shape {
                return Err(task.fail_at(
                    "teacher",
                    format!(
                        "the teacher was trained on {} classes of {:?} images, the distillation data has {} of {:?}",
                        tinfo.num_classes, tinfo.image_shape, info.num_classes, info.image_shape
                    ),
                ));
            }
            let dims = LossDims {
                student_dim: student.feature_dim(),
                teacher_dim: teacher.feature_dim(),
                num_classes: info.num_classes,
                n_data: td.ds.len(),
            };
            let classifier = Some(teacher_classifier(&teacher, ad));
            let heads =
                DistillLosses::new(&w.losses, dims, classifier, ad).map_err(|e| task.fail_at("losses", e))?;
            let cached = if w.cached_teacher {
                Some(read_teacher_outputs(task, &teacher, &tinfo, td.ds.len())?)
            } else {
                None
            };
            let renorm = (tinfo.mean != info.mean || tinfo.std != info.std).then(|| {
                let a: Vec<f32> = info.std.iter().zip(&tinfo.std).map(|(ss, ts)| ss / ts).collect();
                let b: Vec<f32> =
                    (0..info.mean.len()).map(|c| (info.mean[c] - tinfo.mean[c]) / tinfo.std[c]).collect();
                (a, b)
            });
            Ok(Setup {
                trained: Trained::Distill(
                    Distilled { student, heads },
                    Teacher { model: teacher.valid(), renorm, cached },
                ),
                info,
                trainer: s.trainer.clone(),
                data_name: td.name,
                data: td.ds,
                loader: td.loader,
            })
        }
    }
}

/// A train or finetune node's setup: the head learns at `head_lr_mult` x the optimizer's rate;
/// `freeze: backbone` trains the head alone (linear probing) with batch-norm statistics frozen.
fn plain_setup(model: Model, info: ModelInfo, s: &LoopSettings, td: TrainData) -> Setup {
    let lp = s.freeze_backbone;
    let head = ParamRule::lr_mult(model.head_path(), s.head_lr_mult);
    let mut trainer = s.trainer.clone();
    trainer.rules = if lp { vec![ParamRule::frozen(""), head] } else { vec![head] };
    Setup {
        trained: Trained::Plain(model),
        info,
        trainer,
        data_name: td.name,
        data: td.ds,
        loader: td.loader,
    }
}

/// The teacher's final linear layer as burn's `Linear` (SRRL feeds the student's connected
/// features through it). Ours stores PyTorch's `[out, in]` weight; burn's is `[in, out]`.
fn teacher_classifier(m: &Model, device: &Device) -> burn::nn::Linear {
    let l = match m {
        Model::ResNet(r) => &r.fc,
        Model::Mlp(x) => &x.head,
        Model::Cnn(x) => &x.head,
        Model::MobileNetV2(x) => &x.classifier.linear,
        Model::Vit(v) => &v.heads.head,
    };
    let w = l.weight.val().transpose();
    burn::nn::Linear {
        weight: Param::from_tensor(Tensor::from_data(w.into_data(), device)),
        bias: l.bias.as_ref().map(|b| Param::from_tensor(Tensor::from_data(b.val().into_data(), device))),
    }
}

fn to_device(t: Tensor<2>, device: &Device) -> Tensor<2> {
    Tensor::from_data(t.into_data(), device)
}

pub(super) fn run(runner: &Runner, task: &Task<'_>, what: Training<'_>) -> Result<NodeOutput, NodeError> {
    let plain = device(task)?;
    let ad = plain.clone().autodiff();
    let Setup { mut trained, mut info, trainer, data_name, data, loader } = {
        // burn's CPU backend seeds one process-wide generator: build every randomly initialised
        // tensor of this node (model, loss heads) under a lock, right after seeding it with the
        // node's seed, so results are the same whatever runs beside it.
        let _init = super::INIT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        plain.seed(task.job.seed.unwrap_or(0));
        setup(runner, task, what, &ad, &plain)?
    };
    let s = what.settings();
    let (batch_size, label_smoothing) = (s.batch_size, s.label_smoothing);
    let epochs = s.trainer.epochs as u32;
    if data.len() < batch_size {
        return Err(failed(format!(
            "dataset `{data_name}` has {} images, fewer than one batch of {batch_size}",
            data.len()
        )));
    }
    let mut trainer = Trainer::new(trainer).map_err(failed)?;
    // Linear probing keeps batch-norm statistics frozen.
    if s.freeze_backbone {
        if let Trained::Plain(m) = trained {
            trained = Trained::Plain(engine::freeze_batch_norm(m));
        }
    }
    let val = match task.job.input("val").is_some() {
        true => Some(dataset(runner, task, "val")?.1),
        false => None,
    };
    let mut ema = s.ema.as_ref().map(|e| engine::Ema::<Model>::new(e.decay));
    let ema_output = s.ema.as_ref().is_some_and(|e| e.output);
    // `accumulate` batches make one optimizer step; the schedule counts optimizer steps.
    let accumulate = s.accumulate.max(1);
    let batches_per_epoch = loader.n_batches() as u64;
    let steps_per_epoch = batches_per_epoch.div_ceil(accumulate as u64);
    // Each batch's loss is weighted by its share of its group's images, so a step is one of the
    // group's mean loss (docs/spec.md, `accumulate`).
    let group_images = |g: usize| -> usize {
        let first = g * accumulate;
        (first..(first + accumulate).min(batches_per_epoch as usize)).map(|b| loader.batch_len(b)).sum()
    };
    let seed = task.job.seed.unwrap_or(0);
    // The best-on-validation weights so far (kept as `best.safetensors`, and in checkpoints).
    let mut best_model: Option<Model> = None;
    // Continue from the checkpoint of an interrupted run of this key, if there is a usable one.
    let mut p = Progress { epochs, batches_per_epoch, ..Progress::default() };
    match checkpoint::read(&task.checkpoint, &task.job.key) {
        Ok(None) => {}
        Ok(Some(saved)) => match resume(saved, &mut trained, &mut trainer, &mut ema, s, &task.checkpoint) {
            Ok((progress, best)) => {
                p = progress;
                best_model = best;
            }
            Err(why) => ignore_checkpoint(task, &why),
        },
        Err(why) => ignore_checkpoint(task, &why),
    }
    if let Some(b) = &best_model {
        engine::save(b, &task.out_dir.join("best.safetensors")).map_err(failed)?;
    }
    let mut history = std::fs::File::create(task.out_dir.join("history.jsonl")).map_err(failed)?;
    for row in &p.history {
        writeln!(history, "{row}").map_err(failed)?;
    }
    // A checkpoint needs every random state; a test's CRD sampler may not give its own.
    let can_checkpoint = match &trained {
        Trained::Distill(d, _) => d.heads.sampler_states().is_some(),
        Trained::Plain(_) => true,
    };
    let t0 = Instant::now();
    let (loop_before, images_before) = (p.loop_seconds, p.images);
    // When the last checkpoint was written, and how long it took.
    let since_checkpoint = std::cell::Cell::new(Instant::now());
    let last_write = std::cell::Cell::new(0.0f64);
    let save_checkpoint = |p: &mut Progress,
                           trained: &Trained,
                           trainer: &Trainer,
                           ema: &Option<engine::Ema<Model>>,
                           best: &Option<Model>,
                           epoch_started: Option<Instant>|
     -> Result<(), NodeError> {
        if !can_checkpoint {
            return Ok(());
        }
        let tw = Instant::now();
        p.loop_seconds = loop_before + t0.elapsed().as_secs_f64();
        if let Some(te) = epoch_started {
            p.epoch_seconds += te.elapsed().as_secs_f64();
        }
        p.trainer_steps = trainer.steps();
        p.ema_updates = ema.as_ref().map_or(0, |e| e.updates());
        let (model, optimizer, samplers) = match trained {
            Trained::Plain(m) => (state::tensors_of(m), trainer.state_of(m), Vec::new()),
            Trained::Distill(d, _) => {
                (state::tensors_of(d), trainer.state_of(d), d.heads.sampler_states().unwrap_or_default())
            }
        };
        p.samplers = samplers;
        let avg = ema.as_ref().and_then(|e| e.average()).map(state::tensors_of);
        let best = best.as_ref().map(state::tensors_of);
        let mut sections = vec![("model", &model), ("optimizer", &optimizer)];
        if let Some(a) = &avg {
            sections.push(("ema", a));
        }
        if let Some(b) = &best {
            sections.push(("best", b));
        }
        checkpoint::write(&task.checkpoint, &task.job.key, p, &sections)
            .map_err(|e| failed(format!("writing the checkpoint {}: {e}", task.checkpoint.display())))?;
        last_write.set(tw.elapsed().as_secs_f64());
        since_checkpoint.set(Instant::now());
        Ok(())
    };
    for epoch in p.epoch..epochs {
        // The learning rate of the epoch's first step (its history row's `lr`; a per-step
        // schedule changes it within the epoch).
        trainer.set_position(epoch as usize, 0, steps_per_epoch as usize);
        let epoch_lr = trainer.lr();
        let te = Instant::now();
        let mut epoch_steps = p.batch / accumulate as u64;
        for b in loader.epoch_from(epoch as u64, p.batch as usize) {
            let mut b = b.map_err(|e| failed(format!("epoch {}: {e}", epoch + 1)))?;
            // Stopped (Ctrl-C, SIGTERM): at the next step's boundary, keep a checkpoint to
            // continue from, then stop.
            if task.cancel.is_cancelled() && p.batch.is_multiple_of(accumulate as u64) {
                if let Err(e) = save_checkpoint(&mut p, &trained, &trainer, &ema, &best_model, Some(te)) {
                    checkpoint_failed(task, &e);
                }
                return Err(NodeError::Cancelled);
            }
            // A batch's dropout masks are a function of the seed and the batch's place.
            engine::seed_dropout(
                data::rng::Rng::derive(&[seed, TAG_DROPOUT, epoch as u64, p.batch]).next_u64(),
            );
            // The teacher's inputs are the same images on the plain device (when it runs live).
            let teacher_images = match &trained {
                Trained::Distill(_, t) if t.cached.is_none() => Some(b.images.clone()),
                _ => None,
            };
            let (x, y) = batch_tensors(&mut b, &ad);
            let n = b.labels.len();
            let step = p.step;
            let (loss, logits, terms) = match &trained {
                Trained::Plain(m) => {
                    let (_, z) = m.forward(x);
                    let l = crate::losses::cross_entropy(z.clone(), y, label_smoothing);
                    (l, z, Vec::new())
                }
                Trained::Distill(d, t) => {
                    let (ft, zt) = t.outputs(&b, teacher_images, &plain, &ad);
                    let (fs, zs) = d.student.forward(x);
                    let terms = d
                        .heads
                        .forward(DistillInputs {
                            student_features: fs,
                            student_logits: zs.clone(),
                            teacher_features: ft,
                            teacher_logits: zt,
                            labels: y,
                            indices: Some(b.indices.clone()),
                            contrast_indices: None,
                        })
                        .map_err(failed)?;
                    let values = terms.check_finite(step).map_err(|e| {
                        failed(format!(
                            "{}: {e}; nothing of this node was saved",
                            task.job.place_of("losses")
                        ))
                    })?;
                    (terms.total, zs, values)
                }
            };
            let lv = loss.clone().into_scalar::<f64>();
            if !lv.is_finite() {
                return Err(failed(format!(
                    "non-finite loss `ce` ({lv}) at step {step}; nothing of this node was saved"
                )));
            }
            let pred: Vec<i64> = logits
                .argmax(1)
                .into_data()
                .convert::<i64>()
                .try_to_vec::<i64>()
                .map_err(|e| failed(format!("{e:?}")))?;
            p.correct += pred.iter().zip(&b.labels).filter(|(p, l)| **p == **l as i64).count() as u64;
            let group = p.batch as usize / accumulate;
            let weight = n as f64 / group_images(group) as f64;
            match &trained {
                Trained::Plain(m) => trainer.accumulate(m, loss, weight),
                Trained::Distill(d, _) => trainer.accumulate(d, loss, weight),
            }
            p.batch += 1;
            p.batches += 1;
            // The group's last batch: one optimizer step with the summed gradients.
            if (p.batch as usize).is_multiple_of(accumulate) || p.batch == batches_per_epoch {
                // Per step, the schedule's value at this step of the run; per epoch, the epoch's.
                trainer.set_position(epoch as usize, epoch_steps as usize, steps_per_epoch as usize);
                trained = match trained {
                    Trained::Plain(m) => Trained::Plain(trainer.step_accumulated(m).0),
                    Trained::Distill(d, t) => Trained::Distill(trainer.step_accumulated(d).0, t),
                };
                epoch_steps += 1;
                p.step += 1;
                if let Some(e) = &mut ema {
                    e.update(&student(&trained).valid());
                }
            }
            for (name, v) in terms {
                match p.term_sums.iter_mut().find(|(k, _)| *k == name) {
                    Some(e) => e.1 += v * n as f64,
                    None => p.term_sums.push((name, v * n as f64)),
                }
            }
            p.loss_sum += lv * n as f64;
            p.seen += n as u64;
            p.images += n as u64;
            let secs = t0.elapsed().as_secs_f64();
            task.events.event(Event::Progress {
                node: task.job.name.clone(),
                epoch: epoch + 1,
                epochs,
                step: p.batch,
                steps: batches_per_epoch,
                loss: lv,
                images_per_second: (p.images - images_before) as f64 / secs.max(1e-9),
            });
        }
        // A short epoch is a failure, never a result (the loader reports its own failures;
        // this holds whatever else ends an epoch early).
        if p.batch != batches_per_epoch || epoch_steps != steps_per_epoch {
            return Err(failed(format!(
                "epoch {} trained {} of its {batches_per_epoch} batches; nothing of this node was saved",
                epoch + 1,
                p.batch
            )));
        }
        let model = student(&trained);
        let seen = p.seen.max(1) as f64;
        let mut row = json!({
            "epoch": epoch + 1,
            "loss": p.loss_sum / seen,
            "train_accuracy": p.correct as f64 / seen,
            "lr": epoch_lr,
            "epoch_seconds": p.epoch_seconds + te.elapsed().as_secs_f64(),
        });
        for (name, sum) in &p.term_sums {
            if name != "total" {
                row[format!("loss.{name}")] = json!(sum / seen);
            }
        }
        if let Some(v) = &val {
            let trained_model = model.valid();
            let m = eval_model(&trained_model, &info, v, 256, &plain)?;
            let acc = m["accuracy"].as_f64().unwrap_or(0.0);
            row["val_accuracy"] = json!(acc);
            // The average, evaluated alongside.
            let mut ema_acc = None;
            if let Some(avg) = ema.as_ref().and_then(|e| e.average()) {
                let m = eval_model(avg, &info, v, 256, &plain)?;
                let a = m["accuracy"].as_f64().unwrap_or(0.0);
                row["ema_val_accuracy"] = json!(a);
                p.best_ema_val = Some(p.best_ema_val.map_or(a, |b: f64| b.max(a)));
                ema_acc = Some(a);
            }
            // The best epoch of the node's model (the average with `ema: { output: true }`): its
            // weights are kept as `best.safetensors` (`weights: best` reads them), the first such
            // epoch on a tie.
            let (node_acc, node_model) = match (ema_output, ema_acc, ema.as_ref().and_then(|e| e.average())) {
                (true, Some(a), Some(avg)) => (a, avg),
                _ => (acc, &trained_model),
            };
            if p.best_val.is_none_or(|b| node_acc > b) {
                p.best_val = Some(node_acc);
                p.best_epoch = epoch + 1;
                engine::save(node_model, &task.out_dir.join("best.safetensors")).map_err(failed)?;
                best_model = Some(node_model.clone());
            }
        }
        for (k, v) in row.as_object().expect("object") {
            if let Some(x) = v.as_f64() {
                task.events.event(Event::Metric {
                    node: task.job.name.clone(),
                    name: k.clone(),
                    value: x,
                    step: (epoch + 1) as u64,
                });
            }
        }
        writeln!(history, "{row}").map_err(failed)?;
        p.history.push(row);
        // The next epoch starts from nothing.
        p.epoch = epoch + 1;
        p.batch = 0;
        (p.loss_sum, p.correct, p.seen, p.epoch_seconds) = (0.0, 0, 0, 0.0);
        p.term_sums.clear();
        let due = match s.checkpoint_every {
            Some(every) => (epoch + 1).is_multiple_of(every.max(1)),
            // Under 2% of the time since the last one (at least a minute apart).
            None => {
                since_checkpoint.get().elapsed().as_secs_f64()
                    >= (50.0 * last_write.get()).max(AUTO_MIN_SECONDS)
            }
        };
        if task.cancel.is_cancelled() || (due && epoch + 1 < epochs) {
            // A checkpoint that cannot be written (a full disk) costs the resume, not the run.
            if let Err(e) = save_checkpoint(&mut p, &trained, &trainer, &ema, &best_model, None) {
                checkpoint_failed(task, &e);
            }
            task.cancel.check()?;
        }
    }
    let (images, step, batches) = (p.images, p.step, p.batches);
    let (best_val, best_epoch, best_ema_val) = (p.best_val, p.best_epoch, p.best_ema_val);
    let last = p.history.last().cloned().unwrap_or(Value::Null);
    // Learning curves beside the history (a plot that cannot be drawn costs the plot only).
    match crate::report::plot::learning_curves(&task.job.name, &p.history) {
        Ok(plot) => {
            std::fs::write(task.out_dir.join("curves.svg"), &plot.svg).map_err(failed)?;
            std::fs::write(task.out_dir.join("curves.png"), &plot.png).map_err(failed)?;
        }
        Err(e) => task.events.event(Event::Warning {
            node: task.job.name.clone(),
            message: format!("learning curves not drawn: {e}"),
        }),
    }
    if batches != epochs as u64 * batches_per_epoch || step != epochs as u64 * steps_per_epoch || step == 0 {
        return Err(failed(format!(
            "trained {step} of {} steps; nothing of this node was saved",
            epochs as u64 * steps_per_epoch
        )));
    }
    let loop_seconds = loop_before + t0.elapsed().as_secs_f64();
    // A cached teacher pass ran as its own node before this one: part of this node's cost.
    let teacher_pass_seconds = match &trained {
        Trained::Distill(_, t) if t.cached.is_some() => task
            .entry("teacher_outputs")
            .and_then(|e| e.manifest.metrics.get("seconds").and_then(Value::as_f64))
            .unwrap_or(0.0),
        _ => 0.0,
    };
    let train_seconds = loop_seconds + teacher_pass_seconds;
    let (teacher_cost, head_fwd) = match &trained {
        Trained::Distill(d, t) => (
            Some((t.model.forward_flops(info.image_shape, &plain), t.cached.is_some())),
            d.heads.forward_flops_per_image(batch_size),
        ),
        Trained::Plain(_) => (None, 0),
    };
    let trained_model = match trained {
        Trained::Plain(m) => m,
        Trained::Distill(d, _) => d.student,
    };
    let trained_model = trained_model.valid();
    // Training costs about 3 forward passes an image (forward + backward), for the model and the
    // losses' heads alike; a distill node adds its teacher's forward passes: one an image
    // trained, or one an image of the set if cached.
    let student_fwd = trained_model.forward_flops(info.image_shape, &plain);
    let teacher_flops = match &teacher_cost {
        Some((fwd, true)) => fwd * data.len() as u64,
        Some((fwd, false)) => fwd * images,
        None => 0,
    };
    let head_flops = 3 * head_fwd * images;
    let flops = 3 * student_fwd * images + head_flops + teacher_flops;
    // The node's model: the trained weights, or their average (`ema: { output: true }`), the
    // other kept beside it.
    let average = ema.as_ref().and_then(|e| e.average());
    let model = match (average, &s.ema) {
        (Some(avg), Some(e)) if e.output => {
            engine::save(&trained_model, &task.out_dir.join("trained.safetensors")).map_err(failed)?;
            info.ema_decay = Some(e.decay);
            avg
        }
        (Some(avg), _) => {
            engine::save(avg, &task.out_dir.join("ema.safetensors")).map_err(failed)?;
            &trained_model
        }
        (None, _) => &trained_model,
    };
    engine::save(model, &task.out_dir.join("model.safetensors")).map_err(failed)?;
    info.write(&task.out_dir)?;
    let mut metrics = json!({
        // The node's whole training cost: its loop and, for a distill node whose teacher outputs
        // were computed once, that pass.
        "train_seconds": train_seconds,
        "loop_seconds": loop_seconds,
        "images_per_second": images as f64 / loop_seconds.max(1e-9),
        "epochs": epochs,
        "steps": step,
        "steps_per_epoch": steps_per_epoch,
        "batches_per_epoch": batches_per_epoch,
        // `drop_last: false` and one image over: it joined the last batch (docs/spec.md).
        "last_batch_joined_lone_image": loader.merges_last_image(),
        "params": model.num_params(),
        "flops": flops,
        "forward_flops_per_image": student_fwd,
        "final_loss": last["loss"],
        "final_train_accuracy": last["train_accuracy"],
        // Which vector level ran (results are bit-identical only at the same one: docs/engine.md).
        "cpu_isa": engine::isa_summary(),
        // Where it trained (`cpu`, `cuda:1`): the device is not in the key, so the entry says it.
        "device": task.job.device,
    });
    if let Some((_, cached)) = teacher_cost {
        metrics["teacher_flops"] = json!(teacher_flops);
        metrics["loss_head_flops"] = json!(head_flops);
        if cached {
            metrics["teacher_pass_seconds"] = json!(teacher_pass_seconds);
        }
    }
    if let Some(h) = &info.head {
        metrics["head"] = json!(h.word());
    }
    metrics["cost"] = json!(lineage(task, what.model(), train_seconds, flops as f64));
    // Of the node's model: the trained weights, or their average with `ema: { output: true }`.
    if let Some(b) = best_val {
        metrics["best_val_accuracy"] = json!(b);
        metrics["best_epoch"] = json!(best_epoch);
        let key = if ema_output { "ema_val_accuracy" } else { "val_accuracy" };
        metrics["final_val_accuracy"] = last[key].clone();
    }
    if let Some(b) = best_ema_val {
        metrics["best_ema_val_accuracy"] = json!(b);
        metrics["final_ema_val_accuracy"] = last["ema_val_accuracy"].clone();
    }
    write_json(&task.out_dir.join("metrics.json"), &metrics)?;
    Ok(NodeOutput { metrics })
}

/// This node's cost and its lineage's (`report::cost`): its own training, the history of the
/// weights it started from, and its teacher's whole cost.
fn lineage(task: &Task<'_>, model: &crate::job::ModelSetup, seconds: f64, flops: f64) -> Lineage {
    let own = Cost::of_node(&task.job.name, seconds, flops, &task.job.device, rayon::current_num_threads());
    let recorded = |role: &str| task.entry(role).and_then(|e| Lineage::from_metrics(&e.manifest.metrics));
    let init = model.init.as_deref().and_then(recorded);
    let teacher = task.job.input("teacher").and_then(|t| Some((t, recorded("teacher")?)));
    let mut l =
        Lineage::of(own, init.as_ref(), teacher.as_ref().map(|(t, l)| (t.name.as_str(), t.key.as_str(), l)));
    if let Some(w) = &model.weights {
        let file = w.file_path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        l.external.push(format!("`{}` ({file})", w.setting));
    }
    // Synthetic training images: what made them (the generator's training and the sampling)
    // is part of what it took to get this model.
    if let Some(g) = recorded("synthetic/from") {
        l.pretraining = l.pretraining.clone().plus(&g.student());
    }
    l
}

/// Keyed stream of a batch's dropout masks (`engine::seed_dropout`).
const TAG_DROPOUT: u64 = 0x4452_4f50;
/// `checkpoint_every: auto` writes no two checkpoints less than this many seconds apart.
const AUTO_MIN_SECONDS: f64 = 60.0;

/// Restores a checkpoint into the freshly built module, trainer and average (nothing changed
/// on an error): the progress to continue from and the best weights so far.
fn resume(
    saved: checkpoint::Saved,
    trained: &mut Trained,
    trainer: &mut Trainer,
    ema: &mut Option<engine::Ema<Model>>,
    s: &LoopSettings,
    file: &std::path::Path,
) -> Result<(Progress, Option<Model>), String> {
    let section = |name: &str| saved.section(name).ok_or_else(|| format!("it has no `{name}` section"));
    let empty = state::Tensors::default();
    let model = section("model")?;
    let optimizer = saved.section("optimizer").unwrap_or(&empty);
    let p = saved.progress.clone();
    // Checked before anything changes; then taken. Running statistics are buffers shared by a
    // module's clones and replaced in place, so the average and the best weights are built on
    // modules of their own (`valid()`), and the trained module is changed last.
    let like = student(trained).valid();
    let as_model = |t: &state::Tensors| state::with_tensors(like.valid(), t, file).map_err(|e| e.to_string());
    let average = match (s.ema.as_ref(), saved.section("ema")) {
        (Some(e), Some(t)) => Some(engine::Ema::resumed(e.decay, Some(as_model(t)?), p.ema_updates)),
        (Some(e), None) if p.ema_updates == 0 => Some(engine::Ema::new(e.decay)),
        (Some(_), None) => return Err("it has no `ema` section".into()),
        (None, _) => None,
    };
    let best = saved.section("best").map(as_model).transpose()?;
    let err = |e: engine::EngineError| e.to_string();
    match trained {
        Trained::Plain(m) => {
            state::check_tensors(m, model, file).map_err(err)?;
            // Sets the optimizer's state only when all of it fits.
            trainer.restore(m, optimizer, p.trainer_steps, file).map_err(err)?;
            *m = state::with_tensors(m.clone(), model, file).map_err(err)?;
        }
        Trained::Distill(d, _) => {
            state::check_tensors(d, model, file).map_err(err)?;
            if d.heads.sampler_states().map(|v| v.len()) != Some(p.samplers.len()) {
                return Err("its CRD sampler states do not match the losses".into());
            }
            trainer.restore(d, optimizer, p.trainer_steps, file).map_err(err)?;
            *d = state::with_tensors(d.clone(), model, file).map_err(err)?;
            d.heads.set_sampler_states(&p.samplers);
        }
    }
    *ema = average;
    Ok((p, best))
}

fn checkpoint_failed(task: &Task<'_>, e: &NodeError) {
    task.events.event(Event::Warning {
        node: task.job.name.clone(),
        message: format!("{e}; no checkpoint kept this time (the run itself is not affected)"),
    });
}

fn ignore_checkpoint(task: &Task<'_>, why: &str) {
    task.events.event(Event::Warning {
        node: task.job.name.clone(),
        message: format!(
            "the checkpoint {} is ignored ({why}); training from the first epoch",
            task.checkpoint.display()
        ),
    });
}

/// The model a node trains (a distill node's student).
fn student(t: &Trained) -> &Model {
    match t {
        Trained::Plain(m) => m,
        Trained::Distill(d, _) => &d.student,
    }
}

impl Teacher {
    /// The teacher's features and logits for a batch, on the training device: read from the
    /// cache, or a forward pass on inputs re-normalised to the teacher's statistics.
    fn outputs(
        &self,
        b: &data::Batch,
        images: Option<Vec<f32>>,
        plain: &Device,
        ad: &Device,
    ) -> (Tensor<2>, Tensor<2>) {
        let (Some(images), None) = (images, &self.cached) else {
            return self.cached.as_ref().expect("cached when no images are passed").rows(&b.indices, ad);
        };
        let x = Tensor::<4>::from_data(TensorData::new(images, b.shape), plain);
        let x = match &self.renorm {
            None => x,
            Some((a, c)) => {
                let ch = a.len();
                let a =
                    Tensor::<1>::from_data(TensorData::new(a.clone(), [ch]), plain).reshape([1, ch, 1, 1]);
                let c =
                    Tensor::<1>::from_data(TensorData::new(c.clone(), [ch]), plain).reshape([1, ch, 1, 1]);
                x * a + c
            }
        };
        let (f, z) = self.model.forward(x);
        (to_device(f, ad), to_device(z, ad))
    }
}

/// Teacher features and logits for a whole dataset, row-major f32.
struct TeacherOutputs {
    features: Vec<f32>,
    logits: Vec<f32>,
    feature_dim: usize,
    num_classes: usize,
}

impl TeacherOutputs {
    fn rows(&self, indices: &[usize], device: &Device) -> (Tensor<2>, Tensor<2>) {
        let gather = |src: &[f32], width: usize| {
            let mut out = Vec::with_capacity(indices.len() * width);
            for &i in indices {
                out.extend_from_slice(&src[i * width..(i + 1) * width]);
            }
            Tensor::<2>::from_data(TensorData::new(out, [indices.len(), width]), device)
        };
        (gather(&self.features, self.feature_dim), gather(&self.logits, self.num_classes))
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32_from(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// A teacher-outputs job: the `teacher` input's features and logits for every image of the
/// `data` input, prepared as the students' images (nothing random applies to them) and
/// normalised as the teacher was trained. Kept in the store, so every student, loss and seed
/// distilled from this teacher on this data reuses them.
pub(super) fn teacher_outputs(
    runner: &Runner,
    task: &Task<'_>,
    w: &TeacherOutputsWork,
) -> Result<NodeOutput, NodeError> {
    let device = device(task)?;
    let (tinfo, teacher) = load_model(node_input(task, "teacher")?, &device)?;
    let teacher = teacher.valid();
    let (_, ds) = dataset(runner, task, "data")?;
    let ds = super::generate::with_synthetic(task, ds, w.synthetic)?;
    let t0 = Instant::now();
    let (feature_dim, num_classes) = (teacher.feature_dim(), tinfo.num_classes);
    let transform =
        data::TransformConfig { normalize: Some(tinfo.normalize()), dsa: None, ..w.transform.clone() };
    let loader =
        data::Loader::new(ds.clone(), data::LoaderConfig::eval(w.batch_size, transform)).map_err(failed)?;
    if loader.image_shape() != tinfo.image_shape {
        return Err(failed(format!(
            "the teacher takes {:?} images, the distillation data's become {:?}",
            tinfo.image_shape,
            loader.image_shape()
        )));
    }
    let mut features = vec![0f32; ds.len() * feature_dim];
    let mut logits = vec![0f32; ds.len() * num_classes];
    let mut filled = 0usize;
    for b in loader.epoch(0) {
        let b = b.map_err(|e| failed(format!("teacher outputs: {e}")))?;
        task.cancel.check()?;
        filled += b.indices.len();
        let x = Tensor::<4>::from_data(TensorData::new(b.images.clone(), b.shape), &device);
        let (f, z) = teacher.forward(x);
        let f: Vec<f32> =
            f.into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| failed(format!("{e:?}")))?;
        let z: Vec<f32> =
            z.into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| failed(format!("{e:?}")))?;
        for (r, &i) in b.indices.iter().enumerate() {
            features[i * feature_dim..(i + 1) * feature_dim]
                .copy_from_slice(&f[r * feature_dim..(r + 1) * feature_dim]);
            logits[i * num_classes..(i + 1) * num_classes]
                .copy_from_slice(&z[r * num_classes..(r + 1) * num_classes]);
        }
    }
    if filled != ds.len() {
        return Err(failed(format!("teacher outputs: {filled} of {} images computed", ds.len())));
    }
    std::fs::write(task.out_dir.join("features.f32"), f32_bytes(&features)).map_err(failed)?;
    std::fs::write(task.out_dir.join("logits.f32"), f32_bytes(&logits)).map_err(failed)?;
    let metrics = json!({
        "seconds": t0.elapsed().as_secs_f64(),
        "images": ds.len(),
        "feature_dim": feature_dim,
        "num_classes": num_classes,
    });
    Ok(NodeOutput { metrics })
}

/// The `teacher_outputs` input of a distill job, checked against the teacher and the data.
fn read_teacher_outputs(
    task: &Task<'_>,
    teacher: &Model,
    tinfo: &ModelInfo,
    n: usize,
) -> Result<TeacherOutputs, NodeError> {
    let e = task.entry("teacher_outputs").ok_or_else(|| failed("no `teacher_outputs` input"))?;
    let (feature_dim, num_classes) = (teacher.feature_dim(), tinfo.num_classes);
    let features = f32_from(&std::fs::read(e.file("features.f32")).map_err(failed)?);
    let logits = f32_from(&std::fs::read(e.file("logits.f32")).map_err(failed)?);
    if features.len() != n * feature_dim || logits.len() != n * num_classes {
        return Err(failed(format!(
            "the teacher outputs hold {} features and {} logits, expected {n} images x ({feature_dim}, {num_classes})",
            features.len(),
            logits.len()
        )));
    }
    Ok(TeacherOutputs { features, logits, feature_dim, num_classes })
}
