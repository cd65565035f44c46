//! Engine benchmark: training-step and inference throughput (images/s, batch 64, 3x32x32,
//! 10 classes) for resnet18-cifar, mobilenetv2-cifar and resnet8, distillery (burn flex CPU)
//! vs PyTorch CPU in the same run, both on the same number of threads. Prints medians and
//! the ratio distillery / PyTorch (> 1 means distillery is faster), and the ratio of the best
//! (fastest) iterations, which is less sensitive to other load on the machine.
//!
//! `cargo bench --bench engine`. Environment: `DISTILLERY_TORCH_PYTHON` (default `python3`; needs torch
//! and torchvision), `BENCH_THREADS` (default: all cores, which is what rayon uses),
//! `BENCH_ITERS` (default 5), `BENCH_WARMUP` (default 1), `BENCH_ROUNDS` (default 2), `BENCH_ONLY` (one model name),
//! `BENCH_NO_TORCH` (skip PyTorch, for profiling), `BENCH_NO_TUNE` (keep glibc's default
//! malloc thresholds, see `engine::tune_allocator`). Without a working PyTorch the
//! distillery columns are still printed, with the reason.

mod common;

use burn::tensor::Device;
use distillery::engine::{Arch, ModelConfig, Stem};

use common::{env_usize, median};

fn models() -> Vec<(&'static str, Arch)> {
    vec![
        ("resnet18-cifar", Arch::ResNet { depth: 18, width_mult: 1.0, stem: Stem::Cifar }),
        ("mobilenetv2-cifar", Arch::MobileNetV2 { width_mult: 1.0, stem: Stem::Cifar, dropout: 0.0 }),
        ("resnet8", Arch::ResNet { depth: 8, width_mult: 1.0, stem: Stem::Cifar }),
    ]
}

/// Seconds per batch for training steps and inference passes (batch 64, 3x32x32, 10 classes).
fn bench_ours(arch: Arch, warmup: usize, iters: usize) -> (Vec<f64>, Vec<f64>) {
    let cfg = ModelConfig { arch, in_channels: 3, image_size: 32, num_classes: 10 };
    common::train_and_infer_seconds(&Device::flex(), cfg, 64, warmup, iters)
}

fn bench_torch(
    threads: usize,
    warmup: usize,
    iters: usize,
    model: &str,
) -> Result<serde_json::Value, String> {
    let python = std::env::var("DISTILLERY_TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/engine_torch.py");
    let args = [threads.to_string(), warmup.to_string(), iters.to_string(), model.to_string()];
    common::torch_json(&python, script, &args)
}

fn main() {
    // As the CLI does at start-up (see `engine::tune_allocator`); BENCH_NO_TUNE to compare.
    if std::env::var_os("BENCH_NO_TUNE").is_none() {
        distillery::engine::tune_allocator();
    }
    // `cargo bench` passes `--bench`; nothing else is understood.
    let threads = env_usize("BENCH_THREADS", std::thread::available_parallelism().map_or(1, |n| n.get()));
    let iters = env_usize("BENCH_ITERS", 5);
    let warmup = env_usize("BENCH_WARMUP", 1);
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    println!(
        "engine bench: batch 64, 3x32x32, {threads} threads, {warmup} warm-up + {iters} timed iterations x {rounds} rounds, medians",
        rounds = env_usize("BENCH_ROUNDS", 2)
    );
    let only = std::env::var("BENCH_ONLY").ok();
    let skip_torch = std::env::var_os("BENCH_NO_TORCH").is_some();
    // Rounds alternate distillery and PyTorch model by model, so that load from other
    // processes on a shared machine hits both sides alike; medians are over all rounds.
    let rounds = env_usize("BENCH_ROUNDS", 2);
    let mut rows = Vec::new();
    let mut torch_error = None;
    for (name, arch) in models() {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let (mut t, mut i, mut pt, mut pi) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (a, b) = bench_ours(arch.clone(), warmup, iters);
            t.extend(a);
            i.extend(b);
            if skip_torch || torch_error.is_some() {
                continue;
            }
            match bench_torch(threads, warmup, iters, name) {
                Ok(j) => {
                    pt.extend(
                        serde_json::from_value::<Vec<f64>>(j[name]["train"].clone()).unwrap_or_default(),
                    );
                    pi.extend(
                        serde_json::from_value::<Vec<f64>>(j[name]["infer"].clone()).unwrap_or_default(),
                    );
                }
                Err(e) => torch_error = Some(e),
            }
        }
        eprintln!(
            "distillery {name}: train {:.3} s/batch, infer {:.3} s/batch",
            median(t.clone()),
            median(i.clone())
        );
        rows.push((name, [("train", t, pt), ("infer", i, pi)]));
    }
    if skip_torch {
        println!("pytorch: not measured: skipped (BENCH_NO_TORCH)");
    } else if let Some(e) = &torch_error {
        println!("pytorch: not measured: {e}");
    }
    println!(
        "{:<20} {:>6} {:>17} {:>14} {:>6} {:>11}",
        "model", "mode", "distillery img/s", "pytorch img/s", "ratio", "best ratio"
    );
    for (name, modes) in rows {
        for (mode, ours, theirs) in modes {
            let ips = 64.0 / median(ours.clone());
            if theirs.is_empty() {
                println!("{name:<20} {mode:>6} {ips:>17.1} {:>14} {:>6} {:>11}", "-", "-", "-");
                continue;
            }
            let p = 64.0 / median(theirs.clone());
            let best = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
            let best_ratio = best(&theirs) / best(&ours);
            println!("{name:<20} {mode:>6} {ips:>17.1} {p:>14.1} {:>6.2} {best_ratio:>11.2}", ips / p);
        }
    }
}
