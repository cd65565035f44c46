//! Model zoo: widths, depths and class counts chosen at run time from a [`ModelConfig`].
//!
//! Every model exposes the penultimate embedding (`forward_features`, what the distillation
//! losses use) and the head (`logits_from_features`). Train/eval mode is burn's: batch norm
//! and dropout train when the model's flags are on ([`Module::train`], the default) and the
//! input lives on an autodiff device; [`Module::valid`] switches them to inference.

pub mod mobilenetv2;
pub mod resnet;
pub mod small;
pub mod vit;

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::engine::error::EngineError;
pub use mobilenetv2::MobileNetV2;
pub use resnet::ResNet;
pub use small::{Cnn, Mlp};
pub use vit::Vit;

/// Input stem of the convolutional networks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    /// For 32x32 inputs: no early down-sampling.
    Cifar,
    /// torchvision's stem for 224x224 inputs.
    ImageNet,
}

/// ViT sizes from the paper (and timm's tiny/small): (dim, depth, heads, mlp dim).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VitPreset {
    /// 192, 12, 3, 768
    Tiny,
    /// 384, 12, 6, 1536
    Small,
    /// 768, 12, 12, 3072 (torchvision `vit_b_16` with patch 16)
    B16,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Arch {
    Mlp {
        hidden: Vec<usize>,
    },
    Cnn {
        channels: Vec<usize>,
    },
    /// Depth 8, 10, 18, 34 or 50; see [`resnet`] for the base widths `width_mult` scales.
    ResNet {
        depth: usize,
        width_mult: f32,
        stem: Stem,
    },
    /// `dropout` before the head (torchvision's default is 0.2).
    MobileNetV2 {
        width_mult: f32,
        stem: Stem,
        dropout: f64,
    },
    /// `depth`, `heads`, `dim` override the preset; the MLP dim is 4x `dim`.
    Vit {
        preset: VitPreset,
        patch_size: usize,
        depth: Option<usize>,
        heads: Option<usize>,
        dim: Option<usize>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub in_channels: usize,
    pub image_size: usize,
    pub num_classes: usize,
}

/// A model of any architecture. Enum variant names are not part of parameter paths used by
/// this crate (checkpoints, parameter groups).
#[derive(Module, Debug)]
pub enum Model {
    Mlp(Mlp),
    Cnn(Cnn),
    ResNet(ResNet),
    MobileNetV2(MobileNetV2),
    Vit(Vit),
}

fn invalid(msg: String) -> EngineError {
    EngineError::InvalidConfig(msg)
}

impl ModelConfig {
    /// Build a freshly initialised model on `device` (use an autodiff device to train it).
    pub fn init(&self, device: &Device) -> Result<Model, EngineError> {
        if self.num_classes == 0 {
            return Err(invalid("num_classes: expected > 0, got 0".into()));
        }
        if self.in_channels == 0 || self.image_size == 0 {
            return Err(invalid(format!(
                "input: expected channels and image size > 0, got {}x{}x{}",
                self.in_channels, self.image_size, self.image_size
            )));
        }
        Ok(match &self.arch {
            Arch::Mlp { hidden } => {
                if hidden.contains(&0) {
                    return Err(invalid(format!("mlp hidden: widths must be > 0, got {hidden:?}")));
                }
                let in_dim = self.in_channels * self.image_size * self.image_size;
                Model::Mlp(Mlp::new(in_dim, hidden, self.num_classes, device))
            }
            Arch::Cnn { channels } => {
                if channels.is_empty() || channels.contains(&0) {
                    return Err(invalid(format!(
                        "cnn channels: expected a non-empty list of widths > 0, got {channels:?}"
                    )));
                }
                Model::Cnn(Cnn::new(self.in_channels, channels, self.num_classes, device))
            }
            Arch::ResNet { depth, width_mult, stem } => Model::ResNet(ResNet::new(
                *depth,
                *width_mult,
                *stem,
                self.in_channels,
                self.num_classes,
                device,
            )?),
            Arch::MobileNetV2 { width_mult, stem, dropout } => Model::MobileNetV2(MobileNetV2::new(
                *width_mult,
                *stem,
                *dropout,
                self.in_channels,
                self.num_classes,
                device,
            )?),
            Arch::Vit { preset, patch_size, depth, heads, dim } => {
                let (d0, l0, h0) = match preset {
                    VitPreset::Tiny => (192, 12, 3),
                    VitPreset::Small => (384, 12, 6),
                    VitPreset::B16 => (768, 12, 12),
                };
                let dims = vit::VitDims {
                    dim: dim.unwrap_or(d0),
                    depth: depth.unwrap_or(l0),
                    heads: heads.unwrap_or(h0),
                    mlp_dim: 4 * dim.unwrap_or(d0),
                };
                if *patch_size == 0 || self.image_size % patch_size != 0 {
                    return Err(invalid(format!(
                        "vit patch_size: expected a divisor of image size {}, got {patch_size}",
                        self.image_size
                    )));
                }
                if dims.heads == 0 || dims.dim % dims.heads != 0 {
                    return Err(invalid(format!(
                        "vit heads: expected a divisor of dim {}, got {}",
                        dims.dim, dims.heads
                    )));
                }
                Model::Vit(Vit::new(
                    &dims,
                    *patch_size,
                    self.image_size,
                    self.in_channels,
                    self.num_classes,
                    device,
                ))
            }
        })
    }
}

impl Model {
    /// The pooled penultimate embedding `[n, feature_dim]`.
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Model::Mlp(m) => m.forward_features(x),
            Model::Cnn(m) => m.forward_features(x),
            Model::ResNet(m) => m.forward_features(x),
            Model::MobileNetV2(m) => m.forward_features(x),
            Model::Vit(m) => m.forward_features(x),
        }
    }

    /// The classification head applied to features: `[n, feature_dim] -> [n, num_classes]`.
    pub fn logits_from_features(&self, f: Tensor<2>) -> Tensor<2> {
        match self {
            Model::Mlp(m) => m.head.forward(f),
            Model::Cnn(m) => m.head.forward(f),
            Model::ResNet(m) => m.fc.forward(f),
            Model::MobileNetV2(m) => m.logits_from_features(f),
            Model::Vit(m) => m.heads.head.forward(f),
        }
    }

    /// `(features, logits)`.
    pub fn forward(&self, x: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let f = self.forward_features(x);
        let z = self.logits_from_features(f.clone());
        (f, z)
    }

    /// Floating-point operations of one forward pass of one `[c, h, w]` image (convolutions,
    /// linear layers, attention products; 2 per multiply-add), counted on a real pass. Training
    /// costs about 3x this per image (forward + backward).
    pub fn forward_flops(&self, image_shape: [usize; 3], device: &Device) -> u64 {
        use burn::module::Module;
        let x = Tensor::<4>::zeros([1, image_shape[0], image_shape[1], image_shape[2]], device);
        let m = self.valid();
        crate::engine::layers::count_flops(|| m.forward(x)).1
    }

    pub fn feature_dim(&self) -> usize {
        match self {
            Model::Mlp(m) => m.head.weight.shape().dims::<2>()[1],
            Model::Cnn(m) => m.head.weight.shape().dims::<2>()[1],
            Model::ResNet(m) => m.feature_dim(),
            Model::MobileNetV2(m) => m.feature_dim(),
            Model::Vit(m) => m.feature_dim(),
        }
    }

    pub fn num_classes(&self) -> usize {
        match self {
            Model::Mlp(m) => m.head.d_out(),
            Model::Cnn(m) => m.head.d_out(),
            Model::ResNet(m) => m.fc.d_out(),
            Model::MobileNetV2(m) => m.classifier.linear.d_out(),
            Model::Vit(m) => m.heads.head.d_out(),
        }
    }

    /// Path (in this crate's parameter naming, see [`crate::engine::optim::ParamRule`]) of
    /// the head's parameters; everything else is the backbone.
    pub fn head_path(&self) -> &'static str {
        match self {
            Model::Mlp(_) | Model::Cnn(_) => "head",
            Model::ResNet(_) => "fc",
            Model::MobileNetV2(_) => "classifier",
            Model::Vit(_) => "heads",
        }
    }

    pub(crate) fn kind(&self) -> ArchKind {
        match self {
            Model::Mlp(_) => ArchKind::Mlp,
            Model::Cnn(_) => ArchKind::Cnn,
            Model::ResNet(_) => ArchKind::ResNet,
            Model::MobileNetV2(_) => ArchKind::MobileNetV2,
            Model::Vit(_) => ArchKind::Vit,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArchKind {
    Mlp,
    Cnn,
    ResNet,
    MobileNetV2,
    Vit,
}
