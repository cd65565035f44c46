//! Small models for quick experiments and tests: a multi-layer perceptron over flattened
//! pixels, and a plain CNN (conv3x3-BN-ReLU-maxpool2 per stage, then global average pool).

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::relu;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, Tensor};

use crate::engine::layers::{
    Act, BatchNorm, Linear, batch_norm_layer, conv_forward, conv2d, global_avg_pool, linear,
};

/// Hidden layers `Linear-ReLU`; the features are the last hidden activation (or the flattened
/// input when `hidden` is empty).
#[derive(Module, Debug)]
pub struct Mlp {
    pub layers: Vec<Linear>,
    pub head: Linear,
    pub in_dim: usize,
}

impl Mlp {
    pub fn new(in_dim: usize, hidden: &[usize], num_classes: usize, device: &Device) -> Self {
        let mut d = in_dim;
        let mut layers = Vec::new();
        for &h in hidden {
            layers.push(linear(d, h, true, device));
            d = h;
        }
        Mlp { layers, head: linear(d, num_classes, true, device), in_dim }
    }

    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        let n = x.dims()[0];
        let mut x = x.reshape([n, self.in_dim]);
        for layer in &self.layers {
            x = relu(layer.forward(x));
        }
        x
    }
}

#[derive(Module, Debug)]
pub struct Cnn {
    pub convs: Vec<Conv2d>,
    pub bns: Vec<BatchNorm>,
    pub head: Linear,
}

impl Cnn {
    pub fn new(in_channels: usize, channels: &[usize], num_classes: usize, device: &Device) -> Self {
        let mut c = in_channels;
        let mut convs = Vec::new();
        let mut bns = Vec::new();
        for &out in channels {
            convs.push(conv2d(c, out, 3, 1, 1, false, device));
            bns.push(batch_norm_layer(out, device));
            c = out;
        }
        Cnn { convs, bns, head: linear(c, num_classes, true, device) }
    }

    pub fn forward_features(&self, mut x: Tensor<4>) -> Tensor<2> {
        for (conv, bn) in self.convs.iter().zip(&self.bns) {
            x = bn.forward_act(conv_forward(conv, x), Act::Relu, None);
            let [_, _, h, w] = x.dims();
            // Pool while the map is at least 2x2, so deep stacks on small images stay valid.
            if h >= 2 && w >= 2 {
                x = max_pool2d(x, MaxPoolOptions::new([2, 2]).with_stride([2, 2]));
            }
        }
        global_avg_pool(x)
    }
}

/// [`super::Footprint`] of `Mlp::new` on `c x size x size` inputs.
pub(super) fn mlp_footprint(c: usize, size: usize, hidden: &[usize], num_classes: usize) -> super::Footprint {
    let mut t = super::Tally::default();
    let in_dim = usize::try_from(super::prod(&[c, size, size])).unwrap_or(usize::MAX);
    t.outputs(1, &[in_dim]);
    let mut d = in_dim;
    for &h in hidden {
        t.linear(d, h, 1);
        t.outputs(1, &[h]); // ReLU
        d = h;
    }
    t.linear(d, num_classes, 1);
    t.finish(d)
}

/// [`super::Footprint`] of `Cnn::new` on `c x size x size` inputs.
pub(super) fn cnn_footprint(
    c: usize,
    size: usize,
    channels: &[usize],
    num_classes: usize,
) -> super::Footprint {
    let mut t = super::Tally::default();
    t.outputs(1, &[c, size, size]);
    let (mut c_in, mut s) = (c, size);
    for &out in channels {
        t.conv(c_in, out, 3, 1, s);
        t.batch_norm(out, s, 2);
        if s >= 2 {
            s /= 2;
            t.outputs(1, &[out, s, s]);
        }
        c_in = out;
    }
    t.outputs(1, &[c_in]); // global average pool
    t.linear(c_in, num_classes, 1);
    t.finish(c_in)
}
