//! Synthetic data: the built-in generator's training (`generator` nodes), synthetic image sets
//! (`generate` nodes) from it or from a plugin, and reading a set back for training.
//!
//! Both generators answer the same request — for each class its index, name, prompt and image
//! count, the image shape, the seed — and give images of each class; a plugin writes them as
//! PNG files `out_dir/images/<class index>/*.png` (any size: they are converted to the data's
//! channels and resized), the built-in one samples them in this process.
//!
//! A generate entry holds `images.u8` (every image `C,H,W`, class after class), `dataset.json`
//! (shape, class names, images a class, the generator) and `preview.png` (a grid: a row a class).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Runner, dataset, failed, node_input};
use crate::data::{self, Dataset};
use crate::engine::{Cvae, CvaeConfig, OptimizerConfig, Trainer, TrainerConfig};
use crate::exec::{Event, NodeError, NodeOutput, Task};
use crate::job::{GenerateCount, GenerateWork, GeneratorSource, GeneratorWork};
use crate::report::cost::{Cost, Lineage};

/// Keyed streams of the data layer's generator.
const TAG_SHUFFLE: u64 = 0x4756_5348;
const TAG_NOISE: u64 = 0x4756_4e5a;
const TAG_SAMPLE: u64 = 0x4756_534d;

/// `generator.json`: what the stored generator was trained on.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GeneratorInfo {
    model: CvaeConfig,
    shape: [usize; 3],
    class_names: Vec<String>,
}

/// `dataset.json` of a generate entry.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetInfo {
    shape: [usize; 3],
    class_names: Vec<String>,
    /// Images of each class, in `images.u8` class after class.
    per_class: Vec<usize>,
    prompts: Vec<String>,
    generator: String,
}

fn normal(rng: &mut data::rng::Rng, n: usize) -> Vec<f32> {
    // Box-Muller, two values a pair of uniforms.
    let mut v = Vec::with_capacity(n + 1);
    while v.len() < n {
        let u1 = 1.0 - rng.next_f64();
        let u2 = rng.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        v.push((r * t.cos()) as f32);
        v.push((r * t.sin()) as f32);
    }
    v.truncate(n);
    v
}

