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
use burn::backend::{Autodiff, Flex};
use burn::tensor::Tensor;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::engine::cpu::{AutodiffTensor, SendPtr, f32s, flex, multiversion, plain, tracked};

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

/// The activation fused after a batch norm (and an optional residual sum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Identity,
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
}

impl Act {
    /// NaN passes through, as in PyTorch.
    #[inline(always)]
    fn apply(self, v: f32) -> f32 {
        match self {
            Act::Identity => v,
            Act::Relu => {
                if v < 0.0 {
                    0.0
                } else {
                    v
                }
            }
            Act::Relu6 => {
                if v < 0.0 {
                    0.0
                } else if v > 6.0 {
                    6.0
                } else {
                    v
                }
            }
        }
    }

    /// Whether the gradient passes at pre-activation `v` (PyTorch's `threshold_backward` and
    /// `hardtanh_backward`: strictly inside the linear range).
    #[inline(always)]
    fn passes(self, v: f32) -> bool {
        match self {
            Act::Identity => true,
            Act::Relu => v > 0.0,
            Act::Relu6 => v > 0.0 && v < 6.0,
        }
    }
}

/// Evaluates `$e` with `$f` bound to a closure of the activation's `$method` (`apply` or
/// `passes`) for the given `Act`, one monomorphic copy per activation, so that the loops in
/// `$e` vectorise.
macro_rules! with_act {
    ($act:expr, $f:ident = $method:ident => $e:expr) => {
        match $act {
            Act::Identity => {
                let $f = |v: f32| Act::Identity.$method(v);
                $e
            }
            Act::Relu => {
                let $f = |v: f32| Act::Relu.$method(v);
                $e
            }
            Act::Relu6 => {
                let $f = |v: f32| Act::Relu6.$method(v);
                $e
            }
        }
    };
}

/// f64 lanes of the per-channel sums: a fixed count, so the order of additions (and the
/// result) is the same whatever vector width the CPU has.
const L: usize = 8;

#[inline(always)]
fn lanes_sum(acc: &[f64; L]) -> f64 {
    acc.iter().sum()
}

multiversion! {
    fn sum_into(x: &[f32], acc: &mut [f64; L]) {
        let c = x.chunks_exact(L);
        let r = c.remainder();
        for v in c {
            for l in 0..L {
                acc[l] += v[l] as f64;
            }
        }
        for (l, v) in r.iter().enumerate() {
            acc[l] += *v as f64;
        }
    }
}

multiversion! {
    fn sq_dev_into(x: &[f32], mean: f64, acc: &mut [f64; L]) {
        let c = x.chunks_exact(L);
        let r = c.remainder();
        for v in c {
            for l in 0..L {
                let d = v[l] as f64 - mean;
                acc[l] += d * d;
            }
        }
        for (l, v) in r.iter().enumerate() {
            let d = *v as f64 - mean;
            acc[l] += d * d;
        }
    }
}

multiversion! {
    /// `out = act(x·a + b (+ r))`.
    fn affine_act(x: &[f32], a: f32, b: f32, act: Act, r: Option<&[f32]>, out: &mut [MaybeUninit<f32>]) {
        #[inline(always)]
        fn go(
            x: &[f32],
            a: f32,
            b: f32,
            r: Option<&[f32]>,
            out: &mut [MaybeUninit<f32>],
            f: impl Fn(f32) -> f32,
        ) {
            match r {
                Some(r) => {
                    for ((o, v), r) in out.iter_mut().zip(x).zip(r) {
                        o.write(f(*v * a + b + *r));
                    }
                }
                None => {
                    for (o, v) in out.iter_mut().zip(x) {
                        o.write(f(*v * a + b));
                    }
                }
            }
        }
        with_act!(act, f = apply => go(x, a, b, r, out, f))
    }
}

