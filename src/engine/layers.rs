//! Layers whose parameters are laid out and named as in PyTorch, so that checkpoints map
//! one to one onto torchvision/timm state dicts and numerics match `torch.nn`.
//!
//! burn's own `Linear` stores its weight as `[in, out]` and its `BatchNorm` feeds the biased
//! batch variance into the running variance; PyTorch stores `[out, in]` and uses the unbiased
//! variance. Both differences would break checkpoint and parity tests, hence these wrappers.

use burn::module::{Flag, Module, Param, RunningState};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::{Device, Distribution, Tensor};

pub use crate::engine::norm::Act;

/// `y = x W^T + b` with `W: [out, in]`, PyTorch's `nn.Linear`.
#[derive(Module, Debug)]
pub struct Linear {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
}

/// PyTorch's default `nn.Linear` init: kaiming-uniform(a=sqrt 5), i.e. U(-1/sqrt(in), 1/sqrt(in)).
pub fn linear(d_in: usize, d_out: usize, bias: bool, device: &Device) -> Linear {
    let bound = 1.0 / (d_in as f64).sqrt();
    let dist = Distribution::Uniform(-bound, bound);
    Linear {
        weight: Param::from_tensor(Tensor::random([d_out, d_in], dist, device)),
        bias: bias.then(|| Param::from_tensor(Tensor::random([d_out], dist, device))),
    }
}

impl Linear {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let [d_out, d_in] = self.weight.shape().dims::<2>();
        add_flops(2 * (x.shape().num_elements() / d_in.max(1)) as u64 * d_in as u64 * d_out as u64);
        let w = self.weight.val().transpose();
        let y = x.matmul(w.unsqueeze());
        match &self.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        }
    }

    pub fn d_out(&self) -> usize {
        self.weight.shape().dims::<2>()[0]
    }
}

/// 2-d convolution with PyTorch's `[out, in/groups, kh, kw]` weight (burn's own layout).
pub fn conv2d(
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
    bias: bool,
    device: &Device,
) -> Conv2d {
    let pad = kernel / 2;
    Conv2dConfig::new([c_in, c_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_groups(groups)
        .with_bias(bias)
        // torchvision ResNet/MobileNetV2: kaiming-normal, fan_out, relu gain.
        .with_initializer(burn::nn::Initializer::KaimingNormal { gain: 2f64.sqrt(), fan_out_only: true })
        .init(device)
}

thread_local! {
    /// Multiply-add work of the forward passes run on this thread while counting is on.
    static FLOPS: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Counts `n` floating-point operations (2 per multiply-add) when a count is running.
pub(crate) fn add_flops(n: u64) {
    FLOPS.with(|f| {
        if let Some(c) = f.get() {
            f.set(Some(c + n));
        }
    });
}

/// Runs `f` and returns what it counted: convolutions, linear layers and attention products
/// (the work that dominates; normalisation, activations and pooling are not counted).
pub fn count_flops<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = FLOPS.with(|c| c.replace(Some(0)));
    let r = f();
    let n = FLOPS.with(|c| c.replace(before)).unwrap_or(0);
    (r, n)
}

/// `conv.forward(x)`, counted: 2 x output elements x (in/groups x kh x kw).
///
/// Symmetric padding without dilation (every convolution of our models) runs through
/// [`crate::engine::conv::conv2d`], whose CPU kernels are much faster in training than burn's.
pub fn conv_forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let pad = match conv.padding {
        PaddingConfig2d::Valid => Some([0, 0]),
        PaddingConfig2d::Explicit(t, l, b, r) if t == b && l == r => Some([t, l]),
        _ => None,
    };
    let y = match pad {
        Some(pad) if conv.dilation == [1, 1] => crate::engine::conv::conv2d(
            x,
            conv.weight.val(),
            conv.bias.as_ref().map(|b| b.val()),
            conv.stride,
            pad,
            conv.groups,
        ),
        _ => conv.forward(x),
    };
    let [c_out, per_out, kh, kw] = conv.weight.shape().dims::<4>();
    let _ = c_out;
    add_flops(2 * y.shape().num_elements() as u64 * (per_out * kh * kw) as u64);
    y
}

/// Batch normalisation with PyTorch's semantics: the running variance is updated with the
/// unbiased batch variance; `weight`/`bias` names as in `nn.BatchNorm2d`.
#[derive(Module, Debug)]
pub struct BatchNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub running_mean: RunningState<Tensor<1>>,
    pub running_var: RunningState<Tensor<1>>,
    pub training: Param<Flag>,
    pub momentum: f64,
    pub epsilon: f64,
}

