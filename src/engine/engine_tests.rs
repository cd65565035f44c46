//! Checkpoints (torchvision layouts at full size, errors), schedules against torch's
//! schedulers, parameter groups, evaluation.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

use super::layers::{Linear, linear};
use super::models::{Arch, ModelConfig, Stem, VitPreset};
use super::parity_tests::{config, fixture_dir};
use super::safetensors::{self, Data, Entry};
use super::*;

fn full(arch: Arch, image_size: usize) -> ModelConfig {
    ModelConfig { arch, in_channels: 3, image_size, num_classes: 1000 }
}

#[test]
fn full_size_models_have_torchvision_state_dict_layouts() {
    let text = std::fs::read_to_string(fixture_dir().join("torchvision_names.json")).unwrap();
    let want: BTreeMap<String, Vec<(String, Vec<usize>)>> = serde_json::from_str(&text).unwrap();
    let cases = [
        ("resnet18", full(Arch::ResNet { depth: 18, width_mult: 1.0, stem: Stem::ImageNet }, 224)),
        ("resnet50", full(Arch::ResNet { depth: 50, width_mult: 1.0, stem: Stem::ImageNet }, 224)),
        (
            "mobilenet_v2",
            full(Arch::MobileNetV2 { width_mult: 1.0, stem: Stem::ImageNet, dropout: 0.2 }, 224),
        ),
        (
            "vit_b_16",
            full(
                Arch::Vit { preset: VitPreset::B16, patch_size: 16, depth: None, heads: None, dim: None },
                224,
            ),
        ),
    ];
    let device = Device::flex();
    for (name, cfg) in cases {
        let model = cfg.init(&device).unwrap();
        let mut ours = torch_state_names(&model);
        let mut theirs = want[name].clone();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs, "{name}");
    }
}

#[test]
fn feature_dims_are_the_papers() {
    let device = Device::flex();
    let dims = [
        (Arch::ResNet { depth: 18, width_mult: 1.0, stem: Stem::Cifar }, 512),
        (Arch::ResNet { depth: 50, width_mult: 1.0, stem: Stem::Cifar }, 2048),
        (Arch::ResNet { depth: 8, width_mult: 1.0, stem: Stem::Cifar }, 64),
        (Arch::MobileNetV2 { width_mult: 1.0, stem: Stem::Cifar, dropout: 0.2 }, 1280),
    ];
    for (arch, d) in dims {
        let m = ModelConfig { arch: arch.clone(), in_channels: 3, image_size: 32, num_classes: 10 }
            .init(&device)
            .unwrap();
        assert_eq!(m.feature_dim(), d, "{arch:?}");
        let (f, z) = m.valid().forward(Tensor::zeros([2, 3, 32, 32], &device));
        assert_eq!(f.dims(), [2, d]);
        assert_eq!(z.dims(), [2, 10]);
    }
}

#[test]
fn bad_configs_are_rejected_with_the_value() {
    let device = Device::flex();
    let bad = [
        (Arch::ResNet { depth: 20, width_mult: 1.0, stem: Stem::Cifar }, "got 20"),
        (Arch::ResNet { depth: 18, width_mult: 0.0, stem: Stem::Cifar }, "width_mult"),
        (Arch::Cnn { channels: vec![] }, "cnn channels"),
        (
            Arch::Vit { preset: VitPreset::Tiny, patch_size: 5, depth: None, heads: None, dim: None },
            "patch_size",
        ),
        (
            Arch::Vit { preset: VitPreset::Tiny, patch_size: 4, depth: None, heads: Some(5), dim: None },
            "heads",
        ),
    ];
    for (arch, needle) in bad {
        let err =
            ModelConfig { arch, in_channels: 3, image_size: 32, num_classes: 10 }.init(&device).unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
}

fn input(size: usize, device: &Device) -> Tensor<4> {
    Tensor::random([2, 3, size, size], Distribution::Normal(0.0, 1.0), device)
}

#[test]
fn save_then_load_gives_the_same_outputs() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    for case in ["resnet8_cifar", "mobilenetv2_cifar", "vit", "cnn", "mlp"] {
        let cfg = config(case);
        let model = cfg.init(&device).unwrap();
        let path = dir.path().join(format!("{case}.safetensors"));
        save(&model, &path).unwrap();
        let loaded = load(&cfg, &path, &device).unwrap();
        let x = input(cfg.image_size, &device);
        let a = model.valid().forward(x.clone()).1.into_data();
        let b = loaded.valid().forward(x).1.into_data();
        assert_eq!(a, b, "{case}");
    }
}

