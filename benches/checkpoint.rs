//! Checkpoint cost bench (issue 15): how long a training node's checkpoint takes to write and
//! read and how big it is, for resnet18-cifar (3x32x32, 10 classes) and the quickstart teacher
//! (the `big` model of experiments/quickstart.yaml on its `pretrain` data), against PyTorch's
//! `torch.save` / `torch.load` of the same model and optimizer in the same run; and what that
//! costs a node's wall time at the default interval (`checkpoint_every: auto`).
//!
//! A checkpoint here is what the loop writes for a plain training node with SGD: the sections
//! `model` (every float tensor, running statistics included) and `optimizer` (momentum buffers),
//! gathered (`state::tensors_of`, `Trainer::state_of`) and written (`state::write_state`) inside
//! the timing, as the loop times it; PyTorch's side (benches/checkpoint_torch.py) times
//! `torch.save({"model": state_dict(), "optimizer": state_dict()})`, as is (it overwrites the
//! file in place) and made atomic as `write_state` is (to a temporary file renamed over the
//! last one; the like-for-like comparison). Before each timed write both sides wait, untimed,
//! for the kernel to write out every dirty page (`sync`): `auto` writes at least a minute
//! apart, so a checkpoint never queues behind the last one's writeback. The first write of each
//! model is reported apart (its buffers are fresh memory; it is what a node's first checkpoint
//! costs), and the later ones over `BENCH_ROUNDS` rounds that alternate with PyTorch's. Reads
//! are of the file just written (page cache). Ratios are distillery / PyTorch: above 1 means
//! distillery is slower (time) or bigger (size).
//!
//! The overhead: `auto` writes after an epoch once max(60 s, 50 x the last write's seconds)
//! have passed since the last checkpoint, so one write costs at most w / max(60, 50 w) of the
//! time between them (the bound). The realistic figure measures a training step (batch 64,
//! random images, no data loading or validation, so epochs are if anything longer in a real
//! run), makes an epoch of it, rounds the interval up to whole epochs as the loop does, and
//! counts the checkpoints of a whole node (none after its last epoch).
//!
//! `cargo bench --bench checkpoint` (about a minute on 2 cores). Environment:
//! `DISTILLERY_TORCH_PYTHON` (default `.cache/torch-venv/bin/python` when it exists, else
//! `python3`; needs torch and torchvision), `BENCH_ITERS` (timed writes and reads a round,
//! default 5), `BENCH_ROUNDS` (default 3), `BENCH_STEPS` (training steps timed for the
//! overhead, default 20, after one warm-up), `BENCH_THREADS` (default: all cores), `BENCH_DIR`
//! (where the files go; default a temporary folder in the system's), `BENCH_NO_TORCH`,
//! `BENCH_RAW` (every write's milliseconds, on stderr). Without a working PyTorch the distillery
//! columns are still printed, with the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod common;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Int, Tensor};
use distillery::engine::state::{read_state, tensors_of, write_state};
use distillery::engine::{Arch, ModelConfig, Stem, Trainer, cross_entropy};

/// `checkpoint_every: auto`'s floor and factor (src/nodes/train.rs).
const AUTO_MIN_SECONDS: f64 = 60.0;
const AUTO_FACTOR: f64 = 50.0;
const BATCH: usize = 64;

use common::{env_usize, median};

fn best(v: &[f64]) -> f64 {
    v.iter().cloned().fold(f64::INFINITY, f64::min)
}

/// A model measured, with the node it stands for (for the realistic overhead).
struct Case {
    name: &'static str,
    cfg: ModelConfig,
    /// Batches of `BATCH` an epoch and epochs of the node.
    batches_per_epoch: usize,
    epochs: usize,
    node: String,
}