multiversion! {
    /// Gradient through the activation, `g = dy · [act passes at x·a + b (+ r)]`, its sum and its
    /// sum against `x - m`, accumulated into lanes.
    fn grad_sums(
        dy: &[f32],
        x: &[f32],
        r: Option<&[f32]>,
        abm: (f32, f32, f64),
        act: Act,
        sdy: &mut [f64; L],
        sdyx: &mut [f64; L],
    ) {
        // Monomorphic loops (activation and residual fixed) so that they vectorise.
        #[inline(always)]
        fn go<const R: bool>(
            dy: &[f32],
            x: &[f32],
            r: &[f32],
            (a, b, m): (f32, f32, f64),
            pass: impl Fn(f32) -> bool,
            sdy: &mut [f64; L],
            sdyx: &mut [f64; L],
        ) {
            // The masked gradient of a block first (an elementwise loop, which vectorises), then
            // its f32 partial sums in 16 lanes (short sums, accurate), added into the f64 lanes
            // after each block: the order of additions is fixed.
            const F: usize = 16;
            const BLOCK: usize = F * 64;
            let n = x.len();
            let mf = m as f32;
            let mut g = [0f32; BLOCK];
            let mut start = 0;
            while start < n {
                let end = (start + BLOCK).min(n);
                let len = end - start;
                let (xb, db) = (&x[start..end], &dy[start..end]);
                let gb = &mut g[..len];
                if R {
                    let rb = &r[start..end];
                    for i in 0..len {
                        gb[i] = if pass(xb[i] * a + b + rb[i]) { db[i] } else { 0.0 };
                    }
                } else {
                    for i in 0..len {
                        gb[i] = if pass(xb[i] * a + b) { db[i] } else { 0.0 };
                    }
                }
                let (mut s1, mut s2) = ([0f32; F], [0f32; F]);
                let (gc, xc) = (gb.chunks_exact(F), xb.chunks_exact(F));
                let (gr, xr) = (gc.remainder(), xc.remainder());
                for (gv, xv) in gc.zip(xc) {
                    for l in 0..F {
                        s1[l] += gv[l];
                        s2[l] += gv[l] * (xv[l] - mf);
                    }
                }
                for (l, (gv, xv)) in gr.iter().zip(xr).enumerate() {
                    s1[l] += gv;
                    s2[l] += gv * (xv - mf);
                }
                for l in 0..F {
                    sdy[l % L] += s1[l] as f64;
                    sdyx[l % L] += s2[l] as f64;
                }
                start = end;
            }
        }
        let n = x.len();
        let (dy, x) = (&dy[..n], &x[..n]);
        match r {
            None => with_act!(act, pass = passes => go::<false>(dy, x, &[], abm, pass, sdy, sdyx)),
            Some(r) => with_act!(act, pass = passes => go::<true>(dy, x, &r[..n], abm, pass, sdy, sdyx)),
        }
    }
}

multiversion! {
    /// `dx = k·g - c0 - c1·(x - m)` and, when asked, the residual's gradient `g`.
    fn grad_write(
        dy: &[f32],
        x: &[f32],
        r: Option<&[f32]>,
        abm: (f32, f32, f32),
        kc: (f32, f32, f32),
        act: Act,
        dx: &mut [f32],
        dr: Option<&mut [f32]>,
    ) {
        #[allow(clippy::too_many_arguments)]
        #[inline(always)]
        fn go<const R: bool>(
            dy: &[f32],
            x: &[f32],
            r: &[f32],
            (a, b, m): (f32, f32, f32),
            (k, c0, c1): (f32, f32, f32),
            pass: impl Fn(f32) -> bool,
            dx: &mut [f32],
            dr: &mut [f32],
        ) {
            for i in 0..x.len() {
                let pre = if R { x[i] * a + b + r[i] } else { x[i] * a + b };
                let g = if pass(pre) { dy[i] } else { 0.0 };
                dx[i] = k * g - c0 - c1 * (x[i] - m);
                if R {
                    dr[i] = g;
                }
            }
        }
        let n = x.len();
        let (dy, x, dx) = (&dy[..n], &x[..n], &mut dx[..n]);
        match (r, dr) {
            (Some(r), Some(dr)) => {
                let (r, dr) = (&r[..n], &mut dr[..n]);
                with_act!(act, pass = passes => go::<true>(dy, x, r, abm, kc, pass, dx, dr))
            }
            _ => with_act!(act, pass = passes => go::<false>(dy, x, &[], abm, kc, pass, dx, &mut [])),
        }
    }
}

/// Per-channel scale and shift of the batch-normalised output: `x·a + b`.
fn scale_shift(gamma: f32, beta: f32, mean: f64, var: f64, eps: f64) -> (f32, f32) {
    let scale = gamma as f64 / (var + eps).sqrt();
    (scale as f32, (beta as f64 - mean * scale) as f32)
}

