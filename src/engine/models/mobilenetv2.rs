//! MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear
//! Bottlenecks", arXiv 1801.04381), laid out as torchvision's `mobilenet_v2` so its state dict
//! loads unchanged: `features.0` stem, `features.1..17` inverted residuals, `features.18` the
//! 1x1 conv to 1280 channels, `classifier.1` the head (`classifier.0` is dropout).
//!
//! The CIFAR stem (for 32x32 inputs) sets the stride of the first conv and of the second stage
//! to 1, leaving an overall stride of 8 (4x4 maps before pooling) instead of 32.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Device, Tensor};

use super::Stem;
use crate::engine::error::EngineError;
use crate::engine::layers::{
    Act, BatchNorm, ConvBn, Linear, batch_norm_layer, conv_bn, conv_forward, conv2d, global_avg_pool, linear,
};
use burn::nn::conv::Conv2d;

#[derive(Module, Debug)]
pub struct MobileNetV2 {
    pub features: Vec<Feature>,
    pub classifier: Classifier,
}

/// One entry of torchvision's `features` Sequential.
#[derive(Module, Debug)]
pub enum Feature {
    ConvBn(ConvBn),
    Block(InvertedResidual),
}

/// torchvision's `conv` Sequential: [expand ConvBn]? depthwise ConvBn, project conv, bn.
#[derive(Module, Debug)]
pub struct InvertedResidual {
    pub conv: Vec<Layer>,
    pub use_residual: bool,
}

#[derive(Module, Debug)]
pub enum Layer {
    ConvBn(ConvBn),
    Conv(Conv2d),
    Bn(BatchNorm),
}

#[derive(Module, Debug)]
pub struct Classifier {
    pub dropout: Dropout,
    pub linear: Linear,
}

/// torchvision's `_make_divisible`: round to a multiple of 8, never below 90% of the value.
fn make_divisible(v: f32, divisor: usize) -> usize {
    let d = divisor as f32;
    // Saturating: an absurd width_mult gives an absurd width (refused by the caller's memory
    // check), not an overflow.
    let mut new_v = (((v + d / 2.0) / d).floor() as usize).saturating_mul(divisor);
    new_v = new_v.max(divisor);
    if (new_v as f32) < 0.9 * v {
        new_v = new_v.saturating_add(divisor);
    }
    new_v
}

/// t (expansion), c (channels), n (repeats), s (stride of the first repeat) of each stage.
fn settings(cifar: bool) -> [[usize; 4]; 7] {
    [
        [1, 16, 1, 1],
        [6, 24, 2, if cifar { 1 } else { 2 }],
        [6, 32, 3, 2],
        [6, 64, 4, 2],
        [6, 96, 3, 1],
        [6, 160, 3, 2],
        [6, 320, 1, 1],
    ]
}

impl MobileNetV2 {
    pub fn new(
        width_mult: f32,
        stem: Stem,
        dropout: f64,
        in_channels: usize,
        num_classes: usize,
        device: &Device,
    ) -> Result<Self, EngineError> {
        check(width_mult, dropout)?;
        let cifar = matches!(stem, Stem::Cifar);
        let settings = settings(cifar);
        let mut c_in = make_divisible(32.0 * width_mult, 8);
        let last = make_divisible(1280.0 * width_mult.max(1.0), 8);
        let first_stride = if cifar { 1 } else { 2 };
        let mut features = vec![Feature::ConvBn(conv_bn(in_channels, c_in, 3, first_stride, 1, device))];
        for [t, c, n, s] in settings {
            let c_out = make_divisible(c as f32 * width_mult, 8);
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                let hidden = c_in * t;
                let mut conv = Vec::new();
                if t != 1 {
                    conv.push(Layer::ConvBn(conv_bn(c_in, hidden, 1, 1, 1, device)));
                }
                conv.push(Layer::ConvBn(conv_bn(hidden, hidden, 3, stride, hidden, device)));
                conv.push(Layer::Conv(conv2d(hidden, c_out, 1, 1, 1, false, device)));
                conv.push(Layer::Bn(batch_norm_layer(c_out, device)));
                features.push(Feature::Block(InvertedResidual {
                    conv,
                    use_residual: stride == 1 && c_in == c_out,
                }));
                c_in = c_out;
            }
        }
        features.push(Feature::ConvBn(conv_bn(c_in, last, 1, 1, 1, device)));
        Ok(MobileNetV2 {
            features,
            classifier: Classifier {
                dropout: DropoutConfig::new(dropout).init(),
                linear: linear(last, num_classes, true, device),
            },
        })
    }

    pub fn forward_features(&self, mut x: Tensor<4>) -> Tensor<2> {
        for f in &self.features {
            x = match f {
                Feature::ConvBn(cb) => cb.forward_act(x, Act::Relu6, None),
                Feature::Block(b) => b.forward(x),
            };
        }
        global_avg_pool(x)
    }

    pub fn logits_from_features(&self, f: Tensor<2>) -> Tensor<2> {
        self.classifier.linear.forward(crate::engine::layers::dropout(&self.classifier.dropout, f))
    }

    pub fn feature_dim(&self) -> usize {
        self.classifier.linear.weight.shape().dims::<2>()[1]
    }
}