/// Trains the built-in conditional VAE on the `data` input.
pub(super) fn train_generator(
    runner: &Runner,
    task: &Task<'_>,
    w: &GeneratorWork,
) -> Result<NodeOutput, NodeError> {
    let plain = super::device(task)?;
    let ad = plain.clone().autodiff();
    let (name, ds) = dataset(runner, task, "data")?;
    let pixels = ds.image_len();
    let k = ds.n_classes();
    if ds.len() < w.batch_size {
        return Err(task.fail_at(
            "data",
            format!("dataset `{name}` has {} images, fewer than one batch of {}", ds.len(), w.batch_size),
        ));
    }
    let seed = task.job.seed.unwrap_or(0);
    let mut model = {
        let _init = super::INIT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        plain.seed(seed);
        Cvae::new(&w.cvae, pixels, k, &ad)
    };
    let mut cfg = TrainerConfig::new(OptimizerConfig::AdamW {
        lr: w.lr,
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: 0.0,
    });
    cfg.epochs = w.epochs;
    let mut trainer = Trainer::new(cfg).map_err(failed)?;
    let steps = ds.len() / w.batch_size;
    let n_params = params(&w.cvae, pixels, k);
    let t0 = Instant::now();
    let mut history = String::new();
    let (mut last_rec, mut last_kl, mut last_loss) = (0f64, 0f64, 0f64);
    let mut flops = 0f64;
    for epoch in 0..w.epochs {
        let mut order: Vec<usize> = (0..ds.len()).collect();
        data::rng::Rng::derive(&[seed, TAG_SHUFFLE, epoch as u64]).shuffle(&mut order);
        let mut noise = data::rng::Rng::derive(&[seed, TAG_NOISE, epoch as u64]);
        let (mut sum_rec, mut sum_kl, mut seen) = (0f64, 0f64, 0usize);
        let epoch_start = Instant::now();
        trainer.set_position(epoch, 0, steps);
        for step in 0..steps {
            task.cancel.check()?;
            let idx = &order[step * w.batch_size..(step + 1) * w.batch_size];
            let (x, y) = batch(&ds, idx, &ad);
            let eps = Tensor::<2>::from_data(
                TensorData::new(normal(&mut noise, idx.len() * w.cvae.latent), [idx.len(), w.cvae.latent]),
                &ad,
            );
            let l = model.loss(x, y, eps, w.beta);
            // Two reads a step (each waits for the device); the total is their weighted sum.
            let rec = l.reconstruction.clone().into_scalar::<f64>();
            let kl = l.kl.clone().into_scalar::<f64>();
            let total = rec + w.beta * kl;
            if !total.is_finite() {
                return Err(failed(format!(
                    "non-finite generator loss (reconstruction {rec}, kl {kl}) at epoch {}, step {step}; nothing of this node was saved",
                    epoch + 1
                )));
            }
            (model, _) = trainer.step(model, l.total);
            sum_rec += rec * idx.len() as f64;
            sum_kl += kl * idx.len() as f64;
            seen += idx.len();
            flops += 6.0 * n_params as f64 * idx.len() as f64;
            let ips = seen as f64 / epoch_start.elapsed().as_secs_f64().max(1e-9);
            task.events.event(Event::Progress {
                node: task.job.name.clone(),
                epoch: epoch as u32 + 1,
                epochs: w.epochs as u32,
                step: step as u64 + 1,
                steps: steps as u64,
                loss: total,
                images_per_second: ips,
            });
        }
        last_rec = sum_rec / seen.max(1) as f64;
        last_kl = sum_kl / seen.max(1) as f64;
        last_loss = last_rec + w.beta * last_kl;
        let n = task.job.name.clone();
        for (m, v) in [("reconstruction", last_rec), ("kl", last_kl), ("loss", last_loss)] {
            task.events.event(Event::Metric {
                node: n.clone(),
                name: m.into(),
                value: v,
                step: epoch as u64 + 1,
            });
        }
        history.push_str(&format!(
            "{}\n",
            json!({ "epoch": epoch + 1, "loss": last_loss, "reconstruction": last_rec, "kl": last_kl })
        ));
    }
    let seconds = t0.elapsed().as_secs_f64();
    let tensors = crate::engine::state::tensors_of(&model);
    crate::engine::state::write_state(
        &task.out_dir.join("generator.safetensors"),
        &[("model", &tensors)],
        &Default::default(),
    )
    .map_err(failed)?;
    let info = GeneratorInfo { model: w.cvae.clone(), shape: ds.shape, class_names: ds.class_names.clone() };
    super::write_json(&task.out_dir.join("generator.json"), &serde_json::to_value(&info).expect("json"))?;
    std::fs::write(task.out_dir.join("history.jsonl"), history).map_err(failed)?;
    let own = Cost::of_node(&task.job.name, seconds, flops, &task.job.device, rayon::current_num_threads());
    let cost = Lineage::of(own, None, None);
    let metrics = json!({
        "loss": last_loss, "reconstruction": last_rec, "kl": last_kl,
        "train_seconds": seconds, "images": ds.len(), "params": n_params,
        "cost": cost,
    });
    Ok(NodeOutput { metrics })
}

/// Parameters of the CVAE (for its FLOPs: 6 an image a parameter for a training step).
fn params(cfg: &CvaeConfig, pixels: usize, k: usize) -> usize {
    let mut n = 0;
    let mut d = pixels + k;
    for &h in &cfg.hidden {
        n += d * h + h;
        d = h;
    }
    n += 2 * (d * cfg.latent + cfg.latent);
    let mut d = cfg.latent + k;
    for &h in cfg.hidden.iter().rev() {
        n += d * h + h;
        d = h;
    }
    n + d * pixels + pixels
}

fn batch(ds: &Dataset, idx: &[usize], device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
    let per = ds.image_len();
    let mut x = Vec::with_capacity(idx.len() * per);
    for &i in idx {
        x.extend(ds.image(i).iter().map(|&p| p as f32 / 255.0));
    }
    let y: Vec<i64> = idx.iter().map(|&i| ds.labels[i] as i64).collect();
    (
        Tensor::from_data(TensorData::new(x, [idx.len(), per]), device),
        Tensor::from_data(TensorData::new(y, [idx.len()]), device),
    )
}

/// One class of a generation request.
#[derive(Clone, Debug, Serialize)]
struct ClassRequest {
    index: usize,
    name: String,
    prompt: String,
    count: usize,
}

