//! Gradient accumulation and the weight EMA against PyTorch, on the fixtures of
//! `tools/fixtures_recipes.py` (see its docstring): every tensor of the state dict (parameters
//! and batch-norm statistics) after every optimizer step or average update, within 1e-5 of its
//! largest value.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::parity_tests::{config, fixture_dir, floats, read, rel_error};
use super::safetensors::{self, Data, Entry};
use super::{Ema, OptimizerConfig, Trainer, TrainerConfig, cross_entropy, load, save};
use crate::engine::Model;

fn io() -> BTreeMap<String, Entry> {
    read(&fixture_dir().join("recipes.io.safetensors"))
}

fn ints(io: &BTreeMap<String, Entry>, key: &str) -> Vec<i64> {
    match io.get(key) {
        Some(Entry { data: Data::I64(v), .. }) => v.clone(),
        _ => panic!("fixture has no integer tensor {key}; run `python tools/fixtures_recipes.py`"),
    }
}

/// The images and labels of `indices`, on `device`.
fn batch(io: &BTreeMap<String, Entry>, indices: &[i64], device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let (x, shape) = floats(io, "x");
    let per: usize = shape[1..].iter().product();
    let labels = ints(io, "labels");
    let mut xs = Vec::with_capacity(indices.len() * per);
    let mut ys = Vec::with_capacity(indices.len());
    for &i in indices {
        let i = i as usize;
        xs.extend_from_slice(&x[i * per..(i + 1) * per]);
        ys.push(labels[i]);
    }
    let n = indices.len();
    (
        Tensor::<4>::from_data(TensorData::new(xs, [n, shape[1], shape[2], shape[3]]), device),
        Tensor::<1, Int>::from_data(TensorData::new(ys, [n]), device),
    )
}

/// Every float tensor of `model`'s state dict against the fixture's `<prefix>.<name>`.
fn compare(model: &Model, io: &BTreeMap<String, Entry>, prefix: &str, errors: &mut Vec<String>) -> usize {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m.safetensors");
    save(model, &path).unwrap();
    let mut n = 0;
    for (name, e) in &safetensors::read(&path).unwrap() {
        let Data::F32(ours) = &e.data else { continue };
        let (torch, shape) = floats(io, &format!("{prefix}.{name}"));
        assert_eq!(shape, e.shape, "{prefix}.{name}");
        errors.extend(rel_error(&format!("{prefix}.{name}"), ours, &torch, 1e-5));
        n += 1;
    }
    n
}

fn start(device: &Device) -> Model {
    load(&config("cnn"), &fixture_dir().join("cnn.weights.safetensors"), device).unwrap()
}

#[test]
fn accumulated_gradients_match_torch_step_by_step() {
    let io = io();
    let ad = Device::flex().autodiff();
    let mut model = start(&ad);
    let mut tc = TrainerConfig::new(OptimizerConfig::Sgd {
        lr: 0.05,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-4,
    });
    tc.grad_clip = Some(2.5);
    let mut trainer = Trainer::new(tc).unwrap();
    let (mut errors, mut compared, mut step) = (Vec::new(), 0, 0);
    for epoch in 0..2 {
        let order = ints(&io, &format!("accumulate.order{epoch}"));
        let batches = [&order[0..4], &order[4..8], &order[8..10]];
        for group in batches.chunks(2) {
            let images: usize = group.iter().map(|b| b.len()).sum();
            for b in group {
                let (x, y) = batch(&io, b, &ad);
                let (_, z) = model.forward(x);
                trainer.accumulate(&model, cross_entropy(z, y), b.len() as f64 / images as f64);
            }
            model = trainer.step_accumulated(model).0;
            step += 1;
            compared += compare(&model.valid(), &io, &format!("accumulate.step{step}"), &mut errors);
        }
    }
    assert_eq!(step, 4);
    assert!(compared >= 4 * 8, "{compared} tensors compared");
    assert!(errors.is_empty(), "{} tensors off:\n{}", errors.len(), errors.join("\n"));
}

#[test]
fn one_batch_groups_are_plain_steps() {
    // `accumulate` 1 is bit-for-bit the plain step (what every node did before the key existed).
    let io = io();
    let ad = Device::flex().autodiff();
    let cfg = TrainerConfig::new(OptimizerConfig::AdamW {
        lr: 1e-2,
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: 0.01,
    });
    let (mut a, mut b) = (start(&ad), start(&ad));
    let (mut ta, mut tb) = (Trainer::new(cfg.clone()).unwrap(), Trainer::new(cfg).unwrap());
    for idx in [[0i64, 1, 2, 3, 4], [5, 6, 7, 8, 9]] {
        let (x, y) = batch(&io, &idx, &ad);
        let za = a.forward(x.clone()).1;
        a = ta.step(a, cross_entropy(za, y.clone())).0;
        let zb = b.forward(x).1;
        tb.accumulate(&b, cross_entropy(zb, y), 1.0);
        b = tb.step_accumulated(b).0;
    }
    let dir = tempfile::tempdir().unwrap();
    save(&a, &dir.path().join("a")).unwrap();
    save(&b, &dir.path().join("b")).unwrap();
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), std::fs::read(dir.path().join("b")).unwrap());
}

#[test]
fn ema_matches_torch_averaged_model_with_buffers() {
    let io = io();
    let ad = Device::flex().autodiff();
    let mut model = start(&ad);
    let cfg = TrainerConfig::new(OptimizerConfig::AdamW {
        lr: 1e-2,
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: 0.01,
    });
    let mut trainer = Trainer::new(cfg).unwrap();
    let mut ema = Ema::new(0.8);
    let (mut errors, mut compared, mut step) = (Vec::new(), 0, 0);
    for _epoch in 0..3 {
        for idx in [[0i64, 1, 2, 3, 4], [5, 6, 7, 8, 9]] {
            let (x, y) = batch(&io, &idx, &ad);
            let (_, z) = model.forward(x);
            model = trainer.step(model, cross_entropy(z, y)).0;
            ema.update(&model.valid());
            step += 1;
            compared += compare(ema.average().unwrap(), &io, &format!("ema.step{step}"), &mut errors);
        }
    }
    assert_eq!(ema.updates(), 6);
    // The average is not the model (else the test could not fail): after 6 steps they differ.
    let (mut same, mut scratch) = (Vec::new(), Vec::new());
    compare(&model.valid(), &io, "ema.step6", &mut scratch);
    same.extend(scratch);
    assert!(!same.is_empty(), "the trained weights equal their average: the fixture cannot tell them apart");
    assert!(compared >= 6 * 8, "{compared} tensors compared");
    assert!(errors.is_empty(), "{} tensors off:\n{}", errors.len(), errors.join("\n"));
}