/// Forward: output, per-channel mean and biased variance.
fn forward(
    d: Dims,
    x: &[f32],
    (gamma, beta): (&[f32], &[f32]),
    eps: f64,
    act: Act,
    res: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    // Written through `yp`, every run of every channel, before the length is set.
    let mut y: Vec<f32> = Vec::with_capacity(x.len());
    let yp = SendPtr(y.as_mut_ptr());
    let cnt = d.count() as f64;
    let stats: Vec<(f32, f32)> = (0..d.c)
        .into_par_iter()
        .map(|ch| {
            let yp = yp;
            let mut acc = [0f64; L];
            for r in d.runs(ch) {
                sum_into(&x[r], &mut acc);
            }
            let mean = lanes_sum(&acc) / cnt;
            let mut acc = [0f64; L];
            for r in d.runs(ch) {
                sq_dev_into(&x[r], mean, &mut acc);
            }
            let var = lanes_sum(&acc) / cnt;
            let (a, b) = scale_shift(gamma[ch], beta[ch], mean, var, eps);
            for r in d.runs(ch) {
                // SAFETY: channel ch's runs belong to this task only.
                let out = unsafe { yp.run_uninit(r.clone()) };
                affine_act(&x[r.clone()], a, b, act, res.map(|v| &v[r]), out);
            }
            (mean as f32, var as f32)
        })
        .collect();
    // SAFETY: the channels' runs cover the whole tensor.
    unsafe { y.set_len(x.len()) };
    let (mean, var) = stats.into_iter().unzip();
    (y, mean, var)
}

/// What the backward pass needs from the forward pass, per channel.
struct Saved<'a> {
    x: &'a [f32],
    gamma: &'a [f32],
    beta: &'a [f32],
    mean: &'a [f32],
    var: &'a [f32],
    res: Option<&'a [f32]>,
}

/// Backward: gradients for the input, gamma, beta and (when there is one) the residual.
fn backward(
    d: Dims,
    s: &Saved,
    eps: f64,
    act: Act,
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let mut dx = vec![0f32; s.x.len()];
    let mut dres = s.res.map(|_| vec![0f32; s.x.len()]);
    let dxp = SendPtr(dx.as_mut_ptr());
    let drp = dres.as_mut().map(|v| SendPtr(v.as_mut_ptr()));
    let cnt = d.count() as f64;
    let sums: Vec<(f32, f32)> = (0..d.c)
        .into_par_iter()
        .map(|ch| {
            let (dxp, drp) = (dxp, drp);
            let (m, var) = (s.mean[ch] as f64, s.var[ch] as f64);
            let inv = 1.0 / (var + eps).sqrt();
            let (a, b) = scale_shift(s.gamma[ch], s.beta[ch], m, var, eps);
            let (mut sdy, mut sdyx) = ([0f64; L], [0f64; L]);
            for r in d.runs(ch) {
                let rr = s.res.map(|v| &v[r.clone()]);
                grad_sums(&dy[r.clone()], &s.x[r], rr, (a, b, m), act, &mut sdy, &mut sdyx);
            }
            let (sdy, sdyx) = (lanes_sum(&sdy), lanes_sum(&sdyx));
            let sdyxhat = sdyx * inv;
            // dx = gamma·inv·(g - mean(g) - xhat·mean(g·xhat)), g the gradient through act
            let k = s.gamma[ch] as f64 * inv;
            let (c0, c1) = (k * sdy / cnt, k * sdyxhat / cnt * inv);
            for r in d.runs(ch) {
                // SAFETY: channel ch's runs belong to this task only.
                let out = unsafe { dxp.run(r.clone()) };
                let dr = drp.map(|p| unsafe { p.run(r.clone()) });
                let rr = s.res.map(|v| &v[r.clone()]);
                let kc = (k as f32, c0 as f32, c1 as f32);
                grad_write(&dy[r.clone()], &s.x[r], rr, (a, b, m as f32), kc, act, out, dr);
            }
            (sdyxhat as f32, sdy as f32)
        })
        .collect();
    let (dgamma, dbeta) = sums.into_iter().unzip();
    (dx, dgamma, dbeta, dres)
}