pub fn batch_norm_layer(channels: usize, device: &Device) -> BatchNorm {
    BatchNorm {
        weight: Param::from_tensor(Tensor::ones([channels], device)),
        bias: Param::from_tensor(Tensor::zeros([channels], device)),
        running_mean: RunningState::new(Tensor::zeros([channels], device)),
        running_var: RunningState::new(Tensor::ones([channels], device)),
        training: Param::from_bool(true),
        momentum: 0.1,
        epsilon: 1e-5,
    }
}

impl BatchNorm {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_act(x, Act::Identity, None)
    }

    /// `act(bn(x) + residual)`, fused into one pass where the kernels of
    /// [`crate::engine::norm`] apply (the flex CPU device).
    pub fn forward_act<const D: usize>(
        &self,
        x: Tensor<D>,
        act: Act,
        residual: Option<Tensor<D>>,
    ) -> Tensor<D> {
        let device = x.device();
        if device.is_autodiff() && self.training.is_enabled() {
            let dims = x.dims();
            let n: usize = dims.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, d)| *d).product();
            let (output, batch_mean, batch_var) = crate::engine::norm::batch_norm_train(
                x,
                self.weight.val(),
                self.bias.val(),
                self.epsilon,
                act,
                residual,
            );
            let unbiased = (n as f64) / ((n.max(2) - 1) as f64);
            let m = self.momentum;
            let mean = self.running_mean.value_sync().to_device(&device);
            let var = self.running_var.value_sync().to_device(&device);
            let mean = mean.mul_scalar(1.0 - m) + batch_mean.detach().mul_scalar(m);
            let var = var.mul_scalar(1.0 - m) + batch_var.detach().mul_scalar(m * unbiased);
            self.running_mean.update(mean.detach());
            self.running_var.update(var.detach());
            output
        } else {
            // Folded into one scale and shift per channel, then one pass over the activations
            // (with the residual sum and the activation) where burn's `batch_norm` makes four.
            let mean = self.running_mean.value().to_device(&device);
            let var = self.running_var.value().to_device(&device);
            let scale = self.weight.val() * var.add_scalar(self.epsilon).sqrt().recip();
            let shift = self.bias.val() - mean * scale.clone();
            crate::engine::norm::affine(x, scale, shift, act, residual)
        }
    }
}

/// Layer normalisation over the last dimension, `nn.LayerNorm` names.
#[derive(Module, Debug)]
pub struct LayerNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub epsilon: f64,
}

pub fn layer_norm(dim: usize, epsilon: f64, device: &Device) -> LayerNorm {
    LayerNorm {
        weight: Param::from_tensor(Tensor::ones([dim], device)),
        bias: Param::from_tensor(Tensor::zeros([dim], device)),
        epsilon,
    }
}

impl LayerNorm {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let (var, mean) = x.clone().var_mean_bias(D - 1);
        let x = (x - mean).div((var + self.epsilon).sqrt());
        x * self.weight.val().unsqueeze() + self.bias.val().unsqueeze()
    }
}

/// Conv (no bias) then batch norm: torchvision's `Conv2dNormActivation` minus the activation,
/// and ResNet's `downsample`. Field names map to the Sequential indices `0` and `1`.
#[derive(Module, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

pub fn conv_bn(
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
    device: &Device,
) -> ConvBn {
    ConvBn {
        conv: conv2d(c_in, c_out, kernel, stride, groups, false, device),
        bn: batch_norm_layer(c_out, device),
    }
}

impl ConvBn {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.bn.forward(conv_forward(&self.conv, x))
    }

    /// `act(bn(conv(x)) + residual)`.
    pub fn forward_act(&self, x: Tensor<4>, act: Act, residual: Option<Tensor<4>>) -> Tensor<4> {
        self.bn.forward_act(conv_forward(&self.conv, x), act, residual)
    }
}

/// Global average pool `[n, c, h, w] -> [n, c]`.
pub fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
}