#[test]
fn missing_and_misshaped_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture_dir().join("resnet8_cifar.weights.safetensors");
    let device = Device::flex();
    let mut cfg = config("resnet8_cifar");

    let mut tensors = safetensors::read(&src).unwrap();
    tensors.remove("layer2.0.downsample.1.running_var");
    let path = dir.path().join("missing.safetensors");
    safetensors::write(&path, &tensors, &BTreeMap::new()).unwrap();
    let err = load(&cfg, &path, &device).unwrap_err().to_string();
    assert!(err.contains("missing tensor \"layer2.0.downsample.1.running_var\""), "{err}");

    cfg.num_classes = 7;
    let err = load(&cfg, &src, &device).unwrap_err().to_string();
    assert!(err.contains("\"fc.weight\" has shape [5, 16], the model expects [7, 16]"), "{err}");

    // A new task's head: keep the backbone, leave the head at its initialisation.
    let fresh = cfg.init(&device).unwrap();
    let loaded = load_into(fresh, &src, &LoadOptions { skip_head: true }).unwrap();
    assert_eq!(loaded.num_classes(), 7);

    cfg.num_classes = 5;
    let mut tensors = safetensors::read(&src).unwrap();
    tensors.insert("layer9.0.conv1.weight".into(), Entry { shape: vec![1], data: Data::F32(vec![0.0]) });
    let path = dir.path().join("extra.safetensors");
    safetensors::write(&path, &tensors, &BTreeMap::new()).unwrap();
    let err = load(&cfg, &path, &device).unwrap_err().to_string();
    assert!(err.contains("\"layer9.0.conv1.weight\" is not part of this model"), "{err}");

    let err = load(&cfg, &dir.path().join("nope.safetensors"), &device).unwrap_err().to_string();
    assert!(err.contains("nope.safetensors"), "{err}");
}

#[test]
fn schedules_match_torch() {
    let text = std::fs::read_to_string(fixture_dir().join("schedules.json")).unwrap();
    let want: BTreeMap<String, Vec<f64>> = serde_json::from_str(&text).unwrap();
    let cases = [
        ("cosine_e10_w0", ScheduleConfig::Cosine, 10, 0),
        ("cosine_e10_w2", ScheduleConfig::Cosine, 10, 2),
        ("multistep_e10_w0", ScheduleConfig::MultiStep { milestones: vec![3, 6], gamma: 0.1 }, 10, 0),
        ("multistep_e10_w1", ScheduleConfig::MultiStep { milestones: vec![3, 6], gamma: 0.1 }, 10, 1),
        ("none_e5_w2", ScheduleConfig::None, 5, 2),
    ];
    for (name, schedule, epochs, warmup) in cases {
        for (e, &lr) in want[name].iter().enumerate() {
            let ours = lr_at_epoch(&schedule, 0.1, e, epochs, warmup);
            assert!((ours - lr).abs() <= 1e-9 * lr.abs().max(1e-3), "{name} epoch {e}: {ours} vs torch {lr}");
        }
    }
}

