//! ResNet (He et al. 2016, "Deep Residual Learning for Image Recognition", arXiv 1512.03385),
//! laid out as torchvision's `resnet18/34/50` so their state dicts load unchanged.
//!
//! Depths and base widths (before `width_mult`):
//! - 8: CIFAR ResNet (6n+2, n = 1), three stages of one basic block, widths 16/32/64.
//! - 10: four stages of one basic block, widths 64/128/256/512.
//! - 18/34: basic blocks [2,2,2,2] / [3,4,6,3], widths 64..512.
//! - 50: bottleneck blocks [3,4,6,3], widths 64..512, expansion 4 (features 2048).
//!
//! The CIFAR stem is a 3x3 stride-1 conv without max pool (for 32x32 inputs); the ImageNet
//! stem is torchvision's 7x7 stride-2 conv followed by a 3x3 stride-2 max pool.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, Tensor};

use super::Stem;
use crate::engine::error::EngineError;
use crate::engine::layers::{
    Act, BatchNorm, ConvBn, Linear, batch_norm_layer, conv_bn, conv_forward, conv2d, global_avg_pool, linear,
};

#[derive(Module, Debug)]
pub struct ResNet {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    /// `layers[i]` is torchvision's `layer{i+1}`.
    pub layers: Vec<Vec<Block>>,
    pub fc: Linear,
    pub imagenet_stem: bool,
}

/// A basic block (`conv3`/`bn3` absent) or a bottleneck block.
#[derive(Module, Debug)]
pub struct Block {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub conv2: Conv2d,
    pub bn2: BatchNorm,
    pub conv3: Option<Conv2d>,
    pub bn3: Option<BatchNorm>,
    pub downsample: Option<ConvBn>,
}

struct Plan {
    blocks: &'static [usize],
    widths: [usize; 4],
    bottleneck: bool,
}

fn plan(depth: usize) -> Result<Plan, EngineError> {
    let wide = [64, 128, 256, 512];
    Ok(match depth {
        8 => Plan { blocks: &[1, 1, 1], widths: [16, 32, 64, 0], bottleneck: false },
        10 => Plan { blocks: &[1, 1, 1, 1], widths: wide, bottleneck: false },
        18 => Plan { blocks: &[2, 2, 2, 2], widths: wide, bottleneck: false },
        34 => Plan { blocks: &[3, 4, 6, 3], widths: wide, bottleneck: false },
        50 => Plan { blocks: &[3, 4, 6, 3], widths: wide, bottleneck: true },
        other => {
            return Err(EngineError::InvalidConfig(format!(
                "resnet depth: expected one of 8, 10, 18, 34, 50, got {other}"
            )));
        }
    })
}

fn scaled(width: usize, mult: f32) -> usize {
    ((width as f32 * mult).round() as usize).max(1)
}

impl ResNet {
    pub fn new(
        depth: usize,
        width_mult: f32,
        stem: Stem,
        in_channels: usize,
        num_classes: usize,
        device: &Device,
    ) -> Result<Self, EngineError> {
        if !(width_mult > 0.0 && width_mult.is_finite()) {
            return Err(EngineError::InvalidConfig(format!(
                "resnet width_mult: expected > 0, got {width_mult}"
            )));
        }
        let plan = plan(depth)?;
        let expansion = if plan.bottleneck { 4 } else { 1 };
        let stem_width = scaled(plan.widths[0], width_mult);
        let imagenet_stem = matches!(stem, Stem::ImageNet);
        let conv1 = if imagenet_stem {
            conv2d(in_channels, stem_width, 7, 2, 1, false, device)
        } else {
            conv2d(in_channels, stem_width, 3, 1, 1, false, device)
        };
        let mut c_in = stem_width;
        let mut layers = Vec::new();
        for (stage, &n_blocks) in plan.blocks.iter().enumerate() {
            let width = scaled(plan.widths[stage], width_mult);
            let c_out = width * expansion;
            let mut blocks = Vec::new();
            for b in 0..n_blocks {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                let downsample =
                    (stride != 1 || c_in != c_out).then(|| conv_bn(c_in, c_out, 1, stride, 1, device));
                let block = if plan.bottleneck {
                    // torchvision puts the stride on the 3x3 conv (ResNet v1.5).
                    Block {
                        conv1: conv2d(c_in, width, 1, 1, 1, false, device),
                        bn1: batch_norm_layer(width, device),
                        conv2: conv2d(width, width, 3, stride, 1, false, device),
                        bn2: batch_norm_layer(width, device),
                        conv3: Some(conv2d(width, c_out, 1, 1, 1, false, device)),
                        bn3: Some(batch_norm_layer(c_out, device)),
                        downsample,
                    }
                } else {
                    Block {
                        conv1: conv2d(c_in, width, 3, stride, 1, false, device),
                        bn1: batch_norm_layer(width, device),
                        conv2: conv2d(width, width, 3, 1, 1, false, device),
                        bn2: batch_norm_layer(width, device),
                        conv3: None,
                        bn3: None,
                        downsample,
                    }
                };
                blocks.push(block);
                c_in = c_out;
            }
            layers.push(blocks);
        }
        Ok(ResNet {
            conv1,
            bn1: batch_norm_layer(stem_width, device),
            layers,
            fc: linear(c_in, num_classes, true, device),
            imagenet_stem,
        })
    }

    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.bn1.forward_act(conv_forward(&self.conv1, x), Act::Relu, None);
        if self.imagenet_stem {
            let opts = MaxPoolOptions::new([3, 3]).with_stride([2, 2]).with_padding([1, 1]);
            x = max_pool2d(x, opts);
        }
        for stage in &self.layers {
            for block in stage {
                x = block.forward(x);
            }
        }
        global_avg_pool(x)
    }

    pub fn feature_dim(&self) -> usize {
        self.fc.weight.shape().dims::<2>()[1]
    }
}

