//! The small trainable heads the losses own: projectors (align_uniform, crd), connectors
//! (srrl) and regressors (fitnet, cosine).
//!
//! A head is a [`Sequential`] of visible layers whose indices match the PyTorch
//! `nn.Sequential` of the paper's code (sfarhat/dapt `models/projector.py`, `distill.py`), so a
//! parameter path such as `layers.3.Linear.weight` is PyTorch's `projector.3.weight`
//! (transposed: burn stores `[d_in, d_out]`). The final L2 normalisation of a projector is not a
//! layer; [`Projector::forward`] applies it.

use burn::module::{Module, RunningState};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, Relu};
use burn::tensor::{Device, Tensor};

use super::functional::l2_normalize;

/// Projector architectures of the paper's code (`Embed` in `models/projector.py`).
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProjectorKind {
    /// `Lin(d, out)`.
    Linear,
    /// `Lin(d, d) - ReLU - Lin(d, out)` (the paper's default).
    MocoV2,
    /// `Lin(d, d, no bias) - BN - ReLU - Lin(d, out, no bias) - BN(affine=False)`.
    SimClr,
    /// SimCLRv2: three linear layers, `Lin - BN - ReLU - Lin - BN - ReLU - Lin - BN(affine=False)`.
    SimClrV2,
}

impl ProjectorKind {
    /// The name the spec uses.
    pub fn name(self) -> &'static str {
        match self {
            ProjectorKind::Linear => "linear",
            ProjectorKind::MocoV2 => "mocov2",
            ProjectorKind::SimClr => "simclr",
            ProjectorKind::SimClrV2 => "simclrv2",
        }
    }
}

/// SRRL connector architectures (`connector` in the paper's `distill.py`).
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConnectorKind {
    /// `Lin(s, t) - ReLU`.
    Mlp,
    /// `Lin(s, (s + t) / 2) - ReLU - Lin((s + t) / 2, t) - ReLU` (the paper's default).
    Mlp2,
}

impl ConnectorKind {
    /// The name the spec uses.
    pub fn name(self) -> &'static str {
        match self {
            ConnectorKind::Mlp => "mlp",
            ConnectorKind::Mlp2 => "mlp2",
        }
    }
}

/// One layer of a head.
#[derive(Module, Debug)]
pub enum Layer {
    Linear(Linear),
    BatchNorm(BatchNorm),
    /// `nn.BatchNorm1d(d, affine=False)`: normalisation without learned scale and shift.
    BatchNormNoAffine(BatchNormNoAffine),
    Relu(Relu),
}

impl Layer {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Layer::Linear(layer) => layer.forward(x),
            Layer::BatchNorm(layer) => layer.forward(x),
            Layer::BatchNormNoAffine(layer) => layer.forward(x),
            Layer::Relu(layer) => layer.forward(x),
        }
    }
}

/// Layers applied in order, like `nn.Sequential`.
#[derive(Module, Debug)]
pub struct Sequential {
    pub layers: Vec<Layer>,
}

impl Sequential {
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.layers.iter().fold(x, |x, layer| layer.forward(x))
    }
}

/// A projector: the layers of its kind, then L2 normalisation of each row.
#[derive(Module, Debug)]
pub struct Projector {
    pub net: Sequential,
}

impl Projector {
    /// Builds a `kind` projector from `d_in` to `d_out` with PyTorch's default initialisation
    /// scheme (burn's `Linear` default is the same Kaiming-uniform bound `1/sqrt(d_in)`).
    pub fn new(kind: ProjectorKind, d_in: usize, d_out: usize, device: &Device) -> Self {
        let lin = |i, o, bias| Layer::Linear(LinearConfig::new(i, o).with_bias(bias).init(device));
        let bn = |d| Layer::BatchNorm(BatchNormConfig::new(d).init(device));
        let relu = || Layer::Relu(Relu::new());
        let layers = match kind {
            ProjectorKind::Linear => vec![lin(d_in, d_out, true)],
            ProjectorKind::MocoV2 => vec![lin(d_in, d_in, true), relu(), lin(d_in, d_out, true)],
            ProjectorKind::SimClr => vec![
                lin(d_in, d_in, false),
                bn(d_in),
                relu(),
                lin(d_in, d_out, false),
                Layer::BatchNormNoAffine(BatchNormNoAffine::new(d_out, device)),
            ],
            ProjectorKind::SimClrV2 => vec![
                lin(d_in, d_in, false),
                bn(d_in),
                relu(),
                lin(d_in, d_in, false),
                bn(d_in),
                relu(),
                lin(d_in, d_out, false),
                Layer::BatchNormNoAffine(BatchNormNoAffine::new(d_out, device)),
            ],
        };
        Self { net: Sequential { layers } }
    }

    /// `[batch, d_in]` -> unit rows `[batch, d_out]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        l2_normalize(self.net.forward(x))
    }
}

/// Builds an SRRL connector from the student width `s` to the teacher width `t`.
pub fn connector(kind: ConnectorKind, s: usize, t: usize, device: &Device) -> Sequential {
    let lin = |i, o| Layer::Linear(LinearConfig::new(i, o).init(device));
    let relu = || Layer::Relu(Relu::new());
    let layers = match kind {
        ConnectorKind::Mlp => vec![lin(s, t), relu()],
        ConnectorKind::Mlp2 => {
            // Integer midpoint, as `(s_dim + t_dim) // 2` in the paper's code.
            let mid = (s + t) / 2;
            vec![lin(s, mid), relu(), lin(mid, t), relu()]
        }
    };
    Sequential { layers }
}

/// Batch normalisation without affine parameters (`nn.BatchNorm1d(d, affine=False)`).
///
/// With autodiff on (training) it normalises with the batch statistics and updates the
/// running ones; without, it uses the running statistics. burn's `BatchNorm` always owns a
/// trainable scale and shift, which the SimCLR projector's last layer must not have.
#[derive(Module, Debug)]
pub struct BatchNormNoAffine {
    pub running_mean: RunningState<Tensor<1>>,
    pub running_var: RunningState<Tensor<1>>,
    pub momentum: f64,
    pub epsilon: f64,
}

impl BatchNormNoAffine {
    pub fn new(num_features: usize, device: &Device) -> Self {
        Self {
            running_mean: RunningState::new(Tensor::zeros([num_features], device)),
            running_var: RunningState::new(Tensor::ones([num_features], device)),
            momentum: 0.1,
            epsilon: 1e-5,
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let [_, d] = x.dims();
        let device = x.device();
        let dtype = x.dtype();
        let gamma = Tensor::ones([d], (&device, dtype));
        let beta = Tensor::zeros([d], (&device, dtype));
        if !x.is_autodiff() {
            let mean = self.running_mean.value().cast(dtype).to_device(&device);
            let var = self.running_var.value().cast(dtype).to_device(&device);
            return burn::tensor::module::batch_norm(x, gamma, beta, mean, var, self.epsilon);
        }
        let result = burn::tensor::module::batch_norm_train(x, gamma, beta, self.epsilon);
        let m = self.momentum;
        let mean = self.running_mean.value_sync().to_device(&device);
        let var = self.running_var.value_sync().to_device(&device);
        let mean_dtype = mean.dtype();
        self.running_mean.update(
            mean.mul_scalar(1.0 - m).add(result.mean.detach().cast(mean_dtype).mul_scalar(m)).detach(),
        );
        self.running_var.update(
            var.mul_scalar(1.0 - m).add(result.variance.detach().cast(mean_dtype).mul_scalar(m)).detach(),
        );
        result.output
    }
}
