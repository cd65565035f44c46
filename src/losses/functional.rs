//! The loss formulas as plain tensor functions: no trainable state, no checks.
//!
//! Division by a scalar is written `mul_scalar(1.0 / s)`: burn 0.22.1's autodiff backward of
//! `div_scalar` rounds the scalar to f32 (1e-8 relative error in f64 gradients).
//!
//! Each one mirrors a PyTorch expression from the paper's code (sfarhat/dapt, itself built on
//! RepDistiller); the expression is quoted above each function so the fixtures can be read
//! against it. Scalars come back as `Tensor<1>` of shape `[1]`, burn's reduction shape.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Int, Tensor};

/// Cross-entropy with optional label smoothing, averaged over the batch.
///
/// `F.cross_entropy(z, y, label_smoothing=eps)`: the target is `(1 - eps) * onehot(y) + eps / C`.
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>, label_smoothing: f64) -> Tensor<1> {
    let [batch, classes] = logits.dims();
    let log_probs = log_softmax(logits, 1);
    let picked = log_probs.clone().gather(1, labels.reshape([batch, 1]));
    let nll = picked.neg().mean();
    if label_smoothing == 0.0 {
        return nll;
    }
    // Mean over classes of -log p, then over the batch.
    let smooth = log_probs.neg().sum().mul_scalar(1.0 / (batch * classes) as f64);
    nll.mul_scalar(1.0 - label_smoothing) + smooth.mul_scalar(label_smoothing)
}

/// Hinton KD, RepDistiller's `DistillKL`:
/// `F.kl_div(log_softmax(z_s/T), softmax(z_t/T), reduction='sum') * T**2 / batch`.
pub fn kd(student_logits: Tensor<2>, teacher_logits: Tensor<2>, temperature: f64) -> Tensor<1> {
    let [batch, _] = student_logits.dims();
    let log_p_s = log_softmax(student_logits.mul_scalar(1.0 / temperature), 1);
    let log_p_t = log_softmax(teacher_logits.clone().mul_scalar(1.0 / temperature), 1);
    let p_t = softmax(teacher_logits.mul_scalar(1.0 / temperature), 1);
    (p_t * (log_p_t - log_p_s)).sum().mul_scalar(temperature * temperature / batch as f64)
}

/// Rows scaled to unit L2 norm, `F.normalize(x, dim=1)` (norm clamped at 1e-12).
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// Alignment (Wang & Isola 2020): `(x - y).norm(p=2, dim=1).pow(alpha).mean()`.
pub fn align(x: Tensor<2>, y: Tensor<2>, alpha: f64) -> Tensor<1> {
    let squared = (x - y).square().sum_dim(1);
    // alpha = 2 (the paper's value) skips the square root, whose gradient is infinite at 0.
    let powered = if alpha == 2.0 { squared } else { squared.powf_scalar(alpha / 2.0) };
    powered.mean()
}

/// Uniformity (Wang & Isola 2020): `torch.pdist(x).pow(2).mul(-t).exp().mean().log()`,
/// the mean over the `n (n - 1) / 2` pairs `i < j`. Needs at least two rows.
pub fn uniformity(x: Tensor<2>, t: f64) -> Tensor<1> {
    let [n, _] = x.dims();
    let device = x.device();
    // Pairwise differences, not |x_i|^2 + |x_j|^2 - 2 x_i.x_j: on unit vectors that expansion's
    // backward subtracts nearly equal terms and loses half the digits (1e-8 relative in f64).
    let [_, d] = x.dims();
    let diff = x.clone().reshape([n, 1, d]) - x.reshape([1, n, d]); // [n, n, d]
    let sq_dists: Tensor<2> = diff.square().sum_dim(2).reshape([n, n]);
    let kernel = sq_dists.mul_scalar(-t).exp();
    let upper = upper_pairs_mask(n, &device, kernel.dtype());
    let pairs = (n * (n - 1) / 2) as f64;
    (kernel * upper).sum().mul_scalar(1.0 / pairs).log()
}

/// 1.0 where `i < j`, else 0.0: the pairs `torch.pdist` returns.
fn upper_pairs_mask(n: usize, device: &burn::tensor::Device, dtype: burn::tensor::DType) -> Tensor<2> {
    let mut mask = vec![0.0f64; n * n];
    for i in 0..n {
        for j in (i + 1)..n {
            mask[i * n + j] = 1.0;
        }
    }
    Tensor::from_data(burn::tensor::TensorData::new(mask, [n, n]), (device, dtype))
}

/// `nn.MSELoss()`: mean of squared differences over every element.
pub fn mse(x: Tensor<2>, y: Tensor<2>) -> Tensor<1> {
    (x - y).square().mean()
}

/// Cosine embedding distance: `(1 - F.cosine_similarity(x, y, dim=1, eps=1e-8)).mean()`.
pub fn cosine_distance(x: Tensor<2>, y: Tensor<2>) -> Tensor<1> {
    let dot = (x.clone() * y.clone()).sum_dim(1);
    // PyTorch clamps each norm separately at eps.
    let nx = x.square().sum_dim(1).sqrt().clamp_min(1e-8);
    let ny = y.square().sum_dim(1).sqrt().clamp_min(1e-8);
    let cos = dot / (nx * ny);
    cos.neg().add_scalar(1.0).mean()
}

/// RepDistiller's `ContrastLoss` (CRD eq. 18) on `x = [batch, 1 + k]` normalised scores,
/// positive first: `-(sum log(x_0 / (x_0 + k/M + eps)) + sum log((k/M) / (x_i + k/M + eps))) / bs`.
pub fn contrast_loss(x: Tensor<2>, n_data: usize) -> Tensor<1> {
    const EPS: f64 = 1e-7;
    let [batch, width] = x.dims();
    let k = (width - 1) as f64;
    let noise = k / n_data as f64;
    let pos = x.clone().slice([0..batch, 0..1]);
    let neg = x.slice([0..batch, 1..width]);
    let log_pos = (pos.clone() / pos.add_scalar(noise + EPS)).log();
    let log_neg = neg.add_scalar(noise + EPS).recip().mul_scalar(noise).log();
    (log_pos.sum() + log_neg.sum()).neg().mul_scalar(1.0 / batch as f64)
}