impl Block {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = match &self.downsample {
            Some(ds) => ds.forward(x.clone()),
            None => x.clone(),
        };
        let y = self.bn1.forward_act(conv_forward(&self.conv1, x), Act::Relu, None);
        let y = conv_forward(&self.conv2, y);
        // The residual sum and the final ReLU are fused into the last batch norm.
        match (&self.conv3, &self.bn3) {
            (Some(conv3), Some(bn3)) => {
                let y = self.bn2.forward_act(y, Act::Relu, None);
                bn3.forward_act(conv_forward(conv3, y), Act::Relu, Some(identity))
            }
            _ => self.bn2.forward_act(y, Act::Relu, Some(identity)),
        }
    }
}

/// [`super::Footprint`] of `ResNet::new` on `in_channels x size x size` inputs.
pub(super) fn footprint(
    depth: usize,
    width_mult: f32,
    stem: Stem,
    in_channels: usize,
    size: usize,
    num_classes: usize,
) -> Result<super::Footprint, EngineError> {
    if !(width_mult > 0.0 && width_mult.is_finite()) {
        return Err(EngineError::InvalidConfig(format!("resnet width_mult: expected > 0, got {width_mult}")));
    }
    let plan = plan(depth)?;
    let expansion = if plan.bottleneck { 4 } else { 1 };
    let stem_width = scaled(plan.widths[0], width_mult);
    let mut t = super::Tally::default();
    t.outputs(1, &[in_channels, size, size]);
    let mut s = match stem {
        Stem::ImageNet => super::conv_out(size, 7, 2),
        Stem::Cifar => size,
    };
    t.conv(in_channels, stem_width, if stem == Stem::ImageNet { 7 } else { 3 }, 1, s);
    t.batch_norm(stem_width, s, 2);
    if stem == Stem::ImageNet {
        s = super::conv_out(s, 3, 2);
        t.outputs(1, &[stem_width, s, s]);
    }
    let mut c_in = stem_width;
    for (stage, &n_blocks) in plan.blocks.iter().enumerate() {
        let width = scaled(plan.widths[stage], width_mult);
        let c_out = width.saturating_mul(expansion);
        for b in 0..n_blocks {
            let stride = if stage > 0 && b == 0 { 2 } else { 1 };
            let out = super::conv_out(s, 3, stride);
            if stride != 1 || c_in != c_out {
                t.conv(c_in, c_out, 1, 1, out);
                t.batch_norm(c_out, out, 1);
            }
            if plan.bottleneck {
                t.conv(c_in, width, 1, 1, s);
                t.batch_norm(width, s, 2);
                t.conv(width, width, 3, 1, out);
                t.batch_norm(width, out, 2);
                t.conv(width, c_out, 1, 1, out);
            } else {
                t.conv(c_in, width, 3, 1, out);
                t.batch_norm(width, out, 2);
                t.conv(width, width, 3, 1, out);
            }
            // The last batch norm with the residual sum and ReLU.
            t.batch_norm(c_out, out, 3);
            (s, c_in) = (out, c_out);
        }
    }
    t.outputs(1, &[c_in]); // global average pool
    t.linear(c_in, num_classes, 1);
    Ok(t.finish(c_in))
}