/// Per-step and the newer schedules (linear, exponential, one-cycle with its momentum) against
/// torch's schedulers, value by value over each run: the lr (and SGD momentum / AdamW beta1) each
/// optimizer step uses, as `Trainer::set_position` gives it before the step
/// (tests/fixtures/engine/schedules_steps.json, tools/fixtures_schedules.py).
#[test]
fn schedules_per_step_and_one_cycle_match_torch() {
    use super::schedule::{Anneal, StepEvery};
    let text = std::fs::read_to_string(fixture_dir().join("schedules_steps.json")).unwrap();
    let want: BTreeMap<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    let sgd = OptimizerConfig::Sgd { lr: 0.1, momentum: 0.9, nesterov: false, weight_decay: 0.0 };
    let adamw = OptimizerConfig::AdamW { lr: 0.1, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01 };
    let one = |max_lr, pct_start, anneal, div_factor, final_div_factor, momentum| ScheduleConfig::OneCycle {
        max_lr,
        pct_start,
        div_factor,
        final_div_factor,
        anneal,
        momentum,
    };
    let cases: Vec<(&str, ScheduleConfig, &OptimizerConfig)> = vec![
        ("cosine_step_e4_s5_w1", ScheduleConfig::Cosine, &sgd),
        ("cosine_step_e3_s4_w0", ScheduleConfig::Cosine, &sgd),
        ("none_step_e3_s4_w1", ScheduleConfig::None, &sgd),
        ("multistep_step_e6_s3_w0", ScheduleConfig::MultiStep { milestones: vec![2, 4], gamma: 0.1 }, &sgd),
        ("linear_epoch_e10_w0", ScheduleConfig::Linear { end_factor: 0.1 }, &sgd),
        ("linear_epoch_e10_w2", ScheduleConfig::Linear { end_factor: 0.0 }, &sgd),
        ("linear_step_e3_s5_w1", ScheduleConfig::Linear { end_factor: 0.0 }, &sgd),
        ("exponential_epoch_e8_w0", ScheduleConfig::Exponential { gamma: 0.8 }, &sgd),
        ("exponential_step_e3_s4_w1", ScheduleConfig::Exponential { gamma: 0.95 }, &sgd),
        ("onecycle_sgd_e4_s5", one(0.1, 0.3, Anneal::Cos, 25.0, 1e4, Some((0.85, 0.95))), &sgd),
        ("onecycle_sgd_linear_e4_s5", one(0.2, 0.25, Anneal::Linear, 10.0, 100.0, Some((0.8, 0.9))), &sgd),
        ("onecycle_adamw_e3_s7", one(0.05, 0.3, Anneal::Cos, 25.0, 1e4, Some((0.85, 0.95))), &adamw),
        ("onecycle_nomomentum_epoch_e10", one(0.1, 0.3, Anneal::Cos, 25.0, 1e4, None), &sgd),
    ];
    let schedule_cases = want.keys().filter(|k| !k.starts_with("params_")).count();
    assert_eq!(cases.len(), schedule_cases, "every fixture case is checked");
    for (name, schedule, optimizer) in cases {
        let w = &want[name];
        let n = |k: &str| w[k].as_u64().unwrap() as usize;
        let (epochs, spe, warmup) = (n("epochs"), n("steps_per_epoch"), n("warmup_epochs"));
        let mut tc = TrainerConfig::new(optimizer.clone());
        tc.schedule = schedule;
        tc.epochs = epochs;
        tc.warmup_epochs = warmup;
        tc.step_every = if w["step_every"] == "step" { StepEvery::Step } else { StepEvery::Epoch };
        let mut trainer = Trainer::new(tc).unwrap();
        let lrs: Vec<f64> = serde_json::from_value(w["lr"].clone()).unwrap();
        let moms: Vec<f64> = serde_json::from_value(w["momentum"].clone()).unwrap();
        assert_eq!(lrs.len(), epochs * spe);
        for (i, (&lr, &m)) in lrs.iter().zip(&moms).enumerate() {
            trainer.set_position(i / spe, i % spe, spe);
            let (ours, our_m) = (trainer.lr(), trainer.momentum());
            assert!(
                (ours - lr).abs() <= 1e-9 * lr.abs().max(1e-6),
                "{name} step {i}: lr {ours} vs torch {lr}"
            );
            assert!((our_m - m).abs() <= 1e-9, "{name} step {i}: momentum {our_m} vs torch {m}");
        }
    }
}