/// The quickstart teacher: `models.big` on `datasets.pretrain` of experiments/quickstart.yaml,
/// as its `teacher_pt` node trains it (30 epochs at batch 64; fine-tuning keeps the arch).
fn quickstart_teacher() -> Result<Case, String> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/quickstart.yaml");
    let exp = distillery::spec::load(&file).map_err(|d| format!("{}: {d:?}", file.display()))?;
    let big = exp.models.get("big").ok_or("quickstart.yaml has no model `big`")?;
    let d = exp.datasets.get("pretrain").ok_or("quickstart.yaml has no dataset `pretrain`")?;
    let data = distillery::data::load(&distillery::resolve::dataset_config(d, exp.seed), exp.base_dir())
        .map_err(|e| e.to_string())?;
    let [c, h, _] = data.shape;
    let cfg = distillery::resolve::model_config(big, c, h, data.n_classes());
    let epochs = 30;
    let node = format!(
        "{:?}, {c}x{h}x{h}, {} classes; teacher_pt: {} images, {epochs} epochs",
        cfg.arch,
        cfg.num_classes,
        data.len()
    );
    Ok(Case { name: "quickstart-teacher", cfg, batches_per_epoch: data.len().div_ceil(BATCH), epochs, node })
}

fn cases() -> Vec<Case> {
    let mut v = vec![Case {
        name: "resnet18-cifar",
        cfg: ModelConfig {
            arch: Arch::ResNet { depth: 18, width_mult: 1.0, stem: Stem::Cifar },
            in_channels: 3,
            image_size: 32,
            num_classes: 10,
        },
        // CIFAR-10's 50,000 training images at batch 64; a common recipe's 200 epochs.
        batches_per_epoch: 50_000usize.div_ceil(BATCH),
        epochs: 200,
        node: "CIFAR-10: 50000 images, 200 epochs".into(),
    }];
    match quickstart_teacher() {
        Ok(c) => v.push(c),
        Err(e) => eprintln!("quickstart teacher skipped: {e}"),
    }
    v
}

/// What one model measured: seconds per training step, of its first checkpoint write, of the
/// later ones (gathering included) and their gathering alone, per read; the file's bytes; the
/// model's float values (parameters and running statistics: burn's `num_params`).
#[derive(Default)]
struct Ours {
    steps: Vec<f64>,
    first: f64,
    write: Vec<f64>,
    gather: Vec<f64>,
    read: Vec<f64>,
    bytes: u64,
    floats: usize,
}

/// A model trained `steps` steps after one warm-up (which also gives the optimizer its momentum
/// buffers), its trainer, and the steps' seconds.
fn train(cfg: &ModelConfig, steps: usize) -> (distillery::engine::Model, Trainer, Ours) {
    let ad = Device::flex().autodiff();
    let mut model = cfg.init(&ad).unwrap();
    let mut trainer = common::sgd_trainer();
    let (c, px, classes) = (cfg.in_channels, cfg.image_size, cfg.num_classes);
    let x = Tensor::<4>::random([BATCH, c, px, px], Distribution::Normal(0.0, 1.0), &ad);
    let y = Tensor::<1, Int>::random([BATCH], Distribution::Uniform(0.0, classes as f64), &ad);
    ad.sync().unwrap();
    let mut ours = Ours::default();
    for i in 0..=steps {
        let t = Instant::now();
        let (_, z) = model.forward(x.clone());
        model = trainer.step(model, cross_entropy(z, y.clone())).0;
        ad.sync().unwrap();
        if i > 0 {
            ours.steps.push(t.elapsed().as_secs_f64());
        }
    }
    ours.floats = model.num_params();
    (model, trainer, ours)
}

/// `iters` checkpoint writes and reads of `model` and `trainer` into `ours`; in the first round,
/// one write and one read before them, the write timed apart (it allocates its buffers fresh:
/// about four times the file, the gathered tensors, their copy, the body and the file's bytes).
fn checkpoint(
    model: &distillery::engine::Model,
    trainer: &Trainer,
    file: &Path,
    iters: usize,
    first_round: bool,
    ours: &mut Ours,
) {
    // Metadata as the loop writes it: kind, format, key and the progress as JSON (a few
    // hundred bytes here; a long run's history rows add a few kB).
    let meta = BTreeMap::from([
        ("distillery.kind".to_string(), "distillery training checkpoint".to_string()),
        ("distillery.format".to_string(), "1".to_string()),
        ("distillery.key".to_string(), "0".repeat(64)),
        ("distillery.progress".to_string(), "{\"epoch\":1,\"batch\":0,\"history\":[{}]}".to_string()),
    ]);
    let extra = usize::from(first_round);
    for i in 0..iters + extra {
        flush_writes();
        let t = Instant::now();
        let m = tensors_of(model);
        let o = trainer.state_of(model);
        let g = t.elapsed().as_secs_f64();
        write_state(file, &[("model", &m), ("optimizer", &o)], &meta).unwrap();
        let w = t.elapsed().as_secs_f64();
        if i < extra {
            ours.first = w;
        } else {
            ours.gather.push(g);
            ours.write.push(w);
        }
    }
    ours.bytes = std::fs::metadata(file).unwrap().len();
    // Reads of the file just written (from the page cache).
    for i in 0..iters + extra {
        let t = Instant::now();
        let (sections, _) = read_state(file).unwrap();
        if i >= extra {
            ours.read.push(t.elapsed().as_secs_f64());
        }
        assert!(sections.contains_key("model") && sections.contains_key("optimizer"));
    }
}

