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
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    /// For 32x32 inputs: no early down-sampling.
    Cifar,
    /// torchvision's stem for 224x224 inputs.
    ImageNet,
}

/// ViT sizes from the paper (and timm's tiny/small): (dim, depth, heads, mlp dim).
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VitPreset {
    /// 192, 12, 3, 768
    Tiny,
    /// 384, 12, 6, 1536
    Small,
    /// 768, 12, 12, 3072 (torchvision `vit_b_16` with patch 16)
    B16,
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
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

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
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
        self.check_input()?;
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
                let dims = self.vit_dims(*preset, *patch_size, *depth, *heads, *dim)?;
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

    /// What the model of this config costs, computed from the config alone: nothing is
    /// allocated, so it answers for `width: 1000000` as fast as for `width: 16`, and every count
    /// saturates instead of overflowing. Fails exactly where [`ModelConfig::init`] would.
    pub fn footprint(&self) -> Result<Footprint, EngineError> {
        self.check_input()?;
        let (c, size, k) = (self.in_channels, self.image_size, self.num_classes);
        match &self.arch {
            Arch::Mlp { hidden } => {
                if hidden.contains(&0) {
                    return Err(invalid(format!("mlp hidden: widths must be > 0, got {hidden:?}")));
                }
                Ok(small::mlp_footprint(c, size, hidden, k))
            }
            Arch::Cnn { channels } => {
                if channels.is_empty() || channels.contains(&0) {
                    return Err(invalid(format!(
                        "cnn channels: expected a non-empty list of widths > 0, got {channels:?}"
                    )));
                }
                Ok(small::cnn_footprint(c, size, channels, k))
            }
            Arch::ResNet { depth, width_mult, stem } => {
                resnet::footprint(*depth, *width_mult, *stem, c, size, k)
            }
            Arch::MobileNetV2 { width_mult, stem, dropout } => {
                mobilenetv2::footprint(*width_mult, *stem, *dropout, c, size, k)
            }
            Arch::Vit { preset, patch_size, depth, heads, dim } => {
                let dims = self.vit_dims(*preset, *patch_size, *depth, *heads, *dim)?;
                Ok(vit::footprint(&dims, *patch_size, size, c, k))
            }
        }
    }

    fn check_input(&self) -> Result<(), EngineError> {
        if self.num_classes == 0 {
            return Err(invalid("num_classes: expected > 0, got 0".into()));
        }
        if self.in_channels == 0 || self.image_size == 0 {
            return Err(invalid(format!(
                "input: expected channels and image size > 0, got {}x{}x{}",
                self.in_channels, self.image_size, self.image_size
            )));
        }
        Ok(())
    }

    /// The preset's sizes with the overrides applied, checked against the image size.
    fn vit_dims(
        &self,
        preset: VitPreset,
        patch_size: usize,
        depth: Option<usize>,
        heads: Option<usize>,
        dim: Option<usize>,
    ) -> Result<vit::VitDims, EngineError> {
        let (d0, l0, h0) = match preset {
            VitPreset::Tiny => (192, 12, 3),
            VitPreset::Small => (384, 12, 6),
            VitPreset::B16 => (768, 12, 12),
        };
        let dims = vit::VitDims {
            dim: dim.unwrap_or(d0),
            depth: depth.unwrap_or(l0),
            heads: heads.unwrap_or(h0),
            mlp_dim: dim.unwrap_or(d0).saturating_mul(4),
        };
        if patch_size == 0 || self.image_size % patch_size != 0 {
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
        Ok(dims)
    }
}

/// What a model costs, from [`ModelConfig::footprint`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Exactly the built model's [`Module::num_params`]: every weight and bias, and batch
    /// norm's running mean and variance (burn counts those buffers too).
    pub params: u64,
    /// Of `params`, the batch-norm running statistics (buffers: no gradient, no optimizer state).
    pub buffers: u64,
    /// Width of the penultimate embedding, [`Model::feature_dim`].
    pub feature_dim: usize,
    /// Estimated floats one image keeps for the backward pass of a training step: the input
    /// and the output of every convolution, linear layer, normalisation, activation, pooling,
    /// residual sum and attention product (scores and their softmax). A fused kernel counts
    /// each output it stands for (batch norm + ReLU: 2; + residual sum: 3). Element-wise
    /// temporaries inside a layer (layer norm's centred input, GELU's erf) are not counted.
    pub activations: u64,
}

/// Saturating running totals for footprints: absurd sizes give huge counts, never a wrap.
#[derive(Default)]
pub(crate) struct Tally {
    params: u64,
    buffers: u64,
    activations: u64,
}

/// The product of `dims`, saturating.
pub(crate) fn prod(dims: &[usize]) -> u64 {
    dims.iter().fold(1u64, |p, &d| p.saturating_mul(d as u64))
}

/// Output side of a square convolution or pool with padding `kernel / 2` (every one of ours),
/// as PyTorch computes it.
pub(crate) fn conv_out(size: usize, kernel: usize, stride: usize) -> usize {
    size.saturating_add(2 * (kernel / 2)).saturating_sub(kernel) / stride.max(1) + 1
}

impl Tally {
    /// Parameters of shape `dims`.
    pub(crate) fn params(&mut self, dims: &[usize]) {
        self.params = self.params.saturating_add(prod(dims));
    }

    /// `n` outputs of shape `dims` per image.
    pub(crate) fn outputs(&mut self, n: usize, dims: &[usize]) {
        self.activations = self.activations.saturating_add(prod(dims).saturating_mul(n as u64));
    }

    /// A bias-free square conv (`conv2d` of [`crate::engine::layers`]) giving `c_out` maps of
    /// `out x out`.
    pub(crate) fn conv(&mut self, c_in: usize, c_out: usize, kernel: usize, groups: usize, out: usize) {
        self.params(&[c_out, c_in / groups.max(1), kernel, kernel]);
        self.outputs(1, &[c_out, out, out]);
    }

    /// A batch norm over `c` maps of `size x size` whose kernel stands for `outputs` outputs.
    pub(crate) fn batch_norm(&mut self, c: usize, size: usize, outputs: usize) {
        self.params(&[4, c]);
        self.buffers = self.buffers.saturating_add(prod(&[2, c]));
        self.outputs(outputs, &[c, size, size]);
    }

    /// A linear layer with bias applied to `tokens` vectors per image.
    pub(crate) fn linear(&mut self, d_in: usize, d_out: usize, tokens: usize) {
        self.params(&[d_in, d_out]);
        self.params(&[d_out]);
        self.outputs(1, &[tokens, d_out]);
    }

    /// `times` copies of what `part` counted.
    pub(crate) fn repeat(&mut self, part: &Tally, times: usize) {
        self.params = self.params.saturating_add(part.params.saturating_mul(times as u64));
        self.buffers = self.buffers.saturating_add(part.buffers.saturating_mul(times as u64));
        self.activations = self.activations.saturating_add(part.activations.saturating_mul(times as u64));
    }

    pub(crate) fn finish(self, feature_dim: usize) -> Footprint {
        Footprint { params: self.params, buffers: self.buffers, feature_dim, activations: self.activations }
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

#[cfg(test)]
mod footprint_tests;
