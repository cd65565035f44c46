//! Training-mode batch normalisation on the flex CPU backend, fused.
//!
//! burn computes `batch_norm_train` and its gradient from generic tensor operations: each
//! statistic swaps the batch and channel axes (a full copy of the activations), and the
//! backward pass makes about ten full-size temporaries. Here one task per channel reads its
//! values in place (`[n, c, rest]`): two passes for the statistics and one to write the output
//! forward, two to read and one to write backward. Sums are taken in f64, in a fixed order.
//! Other devices and dtypes go to burn's `batch_norm_train`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

type AutodiffTensor<B> = FloatTensor<Autodiff<B>>;

/// `[n, c, rest]` view of an input of any rank >= 2.
#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    c: usize,
    rest: usize,
}

impl Dims {
    fn count(&self) -> usize {
        self.n * self.rest
    }

    /// The `rest`-long runs of channel `ch`, one per sample.
    fn runs(&self, ch: usize) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        (0..self.n).map(move |i| {
            let s = (i * self.c + ch) * self.rest;
            s..s + self.rest
        })
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Channel `ch`'s run of sample `i` (each task writes only its own channel).
    #[allow(clippy::mut_from_ref)]
    unsafe fn run(&self, r: std::ops::Range<usize>) -> &mut [f32] {
        // SAFETY: the caller's ranges are disjoint between tasks and inside the buffer.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(r.start), r.len()) }
    }
}

/// Forward: output, per-channel mean and biased variance.
fn forward(d: Dims, x: &[f32], gamma: &[f32], beta: &[f32], eps: f64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut y = vec![0f32; x.len()];
    let yp = SendPtr(y.as_mut_ptr());
    let cnt = d.count() as f64;
    let stats: Vec<(f32, f32)> = (0..d.c)
        .into_par_iter()
        .map(|ch| {
            let yp = yp;
            let mut s = 0f64;
            for r in d.runs(ch) {
                s += x[r].iter().map(|v| *v as f64).sum::<f64>();
            }
            let mean = s / cnt;
            let mut q = 0f64;
            for r in d.runs(ch) {
                q += x[r].iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>();
            }
            let var = q / cnt;
            let scale = gamma[ch] as f64 / (var + eps).sqrt();
            let (a, b) = (scale as f32, (beta[ch] as f64 - mean * scale) as f32);
            for r in d.runs(ch) {
                // SAFETY: channel ch's runs belong to this task only.
                let out = unsafe { yp.run(r.clone()) };
                for (o, v) in out.iter_mut().zip(&x[r]) {
                    *o = *v * a + b;
                }
            }
            (mean as f32, var as f32)
        })
        .collect();
    let (mean, var) = stats.into_iter().unzip();
    (y, mean, var)
}

/// Backward: gradients for the input, gamma and beta.
fn backward(
    d: Dims,
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dx = vec![0f32; x.len()];
    let dxp = SendPtr(dx.as_mut_ptr());
    let cnt = d.count() as f64;
    let sums: Vec<(f32, f32)> = (0..d.c)
        .into_par_iter()
        .map(|ch| {
            let dxp = dxp;
            let (m, inv) = (mean[ch] as f64, 1.0 / (var[ch] as f64 + eps).sqrt());
            let (mut sdy, mut sdyx) = (0f64, 0f64);
            for r in d.runs(ch) {
                for (g, v) in dy[r.clone()].iter().zip(&x[r]) {
                    sdy += *g as f64;
                    sdyx += *g as f64 * (*v as f64 - m);
                }
            }
            let sdyxhat = sdyx * inv;
            // dx = gamma·inv·(dy - mean(dy) - xhat·mean(dy·xhat))
            let k = gamma[ch] as f64 * inv;
            let (c0, c1) = (k * sdy / cnt, k * sdyxhat / cnt * inv);
            let (k, c0, c1, m32) = (k as f32, c0 as f32, c1 as f32, m as f32);
            for r in d.runs(ch) {
                // SAFETY: channel ch's runs belong to this task only.
                let out = unsafe { dxp.run(r.clone()) };
                for ((o, g), v) in out.iter_mut().zip(&dy[r.clone()]).zip(&x[r]) {
                    *o = k * *g - c0 - c1 * (*v - m32);
                }
            }
            (sdyxhat as f32, sdy as f32)
        })
        .collect();
    let (dgamma, dbeta) = sums.into_iter().unzip();
    (dx, dgamma, dbeta)
}

fn f32s(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    if t.is_contiguous()
        && let Some((a, b)) = t.layout().contiguous_offsets()
    {
        return std::borrow::Cow::Borrowed(&t.storage::<f32>()[a..b]);
    }
    let c = t.to_contiguous();
    let (a, b) = c.layout().contiguous_offsets().expect("contiguous");
    std::borrow::Cow::Owned(c.storage::<f32>()[a..b].to_vec())
}