/// Waits (untimed) until the kernel has written every dirty page out (`sync`), so that each timed
/// write starts as a checkpoint at least a minute after the last does, and not throttled behind
/// the previous write's writeback. PyTorch's side does the same (`os.sync()`).
fn flush_writes() {
    let _ = Command::new("sync").status();
}

fn torch_python() -> String {
    std::env::var("DISTILLERY_TORCH_PYTHON").unwrap_or_else(|_| {
        let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.cache/torch-venv/bin/python");
        if Path::new(venv).exists() { venv.into() } else { "python3".into() }
    })
}

/// The PyTorch side for every case whose architecture it builds (a CIFAR-stem ResNet).
fn bench_torch(
    cases: &[Case],
    threads: usize,
    iters: usize,
    dir: &Path,
) -> Result<serde_json::Value, String> {
    let specs: Vec<_> = cases
        .iter()
        .filter_map(|c| match c.cfg.arch {
            Arch::ResNet { depth, width_mult, stem: Stem::Cifar } => Some(serde_json::json!({
                "name": c.name, "depth": depth, "width_mult": width_mult,
                "in_channels": c.cfg.in_channels, "image_size": c.cfg.image_size,
                "classes": c.cfg.num_classes,
            })),
            _ => {
                eprintln!("pytorch side: no matching torch model for {} ({:?})", c.name, c.cfg.arch);
                None
            }
        })
        .collect();
    let python = torch_python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/checkpoint_torch.py");
    let args = [
        threads.to_string(),
        iters.to_string(),
        dir.display().to_string(),
        serde_json::Value::Array(specs).to_string(),
    ];
    common::torch_json(&python, script, &args)
}

fn ms(s: f64) -> String {
    format!("{:.1}", s * 1e3)
}

/// A number, or `-` where PyTorch was not measured.
fn or_dash(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map_or("-".into(), f)
}