/// A generate node: the request, the generator's images, and the stored set.
pub(super) fn generate(runner: &Runner, task: &Task<'_>, w: &GenerateWork) -> Result<NodeOutput, NodeError> {
    let (data_name, real) = dataset(runner, task, "data")?;
    let classes: Vec<ClassRequest> = real
        .class_names
        .iter()
        .enumerate()
        .map(|(c, name)| {
            let n_real = real.labels.iter().filter(|&&l| l as usize == c).count();
            let count = match w.count {
                GenerateCount::PerClass(n) => n,
                GenerateCount::Ratio(r) => ((n_real as f64) * r).round() as usize,
            };
            ClassRequest { index: c, name: name.clone(), prompt: w.prompt.replace("{c}", name), count }
        })
        .collect();
    let seed = task.job.seed.unwrap_or(0);
    let t0 = Instant::now();
    let (per_class_images, generator, upstream): (Vec<Vec<u8>>, String, Option<Lineage>) = match &w.generator
    {
        GeneratorSource::Node => {
            let entry = task.entry("generator/node").ok_or_else(|| failed("no `generator/node` input"))?;
            let imgs = builtin(task, &entry.dir, &classes, real.shape, seed)?;
            (
                imgs,
                format!("built-in cvae ({})", task.job.input("generator/node").map_or("", |i| &i.name)),
                Lineage::from_metrics(&entry.manifest.metrics),
            )
        }
        GeneratorSource::Plugin { plugin, params, timeout_s } => {
            let body = json!({
                "kind": "generate",
                "params": params,
                "classes": classes,
                "channels": real.shape[0],
                "image_size": [real.shape[1], real.shape[2]],
                "data": { "name": data_name },
            });
            let ran = super::plugin::run(task, plugin, "generator", body, Duration::from_secs(*timeout_s))?;
            let imgs = read_plugin_images(task, &ran.out, &classes, real.shape)?;
            // The decoded images are what is kept; the plugin's PNG files are not needed again.
            let _ = std::fs::remove_dir_all(&ran.out);
            (imgs, format!("plugin {}", plugin.name), None)
        }
    };
    let seconds = t0.elapsed().as_secs_f64();
    let mut images = Vec::new();
    for v in &per_class_images {
        images.extend_from_slice(v);
    }
    std::fs::write(task.out_dir.join("images.u8"), &images).map_err(failed)?;
    let info = SetInfo {
        shape: real.shape,
        class_names: real.class_names.clone(),
        per_class: classes.iter().map(|c| c.count).collect(),
        prompts: classes.iter().map(|c| c.prompt.clone()).collect(),
        generator: generator.clone(),
    };
    super::write_json(&task.out_dir.join("dataset.json"), &serde_json::to_value(&info).expect("json"))?;
    preview(&task.out_dir.join("preview.png"), &per_class_images, real.shape, w.preview)?;
    let own = Cost::of_node(&task.job.name, seconds, 0.0, &task.job.device, rayon::current_num_threads());
    let mut cost = Lineage::of(own, None, None);
    if let Some(g) = upstream {
        cost.pretraining = g.student();
    }
    let total: usize = info.per_class.iter().sum();
    Ok(NodeOutput {
        metrics: json!({
            "images": total, "per_class": info.per_class, "seconds": seconds,
            "generator": generator, "cost": cost,
        }),
    })
}

/// Samples the built-in generator of `dir` for each class (matched by name).
fn builtin(
    task: &Task<'_>,
    dir: &Path,
    classes: &[ClassRequest],
    shape: [usize; 3],
    seed: u64,
) -> Result<Vec<Vec<u8>>, NodeError> {
    let text = std::fs::read_to_string(dir.join("generator.json")).map_err(failed)?;
    let info: GeneratorInfo = serde_json::from_str(&text).map_err(failed)?;
    if info.shape != shape {
        return Err(task.fail_at(
            "generator",
            format!(
                "the generator makes {:?} images, the data's are {:?}; train it on images of the data's size",
                info.shape, shape
            ),
        ));
    }
    let device = super::device(task)?;
    let (sections, _) =
        crate::engine::state::read_state(&dir.join("generator.safetensors")).map_err(failed)?;
    let tensors =
        sections.get("model").ok_or_else(|| failed("generator.safetensors has no `model` section"))?;
    let pixels: usize = shape.iter().product();
    // Its first weights are drawn from burn's process-wide generator (then replaced): under the
    // lock, so they never shift another node's initial weights.
    let model = {
        let _init = super::INIT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        Cvae::new(&info.model, pixels, info.class_names.len(), &device)
    };
    let model = crate::engine::state::with_tensors(model, tensors, &dir.join("generator.safetensors"))
        .map_err(failed)?;
    let total: usize = classes.iter().map(|c| c.count).sum();
    let mut done = 0u64;
    let mut out = Vec::new();
    for c in classes {
        let Some(g) = info.class_names.iter().position(|n| *n == c.name) else {
            return Err(task.fail_at(
                "generator",
                format!(
                    "the generator was not trained on class {:?}; its classes: {}",
                    c.name,
                    info.class_names.join(", ")
                ),
            ));
        };
        let mut rng = data::rng::Rng::derive(&[seed, TAG_SAMPLE, c.index as u64]);
        let mut bytes = Vec::with_capacity(c.count * pixels);
        let mut left = c.count;
        while left > 0 {
            task.cancel.check()?;
            let n = left.min(256);
            let z = Tensor::<2>::from_data(
                TensorData::new(normal(&mut rng, n * info.model.latent), [n, info.model.latent]),
                &device,
            );
            let y = Tensor::<1, Int>::from_data(TensorData::new(vec![g as i64; n], [n]), &device);
            let p: Vec<f32> = model
                .sample(z, y)
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .map_err(|e| failed(format!("{e:?}")))?;
            bytes.extend(p.iter().map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8));
            left -= n;
            done += n as u64;
            task.events.event(Event::Status {
                node: task.job.name.clone(),
                done,
                total: total as u64,
                message: format!("sampling {}", c.name),
            });
        }
        out.push(bytes);
    }
    Ok(out)
}