/// One-cycle's momentum reaches the update: a 2x3 linear layer trained 8 steps under
/// `OneCycleLR` (momentum 0.95 -> 0.85 -> 0.95) with SGD + Nesterov + weight decay and with
/// AdamW (beta1 cycled), against torch's weights after every step (`params_*` of
/// schedules_steps.json).
#[test]
fn one_cycle_momentum_cycles_in_the_update_as_torch_does() {
    use super::schedule::{Anneal, StepEvery};
    let text = std::fs::read_to_string(fixture_dir().join("schedules_steps.json")).unwrap();
    let want: BTreeMap<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    let ad = Device::flex().autodiff();
    let cases = [
        (
            "params_onecycle_sgd_nesterov",
            OptimizerConfig::Sgd { lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 1e-3 },
        ),
        (
            "params_onecycle_adamw",
            OptimizerConfig::AdamW { lr: 0.1, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01 },
        ),
    ];
    for (name, optimizer) in cases {
        let w = &want[name];
        let floats = |v: &serde_json::Value| serde_json::from_value::<Vec<f32>>(v.clone()).unwrap();
        let after: Vec<Vec<f32>> = serde_json::from_value(w["after"].clone()).unwrap();
        let steps = after.len();
        let mut lin = linear(3, 2, false, &ad);
        lin.weight = burn::module::Param::from_tensor(Tensor::<2>::from_data(
            TensorData::new(floats(&w["w0"]), [2, 3]),
            &ad,
        ));
        let x = Tensor::<2>::from_data(TensorData::new(floats(&w["x"]), [4, 3]), &ad);
        let mut tc = TrainerConfig::new(optimizer);
        tc.schedule = ScheduleConfig::OneCycle {
            max_lr: 0.1,
            pct_start: 0.3,
            div_factor: 25.0,
            final_div_factor: 1e4,
            anneal: Anneal::Cos,
            momentum: Some((0.85, 0.95)),
        };
        tc.step_every = StepEvery::Step;
        let mut trainer = Trainer::new(tc).unwrap();
        for (i, torch) in after.iter().enumerate() {
            trainer.set_position(0, i, steps);
            let y = lin.forward(x.clone());
            let loss = y.clone().mul(y).mean().div_scalar(2.0).reshape([1]);
            lin = trainer.step(lin, loss).0;
            let ours = values(lin.weight.val());
            for (a, b) in ours.iter().zip(torch) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1e-2),
                    "{name} step {i}: {ours:?} vs torch {torch:?}"
                );
            }
        }
    }
}