/// Switch every batch norm (and dropout) of `module` to inference behaviour while keeping its
/// parameters trainable: batch norm normalises with its running statistics and stops updating
/// them ("frozen BN" fine-tuning). [`Module::train`] turns them back on.
pub fn freeze_batch_norm<M: Module>(module: M) -> M {
    struct Off;
    impl burn::module::ModuleMapper for Off {
        fn map_flag(&mut self, flag: Param<Flag>) -> Param<Flag> {
            flag.with_value(false)
        }
    }
    module.map(&mut Off)
}

thread_local! {
    /// The dropout stream of this thread: `(seed, masks drawn)`; see [`seed_dropout`].
    static DROPOUT: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// Seeds this thread's dropout masks. The training loop calls it before each batch with a seed
/// of the node's seed and the batch's position, so a batch's masks depend on nothing else:
/// not on other nodes training on other threads (burn's generator is one per process), and
/// not on where a resumed run started.
pub fn seed_dropout(seed: u64) {
    DROPOUT.with(|d| d.set((seed, 0)));
}

/// `nn.Dropout` in training (a kept element scaled by `1 / (1 - p)`), with masks from this
/// thread's stream ([`seed_dropout`]); the identity in evaluation, as burn's `Dropout`: when
/// the layer is frozen, the device has no autodiff, or `p` is 0.
pub fn dropout<const D: usize>(layer: &burn::nn::Dropout, x: Tensor<D>) -> Tensor<D> {
    if !layer.training.is_enabled() || !x.device().is_autodiff() || layer.prob == 0.0 {
        return x;
    }
    let (seed, n) = DROPOUT.with(|d| {
        let (s, n) = d.get();
        d.set((s, n + 1));
        (s, n)
    });
    let keep = 1.0 - layer.prob;
    let scale = (1.0 / keep) as f32;
    let dims = x.dims();
    let count: usize = dims.iter().product();
    // A keyed hash per element (SplitMix64's finaliser): uniform in [0, 1) with 53 bits.
    let stream = seed ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mask: Vec<f32> = (0..count as u64)
        .map(|i| {
            let mut z = stream.wrapping_add((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            if ((z >> 11) as f64 / (1u64 << 53) as f64) < keep { scale } else { 0.0 }
        })
        .collect();
    let device = x.device();
    x * Tensor::<D>::from_data(burn::tensor::TensorData::new(mask, dims), &device)
}

#[cfg(test)]
mod dropout_tests {
    use burn::nn::DropoutConfig;
    use burn::tensor::{Device, Tensor};

    use super::*;

    fn draw(seed: u64) -> Vec<f32> {
        let device = Device::default().autodiff();
        seed_dropout(seed);
        let x = Tensor::<2>::ones([64, 250], &device);
        dropout(&DropoutConfig::new(0.2).init(), x).into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    /// Masks are a function of the seed and the draw's rank: the same seed draws the same mask,
    /// another seed another; about p of the elements are dropped, the rest scaled by 1/(1-p).
    #[test]
    fn masks_follow_the_seed_and_keep_one_minus_p() {
        let (a, b, c) = (draw(7), draw(7), draw(8));
        assert!(a == b, "same seed, same mask");
        assert!(a != c, "another seed, another mask");
        let dropped = a.iter().filter(|v| **v == 0.0).count() as f64 / a.len() as f64;
        assert!((dropped - 0.2).abs() < 0.02, "dropped {dropped}");
        assert!(a.iter().all(|v| *v == 0.0 || (*v - 1.25).abs() < 1e-6));
        // The second mask of a stream differs from the first.
        let device = Device::default().autodiff();
        seed_dropout(7);
        let layer = DropoutConfig::new(0.2).init();
        let first =
            dropout(&layer, Tensor::<2>::ones([64, 250], &device)).into_data().try_to_vec::<f32>().unwrap();
        let second =
            dropout(&layer, Tensor::<2>::ones([64, 250], &device)).into_data().try_to_vec::<f32>().unwrap();
        assert!(first == a && second != first);
        // Evaluation (no autodiff): the identity.
        let plain = Device::default();
        let x = Tensor::<2>::ones([4, 4], &plain);
        let y = dropout(&layer, x).into_data().try_to_vec::<f32>().unwrap();
        assert!(y.iter().all(|v| *v == 1.0));
    }
}