/// A plugin's PNG (or JPEG) files `images/<class index>/*`, sorted by name, converted to the
/// data's channels and size: exactly the count asked for each class.
fn read_plugin_images(
    task: &Task<'_>,
    out: &Path,
    classes: &[ClassRequest],
    [c, h, w]: [usize; 3],
) -> Result<Vec<Vec<u8>>, NodeError> {
    let mut all = Vec::new();
    for cl in classes {
        let dir = out.join("images").join(cl.index.to_string());
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| {
                task.fail_at("generator", format!("the plugin wrote no images/{}/ ({e})", cl.index))
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        if files.len() != cl.count {
            return Err(task.fail_at(
                "generator",
                format!(
                    "the plugin wrote {} images for class {} ({:?}), {} were asked for",
                    files.len(),
                    cl.index,
                    cl.name,
                    cl.count
                ),
            ));
        }
        let mut bytes = Vec::with_capacity(cl.count * c * h * w);
        for f in files {
            let img =
                image::open(&f).map_err(|e| task.fail_at("generator", format!("{}: {e}", f.display())))?;
            let img = img.resize_exact(w as u32, h as u32, image::imageops::FilterType::Triangle);
            if c == 1 {
                bytes.extend_from_slice(img.to_luma8().as_raw());
            } else {
                let rgb = img.to_rgb8();
                let raw = rgb.as_raw();
                for ch in 0..3 {
                    bytes.extend(raw.iter().skip(ch).step_by(3));
                }
            }
        }
        all.push(bytes);
    }
    Ok(all)
}

/// A grid of the first `n` images of each class (a row a class), scaled up to about 64 px.
fn preview(path: &Path, per_class: &[Vec<u8>], [c, h, w]: [usize; 3], n: usize) -> Result<(), NodeError> {
    let n = n.max(1);
    let scale = (64 / h.max(w).max(1)).max(1);
    let (cw, ch) = (w * scale + 2, h * scale + 2);
    let mut img = image::RgbImage::from_pixel(
        (n * cw) as u32,
        (per_class.len().max(1) * ch) as u32,
        image::Rgb([255, 255, 255]),
    );
    let per = c * h * w;
    for (row, imgs) in per_class.iter().enumerate() {
        for (col, im) in imgs.chunks_exact(per).take(n).enumerate() {
            for y in 0..h * scale {
                for x in 0..w * scale {
                    let (sy, sx) = (y / scale, x / scale);
                    let px = |ch: usize| im[ch * h * w + sy * w + sx];
                    let rgb = if c == 1 { [px(0); 3] } else { [px(0), px(1), px(2)] };
                    img.put_pixel((col * cw + 1 + x) as u32, (row * ch + 1 + y) as u32, image::Rgb(rgb));
                }
            }
        }
    }
    img.save(path).map_err(|e| failed(format!("{}: {e}", path.display())))
}

/// The synthetic set of a generate entry, as a dataset.
pub(crate) fn read_set(dir: &Path) -> Result<Dataset, NodeError> {
    let text = std::fs::read_to_string(dir.join("dataset.json")).map_err(failed)?;
    let info: SetInfo = serde_json::from_str(&text).map_err(failed)?;
    let images = std::fs::read(dir.join("images.u8")).map_err(failed)?;
    let labels: Vec<u32> =
        info.per_class.iter().enumerate().flat_map(|(c, &n)| std::iter::repeat_n(c as u32, n)).collect();
    Dataset::from_parts(images, info.shape, labels, info.class_names).map_err(failed)
}

/// The `data` input merged with the `synthetic/from` input's images at `ratio` (the real
/// images first, then each class's synthetic ones).
pub(crate) fn with_synthetic(
    task: &Task<'_>,
    real: Arc<Dataset>,
    ratio: Option<f64>,
) -> Result<Arc<Dataset>, NodeError> {
    let Some(ratio) = ratio else { return Ok(real) };
    let synthetic = read_set(node_input(task, "synthetic/from")?)?;
    data::merge(&real, &synthetic, ratio)
        .map(Arc::new)
        .map_err(|e| task.fail_at("data", format!("adding the synthetic images: {e}")))
}