#[derive(Module, Debug)]
struct Distilled {
    student: Model,
    projector: Linear,
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn frozen_backbone_and_extra_modules_train_as_configured() {
    let ad = Device::flex().autodiff();
    let cfg = config("resnet8_cifar");
    let student = cfg.init(&ad).unwrap();
    let projector = linear(student.feature_dim(), 4, true, &ad);
    let m = Distilled { student, projector };
    let before_conv = values(match &m.student {
        Model::ResNet(r) => r.conv1.weight.val(),
        _ => unreachable!(),
    });
    let before_fc = values(match &m.student {
        Model::ResNet(r) => r.fc.weight.val(),
        _ => unreachable!(),
    });
    let before_proj = values(m.projector.weight.val());
    let mut tc = TrainerConfig::new(OptimizerConfig::Sgd {
        lr: 0.1,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    });
    tc.rules = vec![ParamRule::frozen("student"), ParamRule::lr_mult("student.fc", 1.0)];
    let mut trainer = Trainer::new(tc).unwrap();
    let x = input(cfg.image_size, &ad);
    let (f, z) = m.student.forward(x);
    let loss = z.powi_scalar(2).mean() + m.projector.forward(f).powi_scalar(2).mean();
    let (m, info) = trainer.step(m, loss);
    assert_eq!(info.updated, 4, "fc weight+bias, projector weight+bias");
    let Model::ResNet(r) = &m.student else { unreachable!() };
    assert_eq!(values(r.conv1.weight.val()), before_conv, "frozen backbone moved");
    assert_ne!(values(r.fc.weight.val()), before_fc, "head did not train");
    assert_ne!(values(m.projector.weight.val()), before_proj, "projector did not train");
}

#[test]
fn clipping_reports_the_norm_and_invalid_settings_are_named() {
    let mut tc = TrainerConfig::new(OptimizerConfig::AdamW {
        lr: 1e-3,
        betas: (0.9, 1.0),
        eps: 1e-8,
        weight_decay: 0.0,
    });
    let err = Trainer::new(tc.clone()).err().unwrap().to_string();
    assert!(err.contains("betas"), "{err}");
    tc.optimizer = OptimizerConfig::Sgd { lr: 0.1, momentum: 0.0, nesterov: true, weight_decay: 0.0 };
    assert!(Trainer::new(tc.clone()).err().unwrap().to_string().contains("nesterov"));
    tc.optimizer = OptimizerConfig::Sgd { lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 0.0 };
    tc.warmup_epochs = 3;
    tc.epochs = 3;
    assert!(Trainer::new(tc.clone()).err().unwrap().to_string().contains("warmup_epochs"));
    tc.warmup_epochs = 0;
    tc.grad_clip = Some(1e-3);
    let mut trainer = Trainer::new(tc).unwrap();
    let ad = Device::flex().autodiff();
    let m = linear(3, 2, true, &ad);
    let w0 = values(m.weight.val());
    let x = Tensor::<2>::ones([4, 3], &ad);
    let loss = m.forward(x).sum();
    let (m, info) = trainer.step(m, loss);
    // d(sum)/dW = 4 everywhere (6 entries), d/db = 4 (2 entries): norm = 4 sqrt(8).
    let norm = info.grad_norm.unwrap();
    assert!((norm - 4.0 * 8f64.sqrt()).abs() < 1e-4, "{norm}");
    let moved: f32 = values(m.weight.val()).iter().zip(&w0).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    // Nesterov first step: g + 0.9 g, with g clipped to norm 1e-3.
    let want = (0.1 * 1.9 * 1e-3 * 4.0 / (4.0 * 8f64.sqrt())) as f32;
    assert!((moved - want).abs() < 1e-6, "{moved} vs {want}");
}

#[test]
fn evaluation_counts_top1_and_top5_from_the_logits() {
    let dir = fixture_dir();
    let io = safetensors::read(&dir.join("resnet8_cifar.io.safetensors")).unwrap();
    let device = Device::flex();
    let model =
        load(&config("resnet8_cifar"), &dir.join("resnet8_cifar.weights.safetensors"), &device).unwrap();
    let (
        Some(Entry { shape, data: Data::F32(x) }),
        Some(Entry { data: Data::I64(y), .. }),
        Some(Entry { data: Data::F32(z), .. }),
    ) = (io.get("x"), io.get("labels"), io.get("logits"))
    else {
        panic!("fixture")
    };
    let n = y.len();
    let argmax: Vec<usize> = z
        .chunks(5)
        .map(|r| r.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0)
        .collect();
    let want_top1 = argmax.iter().zip(y).filter(|(a, b)| **a as i64 == **b).count() as f64 / n as f64;
    let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), shape.clone()), &device);
    let yt = Tensor::<1, Int>::from_data(TensorData::new(y.clone(), [n]), &device);
    let m = evaluate_batches(&model, vec![(xt, yt)]);
    assert_eq!(m.n, n);
    assert_eq!(m.top1, want_top1);
    assert_eq!(m.top5, 1.0, "5 classes: top-5 is always right");
    assert!(m.mean_loss > 0.0 && m.mean_loss.is_finite());
}