/// Inference: `act(x·a[c] + b[c] (+ r))` over `[n, c, rest]`.
fn affine_forward(d: Dims, x: &[f32], a: &[f32], b: &[f32], act: Act, res: Option<&[f32]>) -> Vec<f32> {
    // Written through `yp`, every run, before the length is set.
    let mut y: Vec<f32> = Vec::with_capacity(x.len());
    let yp = SendPtr(y.as_mut_ptr());
    (0..d.n * d.c).into_par_iter().for_each(|i| {
        let ch = i % d.c;
        let r = i * d.rest..(i + 1) * d.rest;
        // SAFETY: run i belongs to this task only.
        let out = unsafe { yp.run_uninit(r.clone()) };
        affine_act(&x[r.clone()], a[ch], b[ch], act, res.map(|v| &v[r]), out);
    });
    // SAFETY: the runs cover the whole tensor.
    unsafe { y.set_len(x.len()) };
    y
}

#[derive(Debug)]
struct BatchNormBackward;

#[derive(Debug)]
struct BatchNormResBackward;

/// Input, gamma, beta, residual, mean, variance, epsilon, activation, the `[n, c, rest]` view.
#[derive(Clone, Debug)]
struct State {
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    res: Option<FlexTensor>,
    mean: Vec<f32>,
    var: Vec<f32>,
    eps: f64,
    act: Act,
    dims: (usize, usize, usize),
}

type BnGrads = (Vec<f32>, Vec<f32>, Vec<f32>, Option<Vec<f32>>);

fn run_backward(st: State, dy: FlexTensor) -> (BnGrads, Vec<usize>, usize) {
    let (n, c, rest) = st.dims;
    let shape = st.x.layout().shape().to_vec();
    let (x, gamma, beta) = (f32s(&st.x), f32s(&st.gamma), f32s(&st.beta));
    let res = st.res.as_ref().map(f32s);
    let saved =
        Saved { x: &x, gamma: &gamma, beta: &beta, mean: &st.mean, var: &st.var, res: res.as_deref() };
    (backward(Dims { n, c, rest }, &saved, st.eps, st.act, &f32s(&dy)), shape, c)
}

impl Backward<Flex, 3> for BatchNormBackward {
    type State = State;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nx, ng, nb] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let ((dx, dg, db, _), shape, c) = run_backward(ops.state, dy);
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

impl Backward<Flex, 4> for BatchNormResBackward {
    type State = State;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nx, ng, nb, nr] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let ((dx, dg, db, dr), shape, c) = run_backward(ops.state, dy);
        if let Some(node) = nx {
            grads.register::<Flex>(node.id, flex(dx, shape.clone()));
        }
        if let Some(node) = ng {
            grads.register::<Flex>(node.id, flex(dg, vec![c]));
        }
        if let Some(node) = nb {
            grads.register::<Flex>(node.id, flex(db, vec![c]));
        }
        if let (Some(node), Some(dr)) = (nr, dr) {
            grads.register::<Flex>(node.id, flex(dr, shape));
        }
    }
}

fn nc_rest(dims: &[usize]) -> Option<Dims> {
    (dims.len() >= 2).then(|| Dims { n: dims[0], c: dims[1], rest: dims[2..].iter().product() })
}