fn main() {
    // As the CLI does at start-up (see `engine::tune_allocator`).
    distillery::engine::tune_allocator();
    let threads = env_usize("BENCH_THREADS", std::thread::available_parallelism().map_or(1, |n| n.get()));
    let iters = env_usize("BENCH_ITERS", 5).max(1);
    let steps = env_usize("BENCH_STEPS", 20).max(1);
    let rounds = env_usize("BENCH_ROUNDS", 3).max(1);
    let skip_torch = std::env::var_os("BENCH_NO_TORCH").is_some();
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    let tmp;
    let dir: PathBuf = match std::env::var_os("BENCH_DIR") {
        Some(d) => d.into(),
        None => {
            tmp = tempfile::tempdir().unwrap();
            tmp.path().to_path_buf()
        }
    };
    println!(
        "checkpoint bench: sections model + optimizer (SGD momentum), {rounds} rounds of {iters} writes and \
         reads each (after a first), {steps} training steps of batch {BATCH}, {threads} threads, files in {}",
        dir.display()
    );
    let cases = cases();
    let mut trained: Vec<_> = cases.iter().map(|c| train(&c.cfg, steps)).collect();
    // Rounds alternate distillery's writes and PyTorch's, so that the disk's and the machine's
    // other load hit both sides alike; medians are over all rounds.
    let mut torch: Result<Vec<serde_json::Value>, String> = Ok(Vec::new());
    for round in 0..rounds {
        for (c, (model, trainer, ours)) in cases.iter().zip(&mut trained) {
            let file = dir.join(format!("{}.safetensors", c.name));
            checkpoint(model, trainer, &file, iters, round == 0, ours);
        }
        if let Ok(runs) = &mut torch {
            if skip_torch {
                torch = Err("skipped (BENCH_NO_TORCH)".to_string());
            } else {
                match bench_torch(&cases, threads, iters, &dir) {
                    Ok(j) => runs.push(j),
                    Err(e) => torch = Err(e),
                }
            }
        }
    }
    // The files stay between rounds: as in the loop, each write replaces the last.
    for c in &cases {
        for ext in ["safetensors", "pt", "atomic.pt"] {
            let _ = std::fs::remove_file(dir.join(format!("{}.{ext}", c.name)));
        }
    }
    for (c, (_, _, o)) in cases.iter().zip(&trained) {
        eprintln!(
            "distillery {}: first write {} ms, then {} ms, read {} ms, {:.2} MB, step {} ms",
            c.name,
            ms(o.first),
            ms(median(o.write.clone())),
            ms(median(o.read.clone())),
            o.bytes as f64 / 1e6,
            ms(median(o.steps.clone()))
        );
    }
    let ours: Vec<Ours> = trained.into_iter().map(|(_, _, o)| o).collect();
    if let Err(e) = &torch {
        println!("pytorch: not measured: {e}");
    }
    // PyTorch's first save is its first round's (each round is a new process, whose first save
    // is left out of the later rounds' series).
    let field = |name: &str, k: &str| torch.as_ref().ok().and_then(|r| r.first()).map(|j| j[name][k].clone());
    let series = |name: &str, k: &str| -> Option<Vec<f64>> {
        let runs = torch.as_ref().ok()?;
        let v: Vec<f64> = runs
            .iter()
            .filter_map(|j| serde_json::from_value::<Vec<f64>>(j[name][k].clone()).ok())
            .flatten()
            .collect();
        (!v.is_empty()).then_some(v)
    };
    // Every later write, in order (rounds of BENCH_ITERS), to see the spread: BENCH_RAW.
    if std::env::var_os("BENCH_RAW").is_some() {
        let whole_ms = |v: &[f64]| v.iter().map(|x| (x * 1e3).round() as i64).collect::<Vec<_>>();
        for (c, o) in cases.iter().zip(&ours) {
            eprintln!("{} writes ms: distillery {:?}", c.name, whole_ms(&o.write));
            for (label, k) in [("pytorch", "save"), ("pytorch atomic", "atomic_save")] {
                eprintln!(
                    "{} writes ms: {label} {:?}",
                    c.name,
                    whole_ms(&series(c.name, k).unwrap_or_default())
                );
            }
        }
    }
    let number = |name: &str, k: &str| field(name, k).and_then(|v| v.as_f64());

    println!();
    println!(
        "size (floats: the model's parameters and running statistics), and each model's first write \
         (ratios distillery / PyTorch: above 1 = bigger, slower):"
    );
    println!(
        "{:<20} {:>10} {:>8} {:>9} {:>6} | {:>14} {:>9} {:>6}",
        "model", "floats", "MB", "torch MB", "ratio", "first write ms", "torch ms", "ratio"
    );
    for (c, o) in cases.iter().zip(&ours) {
        let tb = number(c.name, "bytes");
        let tf = number(c.name, "first_save");
        if let Some(n) = number(c.name, "floats").filter(|&n| n as usize != o.floats) {
            println!(
                "{}: PyTorch's model has {n} float values, ours {}: not the same model",
                c.name, o.floats
            );
        }
        println!(
            "{:<20} {:>10} {:>8.2} {:>9} {:>6} | {:>14} {:>9} {:>6}",
            c.name,
            o.floats,
            o.bytes as f64 / 1e6,
            or_dash(tb, |b| format!("{:.2}", b / 1e6)),
            or_dash(tb, |b| format!("{:.2}", o.bytes as f64 / b)),
            ms(o.first),
            or_dash(tf, ms),
            or_dash(tf, |t| format!("{:.2}", o.first / t)),
        );
    }

    println!();
    println!(
        "later writes and reads, medians of {} (best); torch atomic = torch.save to a temporary file \
         renamed over the last, as write_state writes; gather = tensors_of + state_of, in the write:",
        rounds * iters
    );
    println!(
        "{:<20} {:>15} {:>15} {:>6} {:>6} {:>15} {:>6} {:>6} | {:>6} | {:>7} {:>8} {:>6}",
        "model",
        "write ms",
        "torch ms",
        "ratio",
        "best",
        "torch atomic ms",
        "ratio",
        "best",
        "gather",
        "read ms",
        "torch ms",
        "ratio"
    );
    let with_best = |v: &Option<Vec<f64>>| {
        v.as_ref().map_or("-".into(), |v| format!("{} ({})", ms(median(v.clone())), ms(best(v))))
    };
    let ratios = |ours: &[f64], v: &Option<Vec<f64>>| match v {
        Some(v) => (
            format!("{:.2}", median(ours.to_vec()) / median(v.clone())),
            format!("{:.2}", best(ours) / best(v)),
        ),
        None => ("-".into(), "-".into()),
    };
    for (c, o) in cases.iter().zip(&ours) {
        let (ts, ta, tl) = (series(c.name, "save"), series(c.name, "atomic_save"), series(c.name, "load"));
        let ((r1, b1), (r2, b2)) = (ratios(&o.write, &ts), ratios(&o.write, &ta));
        let r = median(o.read.clone());
        let tr = tl.as_ref().map(|v| median(v.clone()));
        println!(
            "{:<20} {:>15} {:>15} {r1:>6} {b1:>6} {:>15} {r2:>6} {b2:>6} | {:>6} | {:>7} {:>8} {:>6}",
            c.name,
            format!("{} ({})", ms(median(o.write.clone())), ms(best(&o.write))),
            with_best(&ts),
            with_best(&ta),
            ms(median(o.gather.clone())),
            ms(r),
            or_dash(tr, ms),
            or_dash(tr, |t| format!("{:.2}", r / t)),
        );
    }

    println!();
    println!(
        "overhead at `checkpoint_every: auto` (after an epoch, once max({AUTO_MIN_SECONDS} s, {AUTO_FACTOR} x \
         the last write) have passed); w = the later writes' median:"
    );
    println!(
        "{:<20} {:>8} {:>10} {:>8} {:>8} | {:>8} {:>8} {:>6} {:>8} | {:>6} {:>8}",
        "model",
        "w s",
        "interval s",
        "bound %",
        "step ms",
        "batches",
        "epoch s",
        "every",
        "share %",
        "ckpts",
        "node %"
    );
    for (c, o) in cases.iter().zip(&ours) {
        let w = median(o.write.clone());
        let interval = (AUTO_FACTOR * w).max(AUTO_MIN_SECONDS);
        let bound = 100.0 * w / interval;
        let step = median(o.steps.clone());
        let epoch = step * c.batches_per_epoch as f64;
        // The loop checks after each epoch, counting from the end of the last write (or from the
        // loop's start): a checkpoint every k epochs, none after the last epoch.
        let k = ((interval / epoch).ceil() as usize).max(1);
        let share = 100.0 * w / (k as f64 * epoch + w);
        let n = (c.epochs - 1) / k;
        // The node's own first checkpoint is its process's first write (when nothing before it
        // in the process wrote one).
        let written = if n == 0 { 0.0 } else { o.first + (n - 1) as f64 * w };
        let node_share = 100.0 * written / (c.epochs as f64 * epoch + written);
        println!(
            "{:<20} {w:>8.3} {interval:>10.1} {bound:>8.3} {:>8} | {:>8} {epoch:>8.2} {:>6} {share:>8.3} | {n:>6} {node_share:>8.3}",
            c.name,
            ms(step),
            c.batches_per_epoch,
            format!("{k} ep"),
        );
    }
    println!("(bound: w / interval; share: w over the time between two checkpoints, the interval rounded up");
    println!(" to whole epochs of the measured step; ckpts and node %: over a whole node, the first write");
    println!(" at its measured cost) nodes:");
    for c in &cases {
        println!("  {}: {}", c.name, c.node);
    }
}