#[test]
fn forward_flops_count_multiply_adds_of_each_layer() {
    use crate::engine::{Arch, ModelConfig, Stem};
    let device = burn::tensor::Device::flex();
    // MLP on 1x8x8: 2 x (64*32 + 32*10).
    let mlp =
        ModelConfig { arch: Arch::Mlp { hidden: vec![32] }, in_channels: 1, image_size: 8, num_classes: 10 }
            .init(&device)
            .unwrap();
    assert_eq!(mlp.forward_flops([1, 8, 8], &device), 2 * (64 * 32 + 32 * 10));
    // CNN [4, 8] on 1x8x8: conv 3x3 1->4 at 8x8, pool, conv 4->8 at 4x4, head 8->10.
    let cnn = ModelConfig {
        arch: Arch::Cnn { channels: vec![4, 8] },
        in_channels: 1,
        image_size: 8,
        num_classes: 10,
    }
    .init(&device)
    .unwrap();
    assert_eq!(cnn.forward_flops([1, 8, 8], &device), 2 * (4 * 64 * 9 + 8 * 16 * 4 * 9 + 8 * 10));
    // ResNet-18 at 224 px: about 1.82 GMACs (the published figure), i.e. 3.6 GFLOPs.
    let r18 = ModelConfig {
        arch: Arch::ResNet { depth: 18, width_mult: 1.0, stem: Stem::ImageNet },
        in_channels: 3,
        image_size: 224,
        num_classes: 1000,
    }
    .init(&device)
    .unwrap();
    let g = r18.forward_flops([3, 224, 224], &device) as f64 / 2e9;
    assert!((g - 1.82).abs() < 0.03, "resnet18: {g} GMACs");
}

/// Deterministic values in [-1, 1) (the same on every call, unlike burn's generator).
fn lcg_values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn bits<const D: usize>(t: Tensor<D>) -> Vec<u32> {
    t.into_data().try_to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
}

/// Our conv and batch-norm kernels, forward and backward, on fixed inputs: every output and
/// gradient's bits.
fn own_kernel_outputs() -> Vec<(String, Vec<u32>)> {
    use super::norm::{Act, batch_norm_train};
    let ad = Device::flex().autodiff();
    let t4 = |shape: [usize; 4], seed: u64| {
        Tensor::<4>::from_data(TensorData::new(lcg_values(shape.iter().product(), seed), shape), &ad)
    };
    let t1 =
        |len: usize, seed: u64| Tensor::<1>::from_data(TensorData::new(lcg_values(len, seed), [len]), &ad);
    let mut out = Vec::new();
    // (input, weight, stride, padding, groups, bias): "same" 3x3 whose weight gradient is a small
    // matrix (8 x 27), strided 3x3, a reduction over 576 > 512 (chunked), 1x1, depthwise.
    let convs: [([usize; 4], [usize; 4], usize, usize, usize, bool); 7] = [
        ([4, 3, 12, 12], [8, 3, 3, 3], 1, 1, 1, true),
        ([2, 16, 9, 9], [32, 16, 3, 3], 2, 1, 1, false),
        ([3, 64, 6, 6], [40, 64, 3, 3], 1, 1, 1, true),
        ([2, 24, 5, 5], [12, 24, 1, 1], 1, 0, 1, false),
        ([40, 8, 2, 2], [16, 8, 3, 3], 1, 1, 1, false),
        ([2, 6, 9, 9], [6, 1, 3, 3], 2, 1, 6, false),
        ([2, 3, 7, 7], [6, 1, 3, 3], 1, 1, 3, true),
    ];
    for (i, (xs, ws, s, p, g, b)) in convs.into_iter().enumerate() {
        let seed = 10 * i as u64;
        let x = t4(xs, seed).require_grad();
        let w = t4(ws, seed + 1).require_grad();
        let bias = b.then(|| t1(ws[0], seed + 2).require_grad());
        let y = super::conv::conv2d(x.clone(), w.clone(), bias.clone(), [s, s], [p, p], g);
        let r = t4(y.dims(), seed + 3);
        let grads = (y.clone() * r).sum().backward();
        out.push((format!("conv {i} y"), bits(y.without_autodiff())));
        out.push((format!("conv {i} dx"), bits(x.grad(&grads).unwrap())));
        out.push((format!("conv {i} dw"), bits(w.grad(&grads).unwrap())));
        if let Some(b) = bias {
            out.push((format!("conv {i} db"), bits(b.grad(&grads).unwrap().reshape([1, 1, 1, ws[0]]))));
        }
    }
    for (i, (act, res)) in
        [(Act::Relu, false), (Act::Relu6, true), (Act::Identity, true)].into_iter().enumerate()
    {
        let seed = 100 + 10 * i as u64;
        let shape = [5, 6, 7, 9];
        // Scaled so that ReLU6 clips some values.
        let x = (t4(shape, seed) * 8.0).detach().require_grad();
        let gamma = t1(6, seed + 1).require_grad();
        let beta = t1(6, seed + 2).require_grad();
        let r = res.then(|| t4(shape, seed + 3).require_grad());
        let (y, mean, var) = batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5, act, r.clone());
        let up = t4(shape, seed + 4);
        let grads = (y.clone() * up).sum().backward();
        out.push((format!("bn {i} y"), bits(y.without_autodiff())));
        out.push((format!("bn {i} mean"), bits(mean.without_autodiff())));
        out.push((format!("bn {i} var"), bits(var.without_autodiff())));
        out.push((format!("bn {i} dx"), bits(x.grad(&grads).unwrap())));
        out.push((format!("bn {i} dgamma"), bits(gamma.grad(&grads).unwrap())));
        out.push((format!("bn {i} dbeta"), bits(beta.grad(&grads).unwrap())));
        if let Some(r) = r {
            out.push((format!("bn {i} dres"), bits(r.grad(&grads).unwrap())));
        }
        // Inference (running statistics folded into a scale and shift), on plain tensors.
        let d = Device::flex();
        let plain4 = |seed: u64| {
            Tensor::<4>::from_data(TensorData::new(lcg_values(shape.iter().product(), seed), shape), &d) * 8.0
        };
        let plain1 = |seed: u64| Tensor::<1>::from_data(TensorData::new(lcg_values(6, seed), [6]), &d);
        let y = super::norm::affine(
            plain4(seed + 5),
            plain1(seed + 6),
            plain1(seed + 7),
            act,
            res.then(|| plain4(seed + 8)),
        );
        out.push((format!("affine {i} y"), bits(y)));
    }
    out
}

