//! Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words",
//! arXiv 2010.11929), laid out as torchvision's `VisionTransformer` (`vit_b_16`) so its state
//! dict loads unchanged: `class_token`, `conv_proj`, `encoder.pos_embedding`,
//! `encoder.layers.encoder_layer_N.{ln_1, self_attention, ln_2, mlp.0, mlp.3}`, `encoder.ln`,
//! `heads.head`. Pre-norm blocks, exact (erf) GELU, LayerNorm eps 1e-6, the class token is the
//! feature.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Device, Distribution, Tensor};

use crate::engine::layers::{LayerNorm, Linear, add_flops, conv_forward, layer_norm, linear};

#[derive(Module, Debug)]
pub struct Vit {
    pub class_token: Param<Tensor<3>>,
    pub conv_proj: Conv2d,
    pub encoder: Encoder,
    pub heads: Heads,
    pub patch_size: usize,
}

#[derive(Module, Debug)]
pub struct Encoder {
    pub pos_embedding: Param<Tensor<3>>,
    pub layers: Vec<EncoderBlock>,
    pub ln: LayerNorm,
}

#[derive(Module, Debug)]
pub struct EncoderBlock {
    pub ln_1: LayerNorm,
    pub self_attention: Attention,
    pub ln_2: LayerNorm,
    pub mlp: MlpBlock,
}

/// `nn.MultiheadAttention` with its packed `in_proj_weight: [3d, d]`.
#[derive(Module, Debug)]
pub struct Attention {
    pub in_proj_weight: Param<Tensor<2>>,
    pub in_proj_bias: Param<Tensor<1>>,
    pub out_proj: Linear,
    pub num_heads: usize,
}

/// torchvision's `MLPBlock`: `mlp.0` (fc1), GELU, dropout, `mlp.3` (fc2), dropout.
#[derive(Module, Debug)]
pub struct MlpBlock {
    pub fc1: Linear,
    pub fc2: Linear,
}

#[derive(Module, Debug)]
pub struct Heads {
    pub head: Linear,
}

pub struct VitDims {
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_dim: usize,
}

impl Vit {
    pub fn new(
        dims: &VitDims,
        patch_size: usize,
        image_size: usize,
        in_channels: usize,
        num_classes: usize,
        device: &Device,
    ) -> Self {
        let d = dims.dim;
        let seq = (image_size / patch_size).pow(2) + 1;
        let fan_in = (in_channels * patch_size * patch_size) as f64;
        let conv_proj = Conv2dConfig::new([in_channels, d], [patch_size, patch_size])
            .with_stride([patch_size, patch_size])
            .with_initializer(burn::nn::Initializer::Normal { mean: 0.0, std: (1.0 / fan_in).sqrt() })
            .init(device);
        let std02 = Distribution::Normal(0.0, 0.02);
        let layers = (0..dims.depth)
            .map(|_| {
                let bound = (6.0 / (4 * d) as f64).sqrt();
                EncoderBlock {
                    ln_1: layer_norm(d, 1e-6, device),
                    self_attention: Attention {
                        in_proj_weight: Param::from_tensor(Tensor::random(
                            [3 * d, d],
                            Distribution::Uniform(-bound, bound),
                            device,
                        )),
                        in_proj_bias: Param::from_tensor(Tensor::zeros([3 * d], device)),
                        out_proj: linear(d, d, true, device),
                        num_heads: dims.heads,
                    },
                    ln_2: layer_norm(d, 1e-6, device),
                    mlp: MlpBlock {
                        fc1: linear(d, dims.mlp_dim, true, device),
                        fc2: linear(dims.mlp_dim, d, true, device),
                    },
                }
            })
            .collect();
        Vit {
            class_token: Param::from_tensor(Tensor::zeros([1, 1, d], device)),
            conv_proj,
            encoder: Encoder {
                pos_embedding: Param::from_tensor(Tensor::random([1, seq, d], std02, device)),
                layers,
                ln: layer_norm(d, 1e-6, device),
            },
            heads: Heads { head: linear(d, num_classes, true, device) },
            patch_size,
        }
    }

    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        let x = conv_forward(&self.conv_proj, x);
        let [n, d, h, w] = x.dims();
        let x = x.reshape([n, d, h * w]).swap_dims(1, 2);
        let cls = self.class_token.val().expand([n, 1, d]);
        let mut x = Tensor::cat(vec![cls, x], 1) + self.encoder.pos_embedding.val();
        for block in &self.encoder.layers {
            x = block.forward(x);
        }
        let x = self.encoder.ln.forward(x);
        x.slice([0..n, 0..1, 0..d]).reshape([n, d])
    }

    pub fn feature_dim(&self) -> usize {
        self.heads.head.weight.shape().dims::<2>()[1]
    }
}

