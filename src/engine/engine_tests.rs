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