/// Our kernels give the same bits at every vector level this CPU runs (forced through
/// `cpu::set_isa`, as `DISTILLERY_ISA` does). The `gemm` crate's level is not forced (it cannot
/// be): `conv::tests::matmul_has_a_fixed_summation_order` pins its part.
#[test]
fn own_kernels_are_bit_identical_at_every_isa_level() {
    use super::cpu::{Isa, isa, set_isa};
    let before = isa();
    let levels: Vec<Isa> = Isa::ALL.into_iter().filter(|l| *l <= Isa::detected()).collect();
    let mut runs = Vec::new();
    for &level in &levels {
        assert_eq!(set_isa(level), level);
        runs.push((level, own_kernel_outputs()));
        assert_eq!(isa(), level);
    }
    set_isa(before);
    let (first, want) = &runs[0];
    for (level, got) in &runs[1..] {
        assert_eq!(got.len(), want.len());
        for ((name, a), (_, b)) in got.iter().zip(want) {
            let diff = a.iter().zip(b).filter(|(x, y)| x != y).count();
            assert_eq!(
                diff,
                0,
                "{name}: {diff} of {} values differ between {level:?} and {first:?}",
                a.len()
            );
        }
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        assert!(levels.len() >= 2, "{levels:?}");
    }
}

#[test]
fn isa_levels_parse_and_cap_at_the_cpu() {
    use super::cpu::{Isa, isa, set_isa};
    for l in Isa::ALL {
        assert_eq!(Isa::parse(l.name()), Some(l));
    }
    assert_eq!(Isa::parse(" AVX2\n"), Some(Isa::Avx2));
    assert_eq!(Isa::parse("avx-512"), None);
    let before = isa();
    assert_eq!(set_isa(Isa::Avx512), Isa::detected());
    set_isa(before);
}
