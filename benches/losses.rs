//! Loss benchmark: one training step's loss work (forward of every term + backward into the
//! heads and the student features) for the paper's presets at the paper's sizes: batch 64,
//! mobilenetv2 student (1280), resnet50 teacher (2048), 100 classes, CRD over 5000 samples
//! with 4096 negatives; and the same work in PyTorch CPU when a Python with torch is there.
//!
//! Run: `cargo bench --bench losses`. Env: DISTILLERY_TORCH_PYTHON (default
//! python3).

#[path = "common/mod.rs"]
mod common;

use std::time::Instant;

use burn::nn::LinearConfig;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use distillery::losses::{DistillInputs, DistillLosses, LossDims, preset};

const BATCH: usize = 64;
const DIMS: LossDims = LossDims { student_dim: 1280, teacher_dim: 2048, num_classes: 100, n_data: 5000 };

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn inputs(device: &Device, step: usize) -> DistillInputs {
    let normal = || Distribution::Normal(0.0, 1.0);
    DistillInputs {
        student_features: Tensor::random([BATCH, DIMS.student_dim], normal(), device).require_grad(),
        student_logits: Tensor::random([BATCH, DIMS.num_classes], normal(), device).require_grad(),
        teacher_features: Tensor::random([BATCH, DIMS.teacher_dim], normal(), device),
        teacher_logits: Tensor::random([BATCH, DIMS.num_classes], normal(), device),
        labels: Tensor::<1, Int>::from_data(
            TensorData::new((0..BATCH as i64).map(|i| i % 100).collect::<Vec<_>>(), [BATCH]),
            device,
        ),
        indices: Some((0..BATCH).map(|i| (step * BATCH + i) % DIMS.n_data).collect()),
        contrast_indices: None,
    }
}

/// Median ms of forward + backward over `reps` steps, after two warm-up steps.
fn step_ms(name: &str, device: &Device, reps: usize) -> f64 {
    let classifier = LinearConfig::new(DIMS.teacher_dim, DIMS.num_classes).init(device);
    let losses = DistillLosses::new(&preset(name).unwrap(), DIMS, Some(classifier), device).unwrap();
    let mut times = Vec::new();
    for step in 0..reps + 2 {
        let x = inputs(device, step);
        let t = Instant::now();
        let terms = losses.forward(x).unwrap();
        let grads = terms.total.backward();
        std::hint::black_box(terms.check_finite(step as u64).unwrap());
        drop(grads);
        if step >= 2 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    median(times)
}

fn main() {
    let device = Device::flex().autodiff();
    println!(
        "losses bench: batch {BATCH}, student {} -> teacher {}, {} classes, n_data {}; forward + backward",
        DIMS.student_dim, DIMS.teacher_dim, DIMS.num_classes, DIMS.n_data
    );
    let torch = common::torch_medians("bench_losses_torch.py", &[]);
    println!("{:<16} {:>10} {:>12} {:>10}", "preset", "ms/step", "pytorch ms", "torch/ours");
    for name in ["kd", "align_uniform", "crd", "srrl"] {
        let ours = step_ms(name, &device, 15);
        let pt = torch.as_ref().and_then(|t| t.iter().find(|(n, _)| n == name).map(|(_, v)| *v));
        match pt {
            Some(pt) => println!("{name:<16} {ours:>10.2} {pt:>12.2} {:>10.2}", pt / ours),
            None => println!("{name:<16} {ours:>10.2} {:>12} {:>10}", "-", "-"),
        }
    }
}