fn flex(data: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

#[derive(Debug)]
struct BatchNormBackward;

/// Input, gamma, mean, variance, epsilon, the `[n, c, rest]` view.
type State = (FlexTensor, FlexTensor, Vec<f32>, Vec<f32>, f64, (usize, usize, usize));

impl Backward<Flex, 3> for BatchNormBackward {
    type State = State;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nx, ng, nb] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, gamma, mean, var, eps, (n, c, rest)) = ops.state;
        let shape = x.layout().shape().to_vec();
        let (dx, dg, db) =
            backward(Dims { n, c, rest }, &f32s(&x), &f32s(&gamma), &mean, &var, eps, &f32s(&dy));
        if let Some(node) = nx {
            grads.register::<Flex>(node.id, flex(dx, shape));
        }
        if let Some(node) = ng {
            grads.register::<Flex>(node.id, flex(dg, vec![c]));
        }
        if let Some(node) = nb {
            grads.register::<Flex>(node.id, flex(db, vec![c]));
        }
    }
}

/// Training-mode batch norm: `(output, mean, biased variance)`, the batch statistics detached.
pub fn batch_norm_train<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> (Tensor<D>, Tensor<1>, Tensor<1>) {
    let dims = x.dims();
    if D >= 2 && x.dtype() == DType::F32 {
        let d = Dims { n: dims[0], c: dims[1], rest: dims[2..].iter().product() };
        let ad = |t: &Tensor<1>| t.clone().try_into_primitive::<Autodiff<Flex>>().ok();
        if let (Ok(xp), Some(gp), Some(bp)) =
            (x.clone().try_into_primitive::<Autodiff<Flex>>(), ad(&gamma), ad(&beta))
            && d.count() > 0
        {
            let (xs, gs) = (xp.primitive().clone(), gp.primitive().clone());
            let (y, mean, var) = forward(d, &f32s(&xs), &f32s(&gs), &f32s(bp.primitive()), epsilon);
            let y = flex(y, dims.to_vec());
            let stat = |v: &[f32]| {
                Tensor::from_primitive::<Autodiff<Flex>>(AutodiffTensor::<Flex>::new(flex(
                    v.to_vec(),
                    vec![d.c],
                )))
            };
            let (m, v) = (stat(&mean), stat(&var));
            let out = match BatchNormBackward
                .prepare::<NoCheckpointing>([xp.node(), gp.node(), bp.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((xs, gs, mean, var, epsilon, (d.n, d.c, d.rest)), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            };
            return (Tensor::from_primitive::<Autodiff<Flex>>(out), m, v);
        }
    }
    let out = burn::tensor::module::batch_norm_train(x, gamma, beta, epsilon);
    (out.output, out.mean, out.variance)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    fn close(a: Vec<f32>, b: Vec<f32>, what: &str) {
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        let err = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(err <= 1e-5 * scale, "{what}: max error {err} (scale {scale})");
    }

    fn check<const D: usize>(shape: [usize; D]) {
        let ad = Device::flex().autodiff();
        let c = shape[1];
        let x = Tensor::<D>::random(shape, Distribution::Normal(0.5, 2.0), &ad).require_grad();
        let g = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.3), &ad).require_grad();
        let b = Tensor::<1>::random([c], Distribution::Normal(0.0, 1.0), &ad).require_grad();
        let (y, m, v) = batch_norm_train(x.clone(), g.clone(), b.clone(), 1e-5);
        let theirs = burn::tensor::module::batch_norm_train(x.clone(), g.clone(), b.clone(), 1e-5);
        let r = Tensor::<D>::random(shape, Distribution::Normal(0.0, 1.0), &ad);
        let go = (y.clone() * r.clone()).sum().backward();
        let gt = (theirs.output.clone() * r).sum().backward();
        close(vals(y.without_autodiff()), vals(theirs.output.without_autodiff()), "output");
        close(vals(m.without_autodiff()), vals(theirs.mean.without_autodiff()), "mean");
        close(vals(v.without_autodiff()), vals(theirs.variance.without_autodiff()), "variance");
        close(vals(x.grad(&go).unwrap()), vals(x.grad(&gt).unwrap()), "dx");
        close(vals(g.grad(&go).unwrap()), vals(g.grad(&gt).unwrap()), "dgamma");
        close(vals(b.grad(&go).unwrap()), vals(b.grad(&gt).unwrap()), "dbeta");
    }

    #[test]
    fn matches_burn_values_and_gradients() {
        check([4, 3, 5, 6]);
        check([2, 7, 1, 1]);
        check([16, 5]);
        check([3, 4, 9]);
    }
}