impl InvertedResidual {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut y = x.clone();
        let last = self.conv.len() - 1;
        for (i, layer) in self.conv.iter().enumerate() {
            y = match layer {
                Layer::ConvBn(cb) => cb.forward_act(y, Act::Relu6, None),
                Layer::Conv(c) => conv_forward(c, y),
                // The residual sum is fused into the projection's batch norm.
                Layer::Bn(bn) if i == last && self.use_residual => {
                    return bn.forward_act(y, Act::Identity, Some(x));
                }
                Layer::Bn(bn) => bn.forward(y),
            };
        }
        if self.use_residual { x + y } else { y }
    }
}

/// [`super::Footprint`] of `MobileNetV2::new` on `in_channels x size x size` inputs.
pub(super) fn footprint(
    width_mult: f32,
    stem: Stem,
    dropout: f64,
    in_channels: usize,
    size: usize,
    num_classes: usize,
) -> Result<super::Footprint, EngineError> {
    check(width_mult, dropout)?;
    let cifar = matches!(stem, Stem::Cifar);
    let mut c_in = make_divisible(32.0 * width_mult, 8);
    let last = make_divisible(1280.0 * width_mult.max(1.0), 8);
    let mut t = super::Tally::default();
    t.outputs(1, &[in_channels, size, size]);
    let mut s = super::conv_out(size, 3, if cifar { 1 } else { 2 });
    t.conv(in_channels, c_in, 3, 1, s);
    t.batch_norm(c_in, s, 2);
    for [e, c, n, first_stride] in settings(cifar) {
        let c_out = make_divisible(c as f32 * width_mult, 8);
        for i in 0..n {
            let stride = if i == 0 { first_stride } else { 1 };
            let hidden = c_in.saturating_mul(e);
            if e != 1 {
                t.conv(c_in, hidden, 1, 1, s);
                t.batch_norm(hidden, s, 2);
            }
            let out = super::conv_out(s, 3, stride);
            t.conv(hidden, hidden, 3, hidden, out);
            t.batch_norm(hidden, out, 2);
            t.conv(hidden, c_out, 1, 1, out);
            // The projection's batch norm, with the residual sum where there is one.
            t.batch_norm(c_out, out, if stride == 1 && c_in == c_out { 2 } else { 1 });
            (s, c_in) = (out, c_out);
        }
    }
    t.conv(c_in, last, 1, 1, s);
    t.batch_norm(last, s, 2);
    t.outputs(2, &[last]); // global average pool, dropout
    t.linear(last, num_classes, 1);
    Ok(t.finish(last))
}

/// The settings `new` and `footprint` both refuse.
fn check(width_mult: f32, dropout: f64) -> Result<(), EngineError> {
    if !(width_mult > 0.0 && width_mult.is_finite()) {
        return Err(EngineError::InvalidConfig(format!(
            "mobilenetv2 width_mult: expected > 0, got {width_mult}"
        )));
    }
    if !(0.0..1.0).contains(&dropout) {
        return Err(EngineError::InvalidConfig(format!(
            "mobilenetv2 dropout: expected in [0, 1), got {dropout}"
        )));
    }
    Ok(())
}