/// Training-mode batch norm followed by `act`, with an optional residual added before the
/// activation: `(act(bn(x) + residual), batch mean, biased batch variance)`, the statistics
/// detached. On other devices, burn's `batch_norm_train` and tensor operations.
pub fn batch_norm_train<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    act: Act,
    residual: Option<Tensor<D>>,
) -> (Tensor<D>, Tensor<1>, Tensor<1>) {
    let dims = x.dims();
    if let (Some(d), Some(xp), Some(gp), Some(bp)) =
        (nc_rest(&dims), tracked(&x), tracked(&gamma), tracked(&beta))
        && d.count() > 0
    {
        // A plain residual among tracked inputs is a constant (burn's rule for mixed inputs).
        let rp = match &residual {
            None => Some(None),
            Some(r) => tracked(r).or_else(|| plain(r).map(AutodiffTensor::<Flex>::new)).map(Some),
        };
        if let Some(rp) = rp {
            let (xs, gs, bs) = (xp.primitive().clone(), gp.primitive().clone(), bp.primitive().clone());
            let rs = rp.as_ref().map(|r| r.primitive().clone());
            let (y, mean, var) = {
                let r = rs.as_ref().map(f32s);
                forward(d, &f32s(&xs), (&f32s(&gs), &f32s(&bs)), epsilon, act, r.as_deref())
            };
            let y = flex(y, dims.to_vec());
            let stat = |v: &[f32]| {
                Tensor::from_primitive::<Autodiff<Flex>>(AutodiffTensor::<Flex>::new(flex(
                    v.to_vec(),
                    vec![d.c],
                )))
            };
            let (m, v) = (stat(&mean), stat(&var));
            let state = State {
                x: xs,
                gamma: gs,
                beta: bs,
                res: rs,
                mean,
                var,
                eps: epsilon,
                act,
                dims: (d.n, d.c, d.rest),
            };
            let out = match rp {
                None => match BatchNormBackward
                    .prepare::<NoCheckpointing>([xp.node(), gp.node(), bp.node()])
                    .compute_bound()
                    .stateful()
                {
                    OpsKind::Tracked(prep) => prep.finish(state, y),
                    OpsKind::UnTracked(prep) => prep.finish(y),
                },
                Some(rp) => match BatchNormResBackward
                    .prepare::<NoCheckpointing>([xp.node(), gp.node(), bp.node(), rp.node()])
                    .compute_bound()
                    .stateful()
                {
                    OpsKind::Tracked(prep) => prep.finish(state, y),
                    OpsKind::UnTracked(prep) => prep.finish(y),
                },
            };
            return (Tensor::from_primitive::<Autodiff<Flex>>(out), m, v);
        }
    }
    let out = burn::tensor::module::batch_norm_train(x, gamma, beta, epsilon);
    (activate(add(out.output, residual), act), out.mean, out.variance)
}

/// `act(x·scale[c] + shift[c] + residual)` with per-channel `scale` and `shift` (batch norm
/// with running statistics folded in): one pass on plain flex tensors, tensor operations
/// otherwise (autodiff, other devices).
pub fn affine<const D: usize>(
    x: Tensor<D>,
    scale: Tensor<1>,
    shift: Tensor<1>,
    act: Act,
    residual: Option<Tensor<D>>,
) -> Tensor<D> {
    let dims = x.dims();
    if let (Some(d), Some(xp), Some(ap), Some(bp)) = (nc_rest(&dims), plain(&x), plain(&scale), plain(&shift))
    {
        let rp = match &residual {
            None => Some(None),
            Some(r) => plain(r).map(Some),
        };
        if let Some(rp) = rp {
            let r = rp.as_ref().map(f32s);
            let y = affine_forward(d, &f32s(&xp), &f32s(&ap), &f32s(&bp), act, r.as_deref());
            return Tensor::from_primitive::<Flex>(flex(y, dims.to_vec()));
        }
    }
    let mut shape = [1usize; D];
    shape[1] = scale.dims()[0];
    activate(add(x * scale.reshape(shape) + shift.reshape(shape), residual), act)
}

fn add<const D: usize>(x: Tensor<D>, r: Option<Tensor<D>>) -> Tensor<D> {
    match r {
        Some(r) => x + r,
        None => x,
    }
}

