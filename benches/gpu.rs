//! GPU benchmark: training-step and inference throughput (images/s) on `cuda:0` for resnet18,
//! resnet50, mobilenetv2 and vit-b16, at batch 64 of 3x32x32 (CIFAR stems for the convnets)
//! and batch 32 of 3x224x224 (ImageNet stems), 10 classes; distillery (burn's CUDA backend)
//! vs PyTorch eager on the same GPU in the same run (`benches/gpu_torch.py`). A training step
//! is forward + cross-entropy + backward + SGD (momentum 0.9, wd 5e-4); inference a forward
//! pass in eval mode. Prints medians and the ratio distillery / PyTorch (> 1: distillery is
//! faster).
//!
//! `cargo bench --features cuda --bench gpu` (scripts/gpu-check runs the prebuilt binary).
//! Environment: `DISTILLERY_TORCH_PYTHON` (default `python3`; needs torch with CUDA and
//! torchvision), `BENCH_ITERS` (default 10), `BENCH_WARMUP` (default 3: the first iterations
//! compile and autotune kernels), `BENCH_ONLY` (one model name), `BENCH_NO_TORCH`.

use std::process::Command;

mod common;

use burn::tensor::Device;
use distillery::engine::{Arch, ModelConfig, Stem, VitPreset};

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn arch(name: &str, px: usize) -> Arch {
    let stem = if px <= 64 { Stem::Cifar } else { Stem::ImageNet };
    match name {
        "resnet18" => Arch::ResNet { depth: 18, width_mult: 1.0, stem },
        "resnet50" => Arch::ResNet { depth: 50, width_mult: 1.0, stem },
        "mobilenetv2" => Arch::MobileNetV2 { width_mult: 1.0, stem, dropout: 0.0 },
        "vit-b16" => {
            Arch::Vit { preset: VitPreset::B16, patch_size: 16, depth: None, heads: None, dim: None }
        }
        other => panic!("unknown model {other}"),
    }
}

/// Seconds per batch for training steps and inference passes on `device`.
fn bench_ours(
    device: &Device,
    name: &str,
    batch: usize,
    px: usize,
    warmup: usize,
    iters: usize,
) -> (Vec<f64>, Vec<f64>) {
    let cfg = ModelConfig { arch: arch(name, px), in_channels: 3, image_size: px, num_classes: 10 };
    common::train_and_infer_seconds(device, cfg, batch, warmup, iters)
}

fn bench_torch(
    name: &str,
    batch: usize,
    px: usize,
    warmup: usize,
    iters: usize,
) -> Result<(Vec<f64>, Vec<f64>), String> {
    let python = std::env::var("DISTILLERY_TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = std::env::var("DISTILLERY_GPU_TORCH_SCRIPT")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/benches/gpu_torch.py").into());
    let args = [
        script.clone(),
        name.into(),
        batch.to_string(),
        px.to_string(),
        warmup.to_string(),
        iters.to_string(),
    ];
    let out = Command::new(&python).args(&args).output().map_err(|e| {
        format!("cannot run {python}: {e} (set DISTILLERY_TORCH_PYTHON to a python with torch)")
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{python} {script} failed: {}", err.lines().last().unwrap_or("")));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or(""))
        .map_err(|e| format!("bad output from {script}: {e}"))?;
    let get = |k: &str| serde_json::from_value::<Vec<f64>>(v[k].clone()).unwrap_or_default();
    Ok((get("train"), get("infer")))
}

fn main() {
    let iters = env_usize("BENCH_ITERS", 10);
    let warmup = env_usize("BENCH_WARMUP", 3);
    let only = std::env::var("BENCH_ONLY").ok();
    let skip_torch = std::env::var_os("BENCH_NO_TORCH").is_some();
    let device = match distillery::engine::parse_device("cuda:0") {
        Ok(d) => d,
        Err(e) => {
            println!("gpu bench: not run: {e}");
            std::process::exit(1);
        }
    };
    let gpu = distillery::engine::device::cuda().gpus.first().map(|g| g.name.clone()).unwrap_or_default();
    println!("gpu bench on cuda:0 ({gpu}): {warmup} warm-up + {iters} timed iterations, medians");
    println!(
        "{:<12} {:>9} {:>6} {:>17} {:>14} {:>6}",
        "model", "input", "mode", "distillery img/s", "pytorch img/s", "ratio"
    );
    let mut ratios = Vec::new();
    for (batch, px) in [(64usize, 32usize), (32, 224)] {
        for name in ["resnet18", "resnet50", "mobilenetv2", "vit-b16"] {
            if only.as_deref().is_some_and(|o| o != name) {
                continue;
            }
            let (t, i) = bench_ours(&device, name, batch, px, warmup, iters);
            let theirs = if skip_torch {
                Err("skipped (BENCH_NO_TORCH)".to_string())
            } else {
                bench_torch(name, batch, px, warmup, iters)
            };
            for (mode, ours, torch) in
                [("train", &t, theirs.as_ref().map(|r| &r.0)), ("infer", &i, theirs.as_ref().map(|r| &r.1))]
            {
                let ips = batch as f64 / median(ours.clone());
                let input = format!("{batch}x{px}px");
                match torch {
                    Ok(p) if !p.is_empty() => {
                        let pips = batch as f64 / median(p.clone());
                        ratios.push(ips / pips);
                        println!(
                            "{name:<12} {input:>9} {mode:>6} {ips:>17.1} {pips:>14.1} {:>6.2}",
                            ips / pips
                        );
                    }
                    Ok(_) => println!("{name:<12} {input:>9} {mode:>6} {ips:>17.1} {:>14} {:>6}", "-", "-"),
                    Err(e) => {
                        println!("{name:<12} {input:>9} {mode:>6} {ips:>17.1} {:>14} {:>6}  ({e})", "-", "-")
                    }
                }
            }
        }
    }
    if !ratios.is_empty() {
        let min = ratios.iter().cloned().fold(f64::INFINITY, f64::min);
        println!("ratio: median {:.2}, lowest {min:.2} (aim: >= 0.8 on every row)", median(ratios));
    }
}
