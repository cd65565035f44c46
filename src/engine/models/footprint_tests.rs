//! [`ModelConfig::footprint`] against the built models, torchvision's parameter counts and
//! torchsummary's activation sizes.

use burn::module::Module;
use burn::tensor::Device;

use super::{Arch, Footprint, ModelConfig, Stem, VitPreset};

fn cfg(arch: Arch, in_channels: usize, image_size: usize, num_classes: usize) -> ModelConfig {
    ModelConfig { arch, in_channels, image_size, num_classes }
}

/// The footprint, after checking it against the model it describes.
#[track_caller]
fn check(c: &ModelConfig) -> Footprint {
    let f = c.footprint().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let m = c.init(&Device::flex()).unwrap();
    assert_eq!(f.params, m.num_params() as u64, "params of {c:?}");
    assert_eq!(f.feature_dim, m.feature_dim(), "feature_dim of {c:?}");
    f
}

#[test]
fn footprint_params_and_feature_dim_match_every_built_architecture() {
    let mut configs = Vec::new();
    for hidden in [vec![], vec![16], vec![32, 8, 5]] {
        configs.push(cfg(Arch::Mlp { hidden: hidden.clone() }, 1, 8, 10));
        configs.push(cfg(Arch::Mlp { hidden }, 3, 5, 7));
    }
    for channels in [vec![8], vec![8, 16, 32], vec![4, 4, 4, 4, 4]] {
        configs.push(cfg(Arch::Cnn { channels: channels.clone() }, 1, 8, 10));
        configs.push(cfg(Arch::Cnn { channels }, 3, 13, 4));
    }
    for depth in [8, 10, 18, 34, 50] {
        for width_mult in [0.25, 1.0, 1.3] {
            for stem in [Stem::Cifar, Stem::ImageNet] {
                configs.push(cfg(Arch::ResNet { depth, width_mult, stem }, 3, 9, 10));
            }
        }
    }
    for width_mult in [0.35, 0.5, 0.75, 1.0, 1.4] {
        for stem in [Stem::Cifar, Stem::ImageNet] {
            configs.push(cfg(Arch::MobileNetV2 { width_mult, stem, dropout: 0.2 }, 3, 11, 100));
        }
    }
    for preset in [VitPreset::Tiny, VitPreset::Small] {
        configs.push(cfg(
            Arch::Vit { preset, patch_size: 4, depth: None, heads: None, dim: None },
            3,
            32,
            10,
        ));
    }
    for (patch_size, depth, heads, dim, size) in [
        (4, Some(2), Some(4), Some(64), 8),
        (2, Some(1), None, Some(96), 6),
        (8, None, Some(2), Some(32), 16),
    ] {
        let arch = Arch::Vit { preset: VitPreset::Tiny, patch_size, depth, heads, dim };
        configs.push(cfg(arch, 1, size, 3));
    }
    for c in &configs {
        check(c);
    }
}

/// torchvision's published parameter counts (ImageNet, 1000 classes): the footprint's params
/// less batch norm's running statistics.
#[test]
fn footprint_trainable_params_are_torchvisions() {
    let imagenet = |arch| cfg(arch, 3, 224, 1000);
    let resnet = |depth| imagenet(Arch::ResNet { depth, width_mult: 1.0, stem: Stem::ImageNet });
    let cases = [
        (resnet(18), 11_689_512, 512),
        (resnet(34), 21_797_672, 512),
        (resnet(50), 25_557_032, 2048),
        (
            imagenet(Arch::MobileNetV2 { width_mult: 1.0, stem: Stem::ImageNet, dropout: 0.2 }),
            3_504_872,
            1280,
        ),
        (
            imagenet(Arch::Vit {
                preset: VitPreset::B16,
                patch_size: 16,
                depth: None,
                heads: None,
                dim: None,
            }),
            86_567_656,
            768,
        ),
    ];
    for (c, trainable, feature_dim) in cases {
        let f = check(&c);
        assert_eq!((f.params - f.buffers, f.feature_dim), (trainable, feature_dim), "{c:?}");
    }
}