fn activate<const D: usize>(x: Tensor<D>, act: Act) -> Tensor<D> {
    use burn::tensor::activation::relu;
    match act {
        Act::Identity => x,
        Act::Relu => relu(x),
        // relu(x) - relu(x - 6): burn's clamp backward was slow (scalar mask_fills).
        Act::Relu6 => relu(x.clone()) - relu(x.sub_scalar(6.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    fn close(a: Vec<f32>, b: Vec<f32>, what: &str) {
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        let err = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(err <= 1e-5 * scale, "{what}: max error {err} (scale {scale})");
    }

    /// Normal values from this test's own seeded generator: burn's is process-wide, and other
    /// tests reseed it while these run (this test once drew inputs outside its tolerance).
    fn normal<const D: usize>(shape: [usize; D], mean: f32, std: f32, seed: u64, d: &Device) -> Tensor<D> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        let mut next = || {
            // splitmix64, to a uniform in (0, 1].
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 + f64::EPSILON
        };
        let n: usize = shape.iter().product();
        let vals: Vec<f32> = (0..n)
            .map(|_| {
                let (u, v) = (next(), next());
                let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
                mean + std * z as f32
            })
            .collect();
        Tensor::<D>::from_data(burn::tensor::TensorData::new(vals, shape), d)
    }

    fn check<const D: usize>(shape: [usize; D], act: Act, with_res: bool) {
        let ad = Device::flex().autodiff();
        let c = shape[1];
        let seed = shape.iter().fold(u64::from(with_res) + 10 * act as u64, |h, &s| h * 31 + s as u64);
        let x = normal(shape, 0.5, 2.0, seed, &ad).require_grad();
        let g = normal([c], 1.0, 0.3, seed + 1, &ad).require_grad();
        let b = normal([c], 0.0, 1.0, seed + 2, &ad).require_grad();
        let res = with_res.then(|| normal(shape, 0.0, 3.0, seed + 3, &ad).require_grad());
        let (y, m, v) = batch_norm_train(x.clone(), g.clone(), b.clone(), 1e-5, act, res.clone());
        // burn's batch norm, residual sum and activation as separate tensor operations.
        let theirs = burn::tensor::module::batch_norm_train(x.clone(), g.clone(), b.clone(), 1e-5);
        let their_y = activate(add(theirs.output, res.clone()), act);
        let r = normal(shape, 0.0, 1.0, seed + 4, &ad);
        let go = (y.clone() * r.clone()).sum().backward();
        let gt = (their_y.clone() * r).sum().backward();
        close(vals(y.without_autodiff()), vals(their_y.without_autodiff()), "output");
        close(vals(m.without_autodiff()), vals(theirs.mean.without_autodiff()), "mean");
        close(vals(v.without_autodiff()), vals(theirs.variance.without_autodiff()), "variance");
        close(vals(x.grad(&go).unwrap()), vals(x.grad(&gt).unwrap()), "dx");
        close(vals(g.grad(&go).unwrap()), vals(g.grad(&gt).unwrap()), "dgamma");
        close(vals(b.grad(&go).unwrap()), vals(b.grad(&gt).unwrap()), "dbeta");
        if let Some(res) = res {
            close(vals(res.grad(&go).unwrap()), vals(res.grad(&gt).unwrap()), "dresidual");
        }
    }

    #[test]
    fn matches_burn_values_and_gradients() {
        check([4, 3, 5, 6], Act::Identity, false);
        check([2, 7, 1, 1], Act::Identity, false);
        check([16, 5], Act::Identity, false);
        check([3, 4, 9], Act::Identity, false);
    }

    #[test]
    fn fused_activation_and_residual_match_separate_operations() {
        for act in [Act::Identity, Act::Relu, Act::Relu6] {
            check([4, 3, 5, 6], act, false);
            check([4, 3, 5, 6], act, true);
            check([8, 6, 2, 2], act, true);
        }
    }

    #[test]
    fn inference_affine_matches_tensor_operations() {
        let d = Device::flex();
        let shape = [3, 4, 5, 5];
        let x = Tensor::<4>::random(shape, Distribution::Normal(1.0, 4.0), &d);
        let a = Tensor::<1>::random([4], Distribution::Normal(1.0, 1.0), &d);
        let b = Tensor::<1>::random([4], Distribution::Normal(0.0, 2.0), &d);
        let r = Tensor::<4>::random(shape, Distribution::Normal(0.0, 3.0), &d);
        for act in [Act::Identity, Act::Relu, Act::Relu6] {
            for res in [None, Some(r.clone())] {
                let ours = affine(x.clone(), a.clone(), b.clone(), act, res.clone());
                let their = activate(
                    add(x.clone() * a.clone().reshape([1, 4, 1, 1]) + b.clone().reshape([1, 4, 1, 1]), res),
                    act,
                );
                close(vals(ours), vals(their), "affine");
            }
        }
    }

    #[test]
    fn nan_propagates_through_the_fused_activations() {
        for act in [Act::Relu, Act::Relu6] {
            assert!(act.apply(f32::NAN).is_nan());
            assert!(!act.passes(f32::NAN));
        }
        assert_eq!(Act::Relu6.apply(7.5), 6.0);
        assert_eq!(Act::Relu.apply(-1.0), 0.0);
    }
}
