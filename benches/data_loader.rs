//! Data-loader benchmark: time to prepare one batch of 64 images at 3x32x32 with CIFAR-style
//! train transforms (pad 4 + random crop, flip, normalise), with DSA (M and S), and the
//! paper's 224 px CIFAR transform; the loader's steady-state batches/s; and the same work in
//! PyTorch CPU (torchvision + DiffAugment) when a Python with torch is available.
//!
//! Run: `cargo bench --bench data_loader`. Env: DISTILLERY_TORCH_PYTHON (default
//! python3), DISTILLERY_RESNET8_STEP_MS (a measured resnet8 training
//! step, batch 64, to print the data/step ratio against).

#[path = "common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use distillery::data::{
    Dataset, DatasetConfig, DsaConfig, DsaMode, Loader, LoaderConfig, Source, Split, TransformConfig, load,
};

const BATCH: usize = 64;

/// Real digits upscaled (nearest, 4x) to 3x32x32 with channel-dependent intensities.
fn cifar_like() -> Arc<Dataset> {
    let digits = load(&DatasetConfig::new(Source::BuiltinDigits, Split::All), Path::new(".")).unwrap();
    let mut images = Vec::with_capacity(digits.len() * 3072);
    for i in 0..digits.len() {
        let d = digits.image(i);
        for c in 0..3u32 {
            for y in 0..32 {
                for x in 0..32 {
                    images.push((d[(y / 4) * 8 + x / 4] as u32 * (4 - c) / 4) as u8);
                }
            }
        }
    }
    Arc::new(
        Dataset::from_parts(images, [3, 32, 32], digits.labels.clone(), digits.class_names.clone()).unwrap(),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median ms to build one batch (rayon over the global pool), over `reps` distinct batches.
fn batch_ms(loader: &Loader, reps: usize) -> f64 {
    let nb = loader.n_batches();
    let _ = loader.batch(0, 0);
    median(
        (0..reps)
            .map(|r| {
                let t = Instant::now();
                std::hint::black_box(loader.batch((r / nb) as u64, r % nb));
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

fn main() {
    let threads = rayon::current_num_threads();
    let data = cifar_like();
    println!("data_loader bench: batch {BATCH}, 3x32x32, {} images, rayon threads {threads}", data.len());
    let cifar = TransformConfig {
        normalize: Some(distillery::data::Normalize::Dataset),
        ..TransformConfig::cifar_train(32)
    };
    let cases: Vec<(&str, TransformConfig, usize)> = vec![
        ("cifar_train_32", cifar.clone(), 300),
        (
            "cifar_train_32+dsa_m",
            TransformConfig { dsa: Some(DsaConfig::paper(DsaMode::Multiple)), ..cifar.clone() },
            300,
        ),
        (
            "cifar_train_32+dsa_s",
            TransformConfig { dsa: Some(DsaConfig::paper(DsaMode::Single)), ..cifar.clone() },
            300,
        ),
        ("paper_cifar_224", TransformConfig::paper_cifar_train(), 15),
    ];
    let torch = common::torch_medians("data/bench_torch_transforms.py", &[threads.to_string()]);
    let step_ms: Option<f64> = std::env::var("DISTILLERY_RESNET8_STEP_MS").ok().and_then(|v| v.parse().ok());
    println!("{:<24} {:>12} {:>14} {:>12}", "case", "ms/batch", "pytorch ms", "torch/ours");
    let mut ours = Vec::new();
    for (name, t, reps) in &cases {
        let loader = Loader::new(data.clone(), LoaderConfig::train(BATCH, true, 0, t.clone())).unwrap();
        let ms = batch_ms(&loader, *reps);
        let pt = torch.as_ref().and_then(|v| v.iter().find(|(n, _)| n == name).map(|(_, m)| *m));
        match pt {
            Some(p) => println!("{name:<24} {ms:>12.3} {p:>14.3} {:>11.1}x", p / ms),
            None => println!("{name:<24} {ms:>12.3} {:>14} {:>12}", "-", "-"),
        }
        ours.push((name.to_string(), ms));
    }
    // Single-thread cost: the CPU time a batch takes away from training on a busy machine.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let one = pool.install(|| {
        let loader =
            Loader::new(data.clone(), LoaderConfig::train(BATCH, true, 0, cases[1].1.clone())).unwrap();
        batch_ms(&loader, 200)
    });
    println!("cifar_train_32+dsa_m on 1 thread: {one:.3} ms/batch (CPU time per batch)");

    // Steady state: consume epochs through the background iterator as fast as possible.
    for (name, t, _) in &cases[..2] {
        let loader = Loader::new(data.clone(), LoaderConfig::train(BATCH, true, 0, t.clone())).unwrap();
        let start = Instant::now();
        let mut n = 0usize;
        for epoch in 0..10 {
            n += loader.epoch(epoch).map(Result::unwrap).count();
        }
        let s = start.elapsed().as_secs_f64();
        println!(
            "loader steady state {name}: {:.0} batches/s ({:.3} ms/batch, {n} batches)",
            n as f64 / s,
            s * 1e3 / n as f64
        );
    }
    let torch_step =
        torch.as_ref().and_then(|v| v.iter().find(|(n, _)| n == "resnet8_step").map(|(_, m)| *m));
    if let Some(step) = torch_step {
        println!(
            "pytorch CPU resnet8 training step (batch 64): {step:.2} ms; burn's is slower, so these ratios are upper bounds:"
        );
        for (name, ms) in &ours[..3] {
            println!("  {name}: {:.2}% of the pytorch step (target < 10%)", 100.0 * ms / step);
        }
        println!("  cifar_train_32+dsa_m, 1 thread: {:.2}% of the pytorch step", 100.0 * one / step);
    }
    match step_ms {
        Some(step) => {
            for (name, ms) in &ours[..3] {
                println!("{name}: {:.2}% of a {step} ms resnet8 step (target < 10%)", 100.0 * ms / step);
            }
            println!("cifar_train_32+dsa_m, 1 thread: {:.2}% of the step", 100.0 * one / step);
        }
        None => {
            println!("set DISTILLERY_RESNET8_STEP_MS to print the ratio to a measured resnet8 step")
        }
    }
    if torch.is_none() {
        println!("pytorch comparison skipped: no python with torch (set DISTILLERY_TORCH_PYTHON)");
    }
}