impl EncoderBlock {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.self_attention.forward(self.ln_1.forward(x));
        let y = self.mlp.fc2.forward(gelu(self.mlp.fc1.forward(self.ln_2.forward(x.clone()))));
        x + y
    }
}

impl Attention {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [n, s, d] = x.dims();
        let h = self.num_heads;
        let hd = d / h;
        let w = self.in_proj_weight.val().transpose().unsqueeze::<3>();
        add_flops(2 * (n * s * d * 3 * d) as u64 + 2 * 2 * (n * h * s * s * hd) as u64);
        let qkv = x.matmul(w) + self.in_proj_bias.val().unsqueeze::<3>();
        // [n, s, 3, h, hd] -> [3, n, h, s, hd]
        let qkv = qkv.reshape([n, s, 3, h, hd]).permute([2, 0, 3, 1, 4]);
        let q = qkv.clone().slice([0..1]).reshape([n, h, s, hd]);
        let k = qkv.clone().slice([1..2]).reshape([n, h, s, hd]);
        let v = qkv.slice([2..3]).reshape([n, h, s, hd]);
        let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((hd as f64).sqrt());
        let attn = softmax(scores, 3);
        let out = attn.matmul(v).swap_dims(1, 2).reshape([n, s, d]);
        self.out_proj.forward(out)
    }
}

/// [`super::Footprint`] of `Vit::new` on `in_channels x image_size x image_size` inputs.
pub(super) fn footprint(
    dims: &VitDims,
    patch_size: usize,
    image_size: usize,
    in_channels: usize,
    num_classes: usize,
) -> super::Footprint {
    let (d, h, m) = (dims.dim, dims.heads, dims.mlp_dim);
    let grid = image_size / patch_size.max(1);
    let seq = grid.saturating_mul(grid).saturating_add(1);
    let mut t = super::Tally::default();
    t.outputs(1, &[in_channels, image_size, image_size]);
    t.params(&[d]); // class token
    t.params(&[d, in_channels, patch_size, patch_size]);
    t.params(&[d]);
    t.outputs(1, &[d, grid, grid]);
    t.params(&[seq, d]); // position embedding
    t.outputs(2, &[seq, d]); // class token joined, position added
    let mut block = super::Tally::default();
    block.params(&[2, d]);
    block.outputs(1, &[seq, d]); // ln_1
    block.linear(d, d.saturating_mul(3), seq);
    block.outputs(2, &[h, seq, seq]); // scores, softmax
    block.outputs(1, &[seq, d]); // attention x values
    block.linear(d, d, seq);
    block.outputs(1, &[seq, d]); // residual sum
    block.params(&[2, d]);
    block.outputs(1, &[seq, d]); // ln_2
    block.linear(d, m, seq);
    block.outputs(1, &[seq, m]); // GELU
    block.linear(m, d, seq);
    block.outputs(1, &[seq, d]); // residual sum
    t.repeat(&block, dims.depth);
    t.params(&[2, d]);
    t.outputs(1, &[seq, d]); // encoder ln
    t.outputs(1, &[d]); // class token
    t.linear(d, num_classes, 1);
    t.finish(d)
}
