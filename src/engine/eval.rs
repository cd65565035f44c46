//! Evaluation over batches: top-1/top-5 accuracy and mean cross-entropy.

use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

use crate::engine::models::Model;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EvalMetrics {
    pub top1: f64,
    pub top5: f64,
    pub mean_loss: f64,
    pub n: usize,
}

/// Mean cross-entropy of `logits: [n, k]` against class indices `targets: [n]`
/// (PyTorch's `F.cross_entropy` with reduction `mean`).
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let [n, _] = logits.dims();
    let logp = log_softmax(logits, 1);
    let picked = logp.gather(1, targets.reshape([n, 1]));
    picked.mean().neg()
}

/// Evaluate `model` in inference mode over `(images, labels)` batches.
pub fn evaluate_batches<I>(model: &Model, batches: I) -> EvalMetrics
where
    I: IntoIterator<Item = (Tensor<4>, Tensor<1, Int>)>,
{
    let model = model.valid();
    let (mut n, mut c1, mut c5, mut loss_sum) = (0usize, 0usize, 0usize, 0f64);
    for (x, y) in batches {
        let x = x.without_autodiff();
        let y = y.without_autodiff();
        let [b, _, _, _] = x.dims();
        let (_, z) = model.forward(x);
        let k = z.dims()[1];
        loss_sum += cross_entropy(z.clone(), y.clone()).into_scalar::<f64>() * b as f64;
        let top = z.argsort_descending(1).slice([0..b, 0..k.min(5)]);
        let hits = top.equal(y.reshape([b, 1]).expand([b, k.min(5)])).int();
        c1 += hits.clone().slice([0..b, 0..1]).sum().into_scalar::<i64>() as usize;
        c5 += hits.sum().into_scalar::<i64>() as usize;
        n += b;
    }
    let d = n.max(1) as f64;
    EvalMetrics {
        top1: c1 as f64 / d,
        top5: c5 as f64 / d,
        mean_loss: loss_sum / d,
        n,
    }
}