/// torchsummary's "Forward/backward pass size" of torchvision's resnet18 and resnet50 at
/// 224x224 (62.79 MB and 286.56 MB: 2 x 4 bytes x every module's output, input excluded)
/// counts what our rule counts for ResNets.
#[test]
fn footprint_activations_match_torchsummary_for_resnets() {
    for (depth, mb) in [(18, 62.79), (50, 286.56)] {
        let c = cfg(Arch::ResNet { depth, width_mult: 1.0, stem: Stem::ImageNet }, 3, 224, 1000);
        let f = c.footprint().unwrap();
        let outputs = f.activations - 3 * 224 * 224;
        let got = (2.0 * outputs as f64 * 4.0 / (1024.0 * 1024.0) * 100.0).round() / 100.0;
        assert_eq!(got, mb, "resnet{depth}");
    }
}

/// Counted by hand from the rule on [`Footprint::activations`].
#[test]
fn footprint_activations_of_small_models_follow_the_rule() {
    // input 4; linear 3 + ReLU 3; head 2
    let mlp = cfg(Arch::Mlp { hidden: vec![3] }, 1, 2, 2).footprint().unwrap();
    assert_eq!((mlp.params, mlp.activations), (4 * 3 + 3 + 3 * 2 + 2, 4 + 3 + 3 + 2));
    // input 16; conv 2x4x4 = 32, batch norm + ReLU 64; pool 2x2x2 = 8; average pool 2; head 3
    let cnn = cfg(Arch::Cnn { channels: vec![2] }, 1, 4, 3).footprint().unwrap();
    assert_eq!(
        (cnn.params, cnn.buffers, cnn.activations),
        (2 * 9 + 8 + 2 * 3 + 3, 4, 16 + 32 + 64 + 8 + 2 + 3)
    );
}

#[test]
fn footprint_of_absurd_sizes_saturates_without_allocating() {
    let huge = [
        Arch::ResNet { depth: 50, width_mult: 1e6, stem: Stem::ImageNet },
        Arch::ResNet { depth: 18, width_mult: f32::MAX, stem: Stem::Cifar },
        Arch::MobileNetV2 { width_mult: 1e30, stem: Stem::ImageNet, dropout: 0.0 },
        Arch::Mlp { hidden: vec![usize::MAX, usize::MAX] },
        Arch::Cnn { channels: vec![1 << 40; 3] },
        Arch::Vit {
            preset: VitPreset::B16,
            patch_size: 1,
            depth: Some(usize::MAX),
            heads: Some(1),
            dim: Some(1 << 40),
        },
    ];
    for arch in huge {
        let f = cfg(arch.clone(), 3, 1 << 20, 1000).footprint().unwrap();
        assert!(f.params > 1 << 40 && f.activations > 1 << 40, "{arch:?}: {f:?}");
    }
    let width_1e6 = cfg(Arch::ResNet { depth: 18, width_mult: 1e6 / 64.0, stem: Stem::Cifar }, 3, 32, 10);
    // 3x3 convs of 1e6 x 1e6 channels: about 9e12 weights each
    assert!(width_1e6.footprint().unwrap().params > 9_000_000_000_000);
}

#[test]
fn footprint_refuses_what_init_refuses() {
    let bad = [
        cfg(Arch::ResNet { depth: 12, width_mult: 1.0, stem: Stem::Cifar }, 3, 32, 10),
        cfg(Arch::ResNet { depth: 18, width_mult: 0.0, stem: Stem::Cifar }, 3, 32, 10),
        cfg(
            Arch::Vit { preset: VitPreset::Tiny, patch_size: 5, depth: None, heads: None, dim: None },
            3,
            32,
            10,
        ),
        cfg(
            Arch::Vit { preset: VitPreset::Tiny, patch_size: 4, depth: None, heads: Some(5), dim: None },
            3,
            32,
            10,
        ),
        cfg(Arch::Cnn { channels: vec![] }, 3, 32, 10),
        cfg(Arch::Mlp { hidden: vec![0] }, 3, 32, 10),
        cfg(Arch::Mlp { hidden: vec![4] }, 3, 32, 0),
    ];
    for c in bad {
        let (f, m) = (c.footprint(), c.init(&Device::flex()));
        assert_eq!(f.unwrap_err().to_string(), m.unwrap_err().to_string(), "{c:?}");
    }
}
