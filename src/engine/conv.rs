//! 2-d convolution on the flex CPU backend, forward and backward, written for training speed.
//!
//! burn-flex computes a convolution's gradients through its generic rules: the input gradient
//! as a transposed convolution and the weight gradient as a convolution over transposed
//! tensors, whose matrix products have shapes the `gemm` crate runs far below its peak, and a
//! grouped (depthwise) weight gradient as one sliced convolution per group. A profile of a
//! ResNet-18 training step put most of its time there. This module replaces them, for f32
//! tensors on the flex device, with what PyTorch's CPU path does:
//!
//! - dense convolutions (groups = 1) as im2col + one `gemm` per tile of output columns,
//!   forward (`Y = W · col(X)`), weight gradient (`dW = Σ dY · col(X)ᵀ`) and input gradient
//!   (`dX = col⁻¹(Wᵀ · dY)`), the tiles spread over rayon's threads;
//! - depthwise convolutions (groups = input channels) directly, on padded input planes split
//!   into stride phases so that every kernel tap is one contiguous multiply-add or dot product.
//!
//! The tiling depends only on the shapes, never on the number of threads, and every sum is
//! taken in a fixed order, so results are bit-identical on any core count; the hot loops are
//! compiled for AVX-512 and AVX2 besides baseline x86-64 and chosen at run time
//! ([`multiversion!`]), with the same results.
//!
//! Anything else (another device, another dtype, dilation, other group counts, asymmetric
//! padding) goes to burn's own `conv2d`. Checked against burn's implementation (itself checked
//! against PyTorch by the parity fixtures) in `tests` below, values and gradients.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::Tensor;
use burn::tensor::ops::ConvOptions;
use rayon::prelude::*;

use crate::engine::cpu::{AutodiffTensor, SendPtr, add_into, f32s, flex, multiversion, plain, tracked};

/// Output columns per gemm tile: enough work per call to reach the kernel's speed, small
/// enough that an im2col tile stays in the core's caches and there are tiles for every core.
/// 256 measured best of 256/384/512/1024/2048 on the engine bench's models (AVX-512 Zen).
const TILE_COLS: usize = 256;

/// The shape of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Output channels.
    pub m: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub groups: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Geom {
    pub fn new(
        x: [usize; 4],
        wshape: [usize; 4],
        stride: [usize; 2],
        pad: [usize; 2],
        groups: usize,
    ) -> Option<Geom> {
        let [n, c, h, w] = x;
        let [m, cpg, kh, kw] = wshape;
        if groups == 0 || c != cpg * groups || m % groups != 0 || stride.contains(&0) {
            return None;
        }
        let (hp, wp) = (h + 2 * pad[0], w + 2 * pad[1]);
        if hp < kh || wp < kw {
            return None;
        }
        let oh = (hp - kh) / stride[0] + 1;
        let ow = (wp - kw) / stride[1] + 1;
        Some(Geom {
            n,
            c,
            h,
            w,
            m,
            kh,
            kw,
            sh: stride[0],
            sw: stride[1],
            ph: pad[0],
            pw: pad[1],
            groups,
            oh,
            ow,
        })
    }

    fn p(&self) -> usize {
        self.oh * self.ow
    }

    /// Rows of the im2col matrix (dense case): input channels x kernel positions.
    fn kc(&self) -> usize {
        self.c * self.kh * self.kw
    }

    fn depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.c
    }

    /// What this module computes itself; the rest goes to burn.
    fn supported(&self) -> bool {
        (self.groups == 1 || self.depthwise()) && self.n > 0 && self.m > 0 && self.p() > 0
    }

    /// Stride 1 and output as large as the input ("same" padding, odd kernels).
    fn same_stride1(&self) -> bool {
        self.sh == 1 && self.sw == 1 && self.oh == self.h && self.ow == self.w
    }

    /// A 1x1, stride-1, unpadded convolution: the input image is its own im2col matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.ph == 0 && self.pw == 0
    }

    /// Output columns `[0, n·p)` cut into tiles: several tiles of one image when an image has
    /// many output pixels, else runs of whole images (at least four tiles when n >= 4).
    fn tiles(&self) -> Vec<Tile> {
        let p = self.p();
        let mut out = Vec::new();
        if p >= TILE_COLS / 2 {
            // Whole output rows, about TILE_COLS columns a tile.
            let len = (TILE_COLS / self.ow).max(1) * self.ow;
            for n in 0..self.n {
                let mut q = 0;
                while q < p {
                    out.push(Tile { n0: n, n1: n + 1, q0: q, q1: (q + len).min(p) });
                    q += len;
                }
            }
        } else {
            let per = (TILE_COLS / p).clamp(1, self.n.div_ceil(4).max(1));
            let mut n = 0;
            while n < self.n {
                out.push(Tile { n0: n, n1: (n + per).min(self.n), q0: 0, q1: p });
                n += per;
            }
        }
        out
    }

    /// Runs of whole images for the backward pass (the input gradient of an image must be
    /// written by one tile only).
    fn image_tiles(&self) -> Vec<Tile> {
        let p = self.p();
        let per = (TILE_COLS / p).clamp(1, self.n.div_ceil(4).max(1));
        let mut out = Vec::new();
        let mut n = 0;
        while n < self.n {
            out.push(Tile { n0: n, n1: (n + per).min(self.n), q0: 0, q1: p });
            n += per;
        }
        out
    }
}

/// Output columns `q0..q1` of images `n0..n1` (whole images when there are several).
#[derive(Clone, Copy, Debug)]
struct Tile {
    n0: usize,
    n1: usize,
    q0: usize,
    q1: usize,
}

impl Tile {
    fn cols(&self) -> usize {
        (self.n1 - self.n0) * (self.q1 - self.q0)
    }
}

thread_local! {
    /// Each thread's im2col / gradient buffer, kept between calls: allocating and zeroing
    /// it per tile showed up in profiles.
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// This thread's scratch buffer (grow it with `resize`; contents are stale).
fn scratch() -> Vec<f32> {
    SCRATCH.take()
}

fn give_back(buf: Vec<f32>) {
    SCRATCH.set(buf);
}

/// The valid range `lo..hi` of output positions `o` whose input position `o·s + k - pad`
/// falls in `0..len`.
#[inline]
fn valid_range(out_len: usize, s: usize, k: usize, pad: usize, len: usize) -> (usize, usize) {
    // o·s + k >= pad  <=>  o >= ceil((pad - k) / s)
    let lo = if k >= pad { 0 } else { (pad - k).div_ceil(s) };
    // o·s + k - pad <= len - 1  <=>  o <= (len - 1 + pad - k) / s
    let hi = if len + pad > k { ((len - 1 + pad - k) / s + 1).min(out_len) } else { 0 };
    (lo.min(hi), hi)
}

/// For stride-1 convolutions whose output is as wide as the input ("same" padding), the rows
/// of output rows `oy0..oy1` for kernel tap `(ky, kx)` are one contiguous run of the input
/// plane shifted by `(ky - ph)·w + kx - pw`, except for the `kw - 1` columns a row's shift
/// pushes past its edges. Returns the run: `(dst offset, src range)` clipped to the plane, and
/// the valid rows and columns.
#[inline]
fn same_run(
    g: &Geom,
    ky: usize,
    kx: usize,
    oy0: usize,
    oy1: usize,
) -> Option<(usize, std::ops::Range<usize>, (usize, usize))> {
    let (ylo, yhi) = valid_range(g.oh, 1, ky, g.ph, g.h);
    let (ylo, yhi) = (ylo.clamp(oy0, oy1), yhi.clamp(oy0, oy1));
    if ylo >= yhi {
        return None;
    }
    let hw = (g.h * g.w) as isize;
    let src0 = (ylo + ky) as isize - g.ph as isize;
    let start = src0 * g.w as isize + kx as isize - g.pw as isize;
    let end = start + ((yhi - ylo) * g.w) as isize;
    let (lo, hi) = (start.max(0), end.min(hw));
    let dst = (ylo - oy0) * g.ow + (lo - start) as usize;
    Some((dst, lo as usize..hi as usize, (ylo, yhi)))
}

/// [`im2col`] for stride-1 "same" convolutions on whole output rows: one copy per tap and image.
fn im2col_same(g: &Geom, x: &[f32], tile: Tile, col: &mut [f32]) {
    let cols = tile.cols();
    let (hw, tp) = (g.h * g.w, tile.q1 - tile.q0);
    let (oy0, oy1) = (tile.q0 / g.ow, tile.q1 / g.ow);
    let mut row = 0;
    for ci in 0..g.c {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let (xlo, xhi) = valid_range(g.ow, 1, kx, g.pw, g.w);
                for n in tile.n0..tile.n1 {
                    let plane = &x[(n * g.c + ci) * hw..(n * g.c + ci + 1) * hw];
                    let base = row * cols + (n - tile.n0) * tp;
                    let d = &mut col[base..base + tp];
                    match same_run(g, ky, kx, oy0, oy1) {
                        None => d.fill(0.0),
                        Some((at, src, (ylo, yhi))) => {
                            d[..(ylo - oy0) * g.ow].fill(0.0);
                            d[(yhi - oy0) * g.ow..].fill(0.0);
                            d[at..at + src.len()].copy_from_slice(&plane[src]);
                            // The columns the shift carried across a row edge.
                            for oy in ylo..yhi {
                                let r = (oy - oy0) * g.ow;
                                d[r..r + xlo].fill(0.0);
                                d[r + xhi..r + g.ow].fill(0.0);
                            }
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// [`col2im`] for stride-1 "same" convolutions: one vector add per tap and image, after
/// zeroing the columns of `dcol` that fall outside the input (no row edge is crossed).
fn col2im_same(g: &Geom, dcol: &mut [f32], tile: Tile, dx: &mut [f32]) {
    let cols = tile.cols();
    let (hw, p) = (g.h * g.w, g.p());
    let mut row = 0;
    for ci in 0..g.c {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let (xlo, xhi) = valid_range(g.ow, 1, kx, g.pw, g.w);
                for n in 0..tile.n1 - tile.n0 {
                    let base = row * cols + n * p;
                    let srow = &mut dcol[base..base + p];
                    let Some((at, dst, (ylo, yhi))) = same_run(g, ky, kx, 0, g.oh) else { continue };
                    for oy in ylo..yhi {
                        let r = oy * g.ow;
                        srow[r..r + xlo].fill(0.0);
                        srow[r + xhi..r + g.ow].fill(0.0);
                    }
                    let plane = &mut dx[(n * g.c + ci) * hw..(n * g.c + ci + 1) * hw];
                    add_into(&srow[at..at + dst.len()], &mut plane[dst]);
                }
                row += 1;
            }
        }
    }
}

/// [`im2col`] for any stride and padding on whole output rows: each input plane is split
/// once into stride phases with its padding ([`Phases`]), then every tap's row is a copy of
/// `ow`-long runs (no bounds logic, no strided reads).
fn im2col_phases(g: &Geom, x: &[f32], tile: Tile, col: &mut [f32]) {
    let cols = tile.cols();
    let (hw, tp, kk) = (g.h * g.w, tile.q1 - tile.q0, g.kh * g.kw);
    let (oy0, oy1) = (tile.q0 / g.ow, tile.q1 / g.ow);
    let mut ph = Phases::new(g);
    for ci in 0..g.c {
        for n in tile.n0..tile.n1 {
            ph.load(g, &x[(n * g.c + ci) * hw..(n * g.c + ci + 1) * hw]);
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let row = ci * kk + ky * g.kw + kx;
                    let base = row * cols + (n - tile.n0) * tp;
                    let t = ph.tap(ky, kx);
                    for oy in oy0..oy1 {
                        let src = &ph.data[t + oy * ph.pcol..t + oy * ph.pcol + g.ow];
                        let d = base + (oy - oy0) * g.ow;
                        col[d..d + g.ow].copy_from_slice(src);
                    }
                }
            }
        }
    }
}

/// [`col2im`] through [`Phases`]: each tap's rows are added as `ow`-long runs into the phase
/// planes, which are then added into the input plane once.
fn col2im_phases(g: &Geom, dcol: &[f32], tile: Tile, dx: &mut [f32]) {
    let cols = tile.cols();
    let (hw, p, kk) = (g.h * g.w, g.p(), g.kh * g.kw);
    let mut ph = Phases::new(g);
    for ci in 0..g.c {
        for n in 0..tile.n1 - tile.n0 {
            ph.data.fill(0.0);
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let row = ci * kk + ky * g.kw + kx;
                    let base = row * cols + n * p;
                    let t = ph.tap(ky, kx);
                    for oy in 0..g.oh {
                        let o = t + oy * ph.pcol;
                        add_into(&dcol[base + oy * g.ow..base + (oy + 1) * g.ow], &mut ph.data[o..o + g.ow]);
                    }
                }
            }
            ph.store_add(g, &mut dx[(n * g.c + ci) * hw..(n * g.c + ci + 1) * hw]);
        }
    }
}

/// Writes the im2col rows of `tile` into `col` (`kc` rows of `tile.cols()`, row-major).
fn im2col(g: &Geom, x: &[f32], tile: Tile, col: &mut [f32]) {
    let whole_rows = tile.q0 % g.ow == 0 && tile.q1 % g.ow == 0;
    if g.same_stride1() && whole_rows {
        return im2col_same(g, x, tile, col);
    }
    if whole_rows && g.kh * g.kw > 1 {
        return im2col_phases(g, x, tile, col);
    }
    let cols = tile.cols();
    let (hw, tp) = (g.h * g.w, tile.q1 - tile.q0);
    let mut row = 0;
    for ci in 0..g.c {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let dst_row = &mut col[row * cols..(row + 1) * cols];
                let (xlo, xhi) = valid_range(g.ow, g.sw, kx, g.pw, g.w);
                for n in tile.n0..tile.n1 {
                    let plane = &x[(n * g.c + ci) * hw..(n * g.c + ci + 1) * hw];
                    let base = (n - tile.n0) * tp;
                    let mut q = tile.q0;
                    while q < tile.q1 {
                        let oy = q / g.ow;
                        let ox0 = q - oy * g.ow;
                        let ox1 = (g.ow).min(ox0 + (tile.q1 - q));
                        let d = &mut dst_row[base + q - tile.q0..base + q - tile.q0 + (ox1 - ox0)];
                        let iy = (oy * g.sh + ky) as isize - g.ph as isize;
                        if iy < 0 || iy >= g.h as isize {
                            d.fill(0.0);
                        } else {
                            let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                            let (lo, hi) = (xlo.clamp(ox0, ox1), xhi.clamp(ox0, ox1));
                            d[..lo - ox0].fill(0.0);
                            d[hi - ox0..].fill(0.0);
                            if lo < hi {
                                let start = lo * g.sw + kx - g.pw;
                                if g.sw == 1 {
                                    d[lo - ox0..hi - ox0].copy_from_slice(&src[start..start + (hi - lo)]);
                                } else {
                                    for (i, v) in d[lo - ox0..hi - ox0].iter_mut().enumerate() {
                                        *v = src[start + i * g.sw];
                                    }
                                }
                            }
                        }
                        q += ox1 - ox0;
                    }
                }
                row += 1;
            }
        }
    }
}

/// Adds the im2col-shaped gradient `dcol` (whole images `tile.n0..n1`) into `dx`, which holds
/// those images only.
fn col2im(g: &Geom, dcol: &mut [f32], tile: Tile, dx: &mut [f32]) {
    if g.same_stride1() {
        return col2im_same(g, dcol, tile, dx);
    }
    if g.kh * g.kw > 1 {
        return col2im_phases(g, dcol, tile, dx);
    }
    let cols = tile.cols();
    let (hw, p) = (g.h * g.w, g.p());
    let mut row = 0;
    for ci in 0..g.c {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let src_row = &dcol[row * cols..(row + 1) * cols];
                let (lo, hi) = valid_range(g.ow, g.sw, kx, g.pw, g.w);
                if lo < hi {
                    for n in 0..tile.n1 - tile.n0 {
                        let plane = &mut dx[(n * g.c + ci) * hw..(n * g.c + ci + 1) * hw];
                        for oy in 0..g.oh {
                            let iy = (oy * g.sh + ky) as isize - g.ph as isize;
                            if iy < 0 || iy >= g.h as isize {
                                continue;
                            }
                            let s = &src_row[n * p + oy * g.ow..n * p + oy * g.ow + g.ow];
                            let d = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                            let start = lo * g.sw + kx - g.pw;
                            if g.sw == 1 {
                                for (a, b) in d[start..start + (hi - lo)].iter_mut().zip(&s[lo..hi]) {
                                    *a += *b;
                                }
                            } else {
                                for (i, b) in s[lo..hi].iter().enumerate() {
                                    d[start + i * g.sw] += *b;
                                }
                            }
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// The longest reduction one `gemm` call gets: no longer than the shortest k-block `gemm`
/// 0.19 ever picks (its `kernel_params` take at least `min(k, 512)`), so that gemm never
/// splits a call's reduction itself, at a point it derives from the L1 cache it detects.
const K_CHUNK: usize = 512;

/// Output elements up to which `gemm` 0.19 takes its "horizontal" kernels when both operands
/// are contiguous along the reduction: dot products in vector lanes (8 with AVX2, 16 with
/// AVX-512) summed at the end, an order that follows the vector width.
const GEMM_HORIZONTAL_MAX: usize = 16 * 16;

/// `dst[m×n] (= or +=) lhs[m×k] · rhs[k×n]`, each given by its row and column strides.
///
/// Every output element's sum has an order fixed by the shape alone, the same on every CPU
/// with FMA: the reduction is cut into `ceil(k / K_CHUNK)` equal chunks (a function of `k`
/// only), each a call of `gemm` whose main path keeps one accumulator per output element and
/// adds the chunk's products to it in order by fused multiply-adds, whatever its micro-kernel's
/// register tile (AVX-512 or AVX2); the chunks are added into `dst` in order. Shapes `gemm`
/// would send to its other paths (horizontal dot-product kernels, matrix-vector and k <= 2
/// kernels, whose order follows the vector width) are computed by [`small_matmul`] instead.
/// Pinned by `tests::matmul_has_a_fixed_summation_order`.
#[allow(clippy::too_many_arguments)]
fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    (dst_rs, dst_cs): (isize, isize),
    accumulate: bool,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (isize, isize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (isize, isize),
) {
    if m == 0 || n == 0 {
        return;
    }
    let k_contiguous = lhs_cs == 1 && rhs_rs == 1;
    if m <= 1 || n <= 1 || k <= 2 || (k_contiguous && m * n <= GEMM_HORIZONTAL_MAX) {
        return small_matmul(
            (m, n, k),
            dst,
            (dst_rs, dst_cs),
            accumulate,
            lhs,
            (lhs_rs, lhs_cs),
            rhs,
            (rhs_rs, rhs_cs),
        );
    }
    let step = k.div_ceil(k.div_ceil(K_CHUNK));
    let mut k0 = 0;
    while k0 < k {
        let kb = step.min(k - k0);
        let acc = accumulate || k0 > 0;
        // SAFETY: callers pass pointers to buffers that hold every element the strides address,
        // and `dst` does not alias `lhs` or `rhs`; the chunk's operands lie inside them.
        unsafe {
            gemm::gemm(
                m,
                n,
                kb,
                dst,
                dst_cs,
                dst_rs,
                acc,
                lhs.offset(k0 as isize * lhs_cs),
                lhs_cs,
                lhs_rs,
                rhs.offset(k0 as isize * rhs_rs),
                rhs_cs,
                rhs_rs,
                if acc { 1.0 } else { 0.0 },
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
        k0 += kb;
    }
}

/// [`matmul`] for the shapes `gemm` would not take through its main path (few outputs, a
/// single row or column, k <= 2): each output a sum in a fixed order, operands contiguous
/// along the reduction as a [`dot_acc`] (16 lanes, added up in order), others one product
/// at a time.
#[allow(clippy::too_many_arguments)]
fn small_matmul(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    (dst_rs, dst_cs): (isize, isize),
    accumulate: bool,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (isize, isize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (isize, isize),
) {
    for i in 0..m as isize {
        for j in 0..n as isize {
            // SAFETY: as for `matmul`: every addressed element lies inside its buffer.
            unsafe {
                let a = lhs.offset(i * lhs_rs);
                let b = rhs.offset(j * rhs_cs);
                let s = if lhs_cs == 1 && rhs_rs == 1 {
                    let mut lanes = [0f32; LANES];
                    dot_acc(std::slice::from_raw_parts(a, k), std::slice::from_raw_parts(b, k), &mut lanes);
                    lanes.iter().sum::<f32>()
                } else {
                    let mut s = 0f32;
                    for p in 0..k as isize {
                        s += *a.offset(p * lhs_cs) * *b.offset(p * rhs_rs);
                    }
                    s
                };
                let d = dst.offset(i * dst_rs + j * dst_cs);
                *d = if accumulate { *d + s } else { s };
            }
        }
    }
}

/// Forward pass: `[n, c, h, w] ⊛ [m, c/groups, kh, kw] (+ bias) -> [n, m, oh, ow]`.
pub fn forward(g: &Geom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let p = g.p();
    let len = g.n * g.m * p;
    let mut out: Vec<f32>;
    if g.depthwise() {
        out = vec![0f32; len];
        depthwise_forward(g, x, w, &mut out);
    } else {
        // Every element is written below (each tile's gemm, without reading, or its scatter)
        // before the length is set: no zeroing pass.
        out = Vec::with_capacity(len);
        let kc = g.kc();
        let optr = SendPtr(out.as_mut_ptr());
        let tiles = g.tiles();
        tiles.par_iter().for_each(|t| {
            let mut buf = scratch();
            let cols = t.cols();
            let single = t.n1 - t.n0 == 1;
            // Direct: the tile's columns are contiguous in the image's output rows.
            let dst = if single { optr.at(t.n0 * g.m * p + t.q0) } else { std::ptr::null_mut() };
            let need =
                if g.pointwise() && single { 0 } else { kc * cols } + if single { 0 } else { g.m * cols };
            if buf.len() < need {
                buf.resize(need, 0.0);
            }
            let (colbuf, tmp) = buf.split_at_mut(if g.pointwise() && single { 0 } else { kc * cols });
            let (rhs, rhs_rs) = if g.pointwise() && single {
                (x[t.n0 * g.c * p + t.q0..].as_ptr(), p as isize)
            } else {
                im2col(g, x, *t, colbuf);
                (colbuf.as_ptr(), cols as isize)
            };
            if single {
                matmul(
                    (g.m, cols, kc),
                    dst,
                    (p as isize, 1),
                    false,
                    w.as_ptr(),
                    (kc as isize, 1),
                    rhs,
                    (rhs_rs, 1),
                );
            } else {
                matmul(
                    (g.m, cols, kc),
                    tmp.as_mut_ptr(),
                    (cols as isize, 1),
                    false,
                    w.as_ptr(),
                    (kc as isize, 1),
                    rhs,
                    (rhs_rs, 1),
                );
                for i in 0..t.n1 - t.n0 {
                    for mo in 0..g.m {
                        let src = &tmp[mo * cols + i * p..mo * cols + (i + 1) * p];
                        // SAFETY: image t.n0 + i belongs to this tile only; `out` has room for
                        // it (written through the pointer, the buffer is not yet initialised).
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                src.as_ptr(),
                                optr.at(((t.n0 + i) * g.m + mo) * p),
                                p,
                            )
                        };
                    }
                }
            }
            give_back(buf);
        });
        // SAFETY: the tiles cover every output column of every image and channel.
        unsafe { out.set_len(len) };
    }
    if let Some(b) = bias {
        out.par_chunks_mut(p).enumerate().for_each(|(i, plane)| {
            let v = b[i % g.m];
            plane.iter_mut().for_each(|o| *o += v);
        });
    }
    out
}

/// Gradients of a convolution, each computed only when asked for.
pub struct Grads {
    pub x: Option<Vec<f32>>,
    pub w: Option<Vec<f32>>,
    pub bias: Option<Vec<f32>>,
}

/// Backward pass from the output gradient `dy` (`[n, m, oh, ow]`).
pub fn backward(g: &Geom, x: &[f32], w: &[f32], dy: &[f32], need: [bool; 3]) -> Grads {
    let [need_x, need_w, need_b] = need;
    let p = g.p();
    let bias = need_b.then(|| {
        (0..g.m)
            .into_par_iter()
            .map(|mo| {
                let mut s = 0f64;
                for n in 0..g.n {
                    s +=
                        dy[(n * g.m + mo) * p..(n * g.m + mo + 1) * p].iter().map(|v| *v as f64).sum::<f64>();
                }
                s as f32
            })
            .collect()
    });
    if g.depthwise() {
        let dx = need_x.then(|| depthwise_dx(g, w, dy));
        let dw = need_w.then(|| depthwise_dw(g, x, dy));
        return Grads { x: dx, w: dw, bias };
    }
    if !need_x && !need_w {
        return Grads { x: None, w: None, bias };
    }
    let kc = g.kc();
    let tiles = g.image_tiles();
    // Wᵀ ([kc, m]), so that gemm reads it along its reduction dimension without packing it
    // again for every tile.
    let wt = if need_x { transpose(w, g.m, kc) } else { Vec::new() };
    let mut dx = if need_x { vec![0f32; g.n * g.c * g.h * g.w] } else { Vec::new() };
    let dxptr = SendPtr(dx.as_mut_ptr());
    // Weight-gradient partial sums: tiles are grouped into at most GROUPS contiguous runs, each
    // summed in order, then the runs are added in order: the same bits on any thread count.
    const GROUPS: usize = 8;
    let per_group = tiles.len().div_ceil(GROUPS);
    let partials: Vec<Vec<f32>> = tiles
        .par_chunks(per_group)
        .map(|run| {
            let mut dw = if need_w { vec![0f32; g.m * kc] } else { Vec::new() };
            let mut buf = scratch();
            for t in run {
                let cols = t.cols();
                let single = t.n1 - t.n0 == 1;
                let direct = g.pointwise() && single;
                let need_len = (if direct { 0 } else { 2 * kc * cols }) + if single { 0 } else { g.m * cols };
                if buf.len() < need_len {
                    buf.resize(need_len, 0.0);
                }
                let (colbuf, rest) = buf.split_at_mut(if direct { 0 } else { kc * cols });
                let (dcol, dyt) = rest.split_at_mut(if direct { 0 } else { kc * cols });
                // The tile's output gradient as an [m, cols] matrix.
                let dy_mat: *const f32 = if single {
                    dy[t.n0 * g.m * p..].as_ptr()
                } else {
                    for i in 0..t.n1 - t.n0 {
                        for mo in 0..g.m {
                            dyt[mo * cols + i * p..mo * cols + (i + 1) * p].copy_from_slice(
                                &dy[((t.n0 + i) * g.m + mo) * p..((t.n0 + i) * g.m + mo + 1) * p],
                            );
                        }
                    }
                    dyt.as_ptr()
                };
                let dy_rs = if single { p as isize } else { cols as isize };
                if need_w {
                    let (col, col_rs) = if direct {
                        (x[t.n0 * g.c * p..].as_ptr(), p as isize)
                    } else {
                        im2col(g, x, *t, colbuf);
                        (colbuf.as_ptr() as *const f32, cols as isize)
                    };
                    // dW[m, kc] += dY[m, cols] · colᵀ[cols, kc], accumulated transposed (dWᵀ,
                    // [kc, m]) so that gemm packs the small dY tile, not the im2col matrix.
                    matmul(
                        (g.m, kc, cols),
                        dw.as_mut_ptr(),
                        (1, g.m as isize),
                        true,
                        dy_mat,
                        (dy_rs, 1),
                        col,
                        (1, col_rs),
                    );
                }
                if need_x {
                    let img = g.c * g.h * g.w;
                    if direct {
                        // dX[n] = Wᵀ[c, m] · dY[m, p]
                        let d = dxptr.at(t.n0 * img);
                        matmul(
                            (kc, cols, g.m),
                            d,
                            (p as isize, 1),
                            false,
                            wt.as_ptr(),
                            (g.m as isize, 1),
                            dy_mat,
                            (dy_rs, 1),
                        );
                    } else {
                        matmul(
                            (kc, cols, g.m),
                            dcol.as_mut_ptr(),
                            (cols as isize, 1),
                            false,
                            wt.as_ptr(),
                            (g.m as isize, 1),
                            dy_mat,
                            (dy_rs, 1),
                        );
                        // SAFETY: images t.n0..t.n1 belong to this tile only.
                        let d = unsafe {
                            std::slice::from_raw_parts_mut(dxptr.at(t.n0 * img), (t.n1 - t.n0) * img)
                        };
                        col2im(g, dcol, *t, d);
                    }
                }
            }
            give_back(buf);
            dw
        })
        .collect();
    let dw = need_w.then(|| {
        let mut it = partials.into_iter();
        let mut acc = it.next().unwrap_or_default();
        let rest: Vec<Vec<f32>> = it.collect();
        // Each element sums the runs in order (deterministic), blocks in parallel.
        acc.par_chunks_mut(4096).enumerate().for_each(|(i, a)| {
            for part in &rest {
                add_into(&part[i * 4096..i * 4096 + a.len()], a);
            }
        });
        transpose(&acc, kc, g.m)
    });
    Grads { x: need_x.then_some(dx), w: dw, bias }
}

/// `[rows, cols]` row-major to `[cols, rows]` row-major, in cache-sized blocks, the blocks
/// of output rows spread over threads.
fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const B: usize = 16;
    let mut out = vec![0f32; rows * cols];
    out.par_chunks_mut(B * rows).enumerate().for_each(|(cb, o)| {
        transpose_block(a, rows, cols, cb * B, o);
    });
    out
}

multiversion! {
    fn transpose_block(a: &[f32], rows: usize, cols: usize, c0: usize, o: &mut [f32]) {
        const B: usize = 16;
        let c1 = (c0 + B).min(cols);
        for r0 in (0..rows).step_by(B) {
            let r1 = (r0 + B).min(rows);
            for c in c0..c1 {
                let dst = &mut o[(c - c0) * rows + r0..(c - c0) * rows + r1];
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = a[(r0 + i) * cols + c];
                }
            }
        }
    }
}

/// A zero-padded input plane split into `sh x sw` phases, so that every kernel tap of a
/// strided depthwise convolution reads one contiguous run. Phase `(ry, rx)` holds padded rows
/// `ry, ry + sh, ...` and columns `rx, rx + sw, ...`, `prow x pcol` of them.
///
/// Outputs are computed "wide", `oh` rows of `pcol` columns (the columns past `ow` are
/// discarded), so that tap `(ky, kx)` is a single run: `wide[j] += w · phase[off + j]` for
/// `j < (oh - 1)·pcol + ow`, with `off = (ky / sh)·pcol + kx / sw`.
struct Phases {
    sh: usize,
    sw: usize,
    prow: usize,
    pcol: usize,
    data: Vec<f32>,
}

impl Phases {
    fn new(g: &Geom) -> Phases {
        let prow = g.oh + (g.kh - 1) / g.sh;
        let pcol = g.ow + (g.kw - 1) / g.sw;
        Phases { sh: g.sh, sw: g.sw, prow, pcol, data: vec![0f32; g.sh * g.sw * prow * pcol] }
    }

    /// Length of a tap's run.
    fn run_len(&self, g: &Geom) -> usize {
        (g.oh - 1) * self.pcol + g.ow
    }

    /// Where tap `(ky, kx)` starts in `data`.
    fn tap(&self, ky: usize, kx: usize) -> usize {
        let phase = (ky % self.sh) * self.sw + kx % self.sw;
        (phase * self.prow + ky / self.sh) * self.pcol + kx / self.sw
    }

    fn load(&mut self, g: &Geom, plane: &[f32]) {
        self.data.fill(0.0);
        let mut data = std::mem::take(&mut self.data);
        if self.sh == 1 && self.sw == 1 {
            // One phase: plain row copies (the common depthwise case, worth its own loop).
            for iy in 0..g.h.min(self.prow.saturating_sub(g.ph)) {
                let o = (iy + g.ph) * self.pcol + g.pw;
                let n = g.w.min(self.pcol.saturating_sub(g.pw));
                data[o..o + n].copy_from_slice(&plane[iy * g.w..iy * g.w + n]);
            }
        } else {
            self.for_each_run(g, |prow, irow| strided_copy(&plane[irow.0], irow.1, &mut data[prow]));
        }
        self.data = data;
    }

    /// Adds the values at input positions into an `h x w` plane.
    fn store_add(&self, g: &Geom, plane: &mut [f32]) {
        self.for_each_run(g, |prow, irow| strided_add(&self.data[prow], &mut plane[irow.0], irow.1));
    }

    /// Calls `f(range in data, (range in the h x w plane, step))` for every run of input
    /// positions the kernel can reach: one per input row and column phase, the plane's
    /// positions taken every `sw`-th.
    fn for_each_run(
        &self,
        g: &Geom,
        mut f: impl FnMut(std::ops::Range<usize>, (std::ops::Range<usize>, usize)),
    ) {
        for iy in 0..g.h {
            let py = iy + g.ph;
            let (ry, yq) = (py % self.sh, py / self.sh);
            if yq >= self.prow {
                continue;
            }
            for rx in 0..self.sw {
                // Input columns ix with (ix + pw) % sw == rx, stored from xq = (ix + pw) / sw on.
                let ix0 = (rx + self.sw - g.pw % self.sw) % self.sw;
                if ix0 >= g.w {
                    continue;
                }
                let xq0 = (ix0 + g.pw) / self.sw;
                if xq0 >= self.pcol {
                    continue;
                }
                let count = (g.w - ix0).div_ceil(self.sw).min(self.pcol - xq0);
                let o = ((ry * self.sw + rx) * self.prow + yq) * self.pcol + xq0;
                let start = iy * g.w + ix0;
                f(o..o + count, (start..start + (count - 1) * self.sw + 1, self.sw));
            }
        }
    }
}

multiversion! {
    fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        for (y, x) in y.iter_mut().zip(x) {
            *y += a * *x;
        }
    }
}

multiversion! {
    /// `dst[i] = src[i·step]`; stride 2 (the common case) in blocks of 16 that compile to
    /// vector shuffles.
    fn strided_copy(src: &[f32], step: usize, dst: &mut [f32]) {
        if step == 2 {
            let (dc, sc) = (dst.chunks_exact_mut(16), src.chunks_exact(32));
            let done = dc.len().min(sc.len()) * 16;
            for (d, s) in dc.zip(sc) {
                for l in 0..16 {
                    d[l] = s[2 * l];
                }
            }
            for (d, v) in dst[done..].iter_mut().zip(src[2 * done..].iter().step_by(2)) {
                *d = *v;
            }
        } else {
            for (d, v) in dst.iter_mut().zip(src.iter().step_by(step)) {
                *d = *v;
            }
        }
    }
}

multiversion! {
    /// `dst[i·step] += src[i]`.
    fn strided_add(src: &[f32], dst: &mut [f32], step: usize) {
        for (d, v) in dst.iter_mut().step_by(step).zip(src) {
            *d += *v;
        }
    }
}

/// Lanes of the partial sums in [`dot_acc`]: a fixed count, so the summation order (and the
/// result) does not depend on the vector width the CPU offers.
const LANES: usize = 16;

multiversion! {
    fn dot_acc(a: &[f32], b: &[f32], acc: &mut [f32; LANES]) {
        let n = a.len().min(b.len());
        let (ca, cb) = (a[..n].chunks_exact(LANES), b[..n].chunks_exact(LANES));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for l in 0..LANES {
                acc[l] += x[l] * y[l];
            }
        }
        for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
            acc[l] += x * y;
        }
    }
}

/// Per-task buffers of the depthwise kernels: the phases and one wide plane.
fn depthwise_bufs(g: &Geom) -> (Phases, Vec<f32>) {
    let ph = Phases::new(g);
    let wide = vec![0f32; g.oh * ph.pcol];
    (ph, wide)
}

fn depthwise_forward(g: &Geom, x: &[f32], w: &[f32], out: &mut [f32]) {
    let (p, hw, kk, mult) = (g.p(), g.h * g.w, g.kh * g.kw, g.m / g.c);
    out.par_chunks_mut(p * mult).enumerate().for_each_init(
        || depthwise_bufs(g),
        |(ph, wide), (idx, o)| {
            // One input plane feeds `mult` output planes.
            let (n, ci) = (idx / g.c, idx % g.c);
            ph.load(g, &x[(n * g.c + ci) * hw..(n * g.c + ci + 1) * hw]);
            let len = ph.run_len(g);
            for (j, o) in o.chunks_mut(p).enumerate() {
                let wk = &w[(ci * mult + j) * kk..(ci * mult + j + 1) * kk];
                wide.fill(0.0);
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let t = ph.tap(ky, kx);
                        axpy(wk[ky * g.kw + kx], &ph.data[t..t + len], &mut wide[..len]);
                    }
                }
                for oy in 0..g.oh {
                    o[oy * g.ow..(oy + 1) * g.ow].copy_from_slice(&wide[oy * ph.pcol..oy * ph.pcol + g.ow]);
                }
            }
        },
    );
}

/// `dy`'s plane in the wide layout, zeros past `ow`.
fn widen(g: &Geom, pcol: usize, dplane: &[f32], wide: &mut [f32]) {
    wide.fill(0.0);
    for oy in 0..g.oh {
        wide[oy * pcol..oy * pcol + g.ow].copy_from_slice(&dplane[oy * g.ow..(oy + 1) * g.ow]);
    }
}

fn depthwise_dx(g: &Geom, w: &[f32], dy: &[f32]) -> Vec<f32> {
    let (p, hw, kk, mult) = (g.p(), g.h * g.w, g.kh * g.kw, g.m / g.c);
    let mut dx = vec![0f32; g.n * g.c * hw];
    dx.par_chunks_mut(hw).enumerate().for_each_init(
        || depthwise_bufs(g),
        |(ph, wide), (idx, d)| {
            let (n, ci) = (idx / g.c, idx % g.c);
            ph.data.fill(0.0);
            let len = ph.run_len(g);
            for mo in ci * mult..(ci + 1) * mult {
                widen(g, ph.pcol, &dy[(n * g.m + mo) * p..(n * g.m + mo + 1) * p], wide);
                let wk = &w[mo * kk..(mo + 1) * kk];
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let t = ph.tap(ky, kx);
                        axpy(wk[ky * g.kw + kx], &wide[..len], &mut ph.data[t..t + len]);
                    }
                }
            }
            ph.store_add(g, d);
        },
    );
    dx
}

fn depthwise_dw(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (p, hw, kk, mult) = (g.p(), g.h * g.w, g.kh * g.kw, g.m / g.c);
    let mut dw = vec![0f32; g.m * kk];
    dw.par_chunks_mut(kk * mult).enumerate().for_each_init(
        || depthwise_bufs(g),
        |(ph, wide), (ci, acc)| {
            let mut lanes = vec![[0f32; LANES]; kk * mult];
            let len = ph.run_len(g);
            for n in 0..g.n {
                ph.load(g, &x[(n * g.c + ci) * hw..(n * g.c + ci + 1) * hw]);
                for j in 0..mult {
                    let mo = ci * mult + j;
                    widen(g, ph.pcol, &dy[(n * g.m + mo) * p..(n * g.m + mo + 1) * p], wide);
                    for ky in 0..g.kh {
                        for kx in 0..g.kw {
                            let t = ph.tap(ky, kx);
                            dot_acc(&wide[..len], &ph.data[t..t + len], &mut lanes[j * kk + ky * g.kw + kx]);
                        }
                    }
                }
            }
            for (a, l) in acc.iter_mut().zip(&lanes) {
                *a = l.iter().sum();
            }
        },
    );
    dw
}

// ---------------------------------------------------------------------------------------------
// burn glue

fn forward_flex(g: &Geom, x: &FlexTensor, w: &FlexTensor, b: Option<&FlexTensor>) -> FlexTensor {
    let xs = f32s(x);
    let ws = f32s(w);
    let bs = b.map(|b| f32s(b));
    let y = forward(g, &xs, &ws, bs.as_deref());
    flex(y, vec![g.n, g.m, g.oh, g.ow])
}

#[derive(Debug)]
struct ConvBackward;

#[derive(Debug)]
struct ConvBiasBackward;

type State = (FlexTensor, FlexTensor, Geom);

fn run_backward(parents: [bool; 3], (x, w, g): State, dy: FlexTensor) -> Grads {
    let xs = f32s(&x);
    let ws = f32s(&w);
    let dys = f32s(&dy);
    backward(&g, &xs, &ws, &dys, parents)
}

impl Backward<Flex, 2> for ConvBackward {
    type State = State;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nx, nw] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let g = ops.state.2;
        let r = run_backward([nx.is_some(), nw.is_some(), false], ops.state, dy);
        if let (Some(node), Some(v)) = (nx, r.x) {
            grads.register::<Flex>(node.id, flex(v, vec![g.n, g.c, g.h, g.w]));
        }
        if let (Some(node), Some(v)) = (nw, r.w) {
            grads.register::<Flex>(node.id, flex(v, vec![g.m, g.c / g.groups, g.kh, g.kw]));
        }
    }
}

impl Backward<Flex, 3> for ConvBiasBackward {
    type State = State;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nx, nw, nb] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let g = ops.state.2;
        let r = run_backward([nx.is_some(), nw.is_some(), nb.is_some()], ops.state, dy);
        if let (Some(node), Some(v)) = (nx, r.x) {
            grads.register::<Flex>(node.id, flex(v, vec![g.n, g.c, g.h, g.w]));
        }
        if let (Some(node), Some(v)) = (nw, r.w) {
            grads.register::<Flex>(node.id, flex(v, vec![g.m, g.c / g.groups, g.kh, g.kw]));
        }
        if let (Some(node), Some(v)) = (nb, r.bias) {
            grads.register::<Flex>(node.id, flex(v, vec![g.m]));
        }
    }
}

fn autodiff_conv(
    g: &Geom,
    x: AutodiffTensor<Flex>,
    w: AutodiffTensor<Flex>,
    b: Option<AutodiffTensor<Flex>>,
) -> AutodiffTensor<Flex> {
    let (xp, wp) = (x.primitive().clone(), w.primitive().clone());
    match b {
        None => {
            let y = forward_flex(g, &xp, &wp, None);
            match ConvBackward.prepare::<NoCheckpointing>([x.node(), w.node()]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => prep.finish((xp, wp, *g), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            }
        }
        Some(b) => {
            let y = forward_flex(g, &xp, &wp, Some(b.primitive()));
            match ConvBiasBackward
                .prepare::<NoCheckpointing>([x.node(), w.node(), b.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((xp, wp, *g), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            }
        }
    }
}

/// A float tensor's flex primitive: plain, or tracked by autodiff.
enum Prim {
    Plain(FlexTensor),
    Tracked(AutodiffTensor<Flex>),
}

fn prim<const D: usize>(t: &Tensor<D>) -> Option<Prim> {
    plain(t).map(Prim::Plain).or_else(|| tracked(t).map(Prim::Tracked))
}

fn as_tracked(p: Prim) -> AutodiffTensor<Flex> {
    match p {
        Prim::Tracked(t) => t,
        // A constant among tracked inputs (burn's rule for mixed inputs).
        Prim::Plain(t) => AutodiffTensor::new(t),
    }
}

/// `conv2d` with symmetric padding and no dilation: this module's kernels on the flex device
/// (f32, groups 1 or depthwise), burn's `conv2d` otherwise.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: [usize; 2],
    padding: [usize; 2],
    groups: usize,
) -> Tensor<4> {
    if let Some(g) = Geom::new(x.dims(), weight.dims(), stride, padding, groups).filter(Geom::supported)
        && let (Some(xp), Some(wp)) = (prim(&x), prim(&weight))
    {
        let bp = match &bias {
            Some(b) => prim(b).map(Some),
            None => Some(None),
        };
        if let Some(bp) = bp {
            let any_tracked = matches!(xp, Prim::Tracked(_))
                || matches!(wp, Prim::Tracked(_))
                || matches!(bp, Some(Prim::Tracked(_)));
            if !any_tracked {
                let (Prim::Plain(xp), Prim::Plain(wp)) = (xp, wp) else { unreachable!() };
                let bp = bp.map(|b| match b {
                    Prim::Plain(b) => b,
                    Prim::Tracked(_) => unreachable!(),
                });
                return Tensor::from_primitive::<Flex>(forward_flex(&g, &xp, &wp, bp.as_ref()));
            }
            let y = autodiff_conv(&g, as_tracked(xp), as_tracked(wp), bp.map(as_tracked));
            return Tensor::from_primitive::<Autodiff<Flex>>(y);
        }
    }
    burn::tensor::module::conv2d(x, weight, bias, ConvOptions::new(stride, padding, [1, 1], groups))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// Our conv and burn's on the same random inputs: outputs and all three gradients.
    fn check(xs: [usize; 4], ws: [usize; 4], stride: [usize; 2], pad: [usize; 2], groups: usize, bias: bool) {
        let ad = Device::flex().autodiff();
        let x = Tensor::<4>::random(xs, Distribution::Normal(0.0, 1.0), &ad).require_grad();
        let w = Tensor::<4>::random(ws, Distribution::Normal(0.0, 0.5), &ad).require_grad();
        let b =
            bias.then(|| Tensor::<1>::random([ws[0]], Distribution::Normal(0.0, 1.0), &ad).require_grad());
        let g = Geom::new(xs, ws, stride, pad, groups).unwrap();
        assert!(g.supported(), "{g:?}");
        let ours = conv2d(x.clone(), w.clone(), b.clone(), stride, pad, groups);
        let theirs = burn::tensor::module::conv2d(
            x.clone(),
            w.clone(),
            b.clone(),
            ConvOptions::new(stride, pad, [1, 1], groups),
        );
        assert_eq!(ours.dims(), theirs.dims());
        // A weighted sum so that every output element gets a distinct gradient.
        let r = Tensor::<4>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &ad);
        let go = (ours.clone() * r.clone()).sum().backward();
        let gt = (theirs.clone() * r).sum().backward();
        let close = |a: Tensor<4>, b: Tensor<4>, what: &str| {
            let a: Vec<f32> = a.into_data().try_to_vec::<f32>().unwrap();
            let b: Vec<f32> = b.into_data().try_to_vec::<f32>().unwrap();
            let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
            let err = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(err <= 2e-5 * scale, "{what}: max error {err} (scale {scale}) for {g:?}");
        };
        close(ours.without_autodiff(), theirs.without_autodiff(), "output");
        close(x.grad(&go).unwrap(), x.grad(&gt).unwrap(), "dx");
        close(w.grad(&go).unwrap(), w.grad(&gt).unwrap(), "dw");
        if let Some(b) = b {
            let (a, t) = (b.grad(&go).unwrap(), b.grad(&gt).unwrap());
            close(a.reshape([1, 1, 1, ws[0]]), t.reshape([1, 1, 1, ws[0]]), "dbias");
        }
    }

    #[test]
    fn dense_matches_burn() {
        // 3x3 same, strided, 1x1 pointwise and strided, 7x7 stem, patchify, odd sizes.
        check([2, 3, 8, 8], [4, 3, 3, 3], [1, 1], [1, 1], 1, false);
        check([3, 5, 9, 7], [6, 5, 3, 3], [2, 2], [1, 1], 1, true);
        check([2, 8, 6, 6], [5, 8, 1, 1], [1, 1], [0, 0], 1, false);
        check([2, 8, 7, 7], [5, 8, 1, 1], [2, 2], [0, 0], 1, false);
        check([1, 3, 20, 20], [4, 3, 7, 7], [2, 2], [3, 3], 1, false);
        check([2, 3, 16, 16], [8, 3, 4, 4], [4, 4], [0, 0], 1, true);
        check([2, 2, 5, 11], [3, 2, 3, 5], [1, 2], [1, 2], 1, false);
    }

    #[test]
    fn dense_matches_burn_across_tiles() {
        // Many output pixels per image (tiles within an image) and many small images (tiles
        // of several images, with a ragged last tile).
        check([2, 4, 40, 40], [3, 4, 3, 3], [1, 1], [1, 1], 1, false);
        check([23, 6, 4, 4], [5, 6, 3, 3], [1, 1], [1, 1], 1, true);
        check([9, 16, 2, 2], [8, 16, 1, 1], [1, 1], [0, 0], 1, false);
        // Stride-1 "same" convolutions (the contiguous-run im2col/col2im), with tiles that
        // split an image mid-row (45x45 = 2025 outputs, tiles of 1013), and a 5x5 kernel.
        check([1, 2, 45, 45], [3, 2, 3, 3], [1, 1], [1, 1], 1, false);
        check([2, 3, 9, 11], [4, 3, 5, 5], [1, 1], [2, 2], 1, true);
        check([3, 2, 1, 6], [2, 2, 3, 3], [1, 1], [1, 1], 1, false);
    }

    #[test]
    fn depthwise_matches_burn() {
        check([2, 6, 9, 9], [6, 1, 3, 3], [1, 1], [1, 1], 6, false);
        check([2, 6, 9, 8], [6, 1, 3, 3], [2, 2], [1, 1], 6, true);
        check([2, 3, 7, 7], [6, 1, 3, 3], [1, 1], [1, 1], 3, false);
        check([1, 4, 10, 10], [4, 1, 5, 5], [2, 2], [2, 2], 4, false);
    }

    #[test]
    fn inference_path_matches_burn() {
        let d = Device::flex();
        let x = Tensor::<4>::random([3, 4, 12, 12], Distribution::Normal(0.0, 1.0), &d);
        let w = Tensor::<4>::random([5, 4, 3, 3], Distribution::Normal(0.0, 1.0), &d);
        let a: Vec<f32> =
            conv2d(x.clone(), w.clone(), None, [1, 1], [1, 1], 1).into_data().try_to_vec::<f32>().unwrap();
        let b: Vec<f32> =
            burn::tensor::module::conv2d(x, w, None, ConvOptions::new([1, 1], [1, 1], [1, 1], 1))
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
        let err = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(err < 1e-4, "{err}");
    }

    #[test]
    fn unsupported_shapes_fall_back_to_burn() {
        // groups = 2 of 4 channels: neither dense nor depthwise.
        let d = Device::flex();
        let x = Tensor::<4>::random([1, 4, 5, 5], Distribution::Normal(0.0, 1.0), &d);
        let w = Tensor::<4>::random([4, 2, 3, 3], Distribution::Normal(0.0, 1.0), &d);
        assert!(!Geom::new(x.dims(), w.dims(), [1, 1], [1, 1], 2).unwrap().supported());
        assert_eq!(conv2d(x, w, None, [1, 1], [1, 1], 2).dims(), [1, 4, 5, 5]);
    }

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The order [`matmul`] promises, written out: on gemm's main path, chunks of at most
    /// K_CHUNK (equal, a function of k only), each a chain of fused multiply-adds from zero,
    /// added into the destination in order; elsewhere 16-lane dot products or plain sums.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        (m, n, k): (usize, usize, usize),
        dst: &mut [f32],
        (drs, dcs): (usize, usize),
        accumulate: bool,
        lhs: &[f32],
        (lrs, lcs): (usize, usize),
        rhs: &[f32],
        (rrs, rcs): (usize, usize),
    ) {
        let contiguous = lcs == 1 && rrs == 1;
        let small = m <= 1 || n <= 1 || k <= 2 || (contiguous && m * n <= GEMM_HORIZONTAL_MAX);
        for i in 0..m {
            for j in 0..n {
                let a = |p: usize| lhs[i * lrs + p * lcs];
                let b = |p: usize| rhs[p * rrs + j * rcs];
                let d = &mut dst[i * drs + j * dcs];
                if small {
                    let s = if contiguous {
                        let mut lanes = [0f32; LANES];
                        for p in 0..k {
                            lanes[p % LANES] += a(p) * b(p);
                        }
                        lanes.iter().sum::<f32>()
                    } else {
                        (0..k).fold(0f32, |s, p| s + a(p) * b(p))
                    };
                    *d = if accumulate { *d + s } else { s };
                    continue;
                }
                let step = k.div_ceil(k.div_ceil(K_CHUNK));
                for (c, k0) in (0..k).step_by(step).enumerate() {
                    let acc = (k0..(k0 + step).min(k)).fold(0f32, |acc, p| a(p).mul_add(b(p), acc));
                    *d = if accumulate || c > 0 { *d + acc } else { acc };
                }
            }
        }
    }

    /// gemm's result is the fixed-order sum of [`reference`], bit for bit: the same on every
    /// CPU with FMA, whatever its micro-kernel (AVX-512 or AVX2) and the L1 cache from which
    /// gemm derives its k-blocks. Shapes: the main path with small and large m, n (gemm's two
    /// blocking rules), k below, at and above K_CHUNK, every operand layout our convolutions
    /// use; and the shapes routed around gemm.
    #[test]
    fn matmul_has_a_fixed_summation_order() {
        #[cfg(target_arch = "x86_64")]
        if !std::arch::is_x86_feature_detected!("fma") {
            // gemm's scalar kernels (no FMA) round each product: another order of roundings.
            return;
        }
        let shapes = [
            (16, 256, 144),
            (64, 256, 576),
            (96, 80, 1152),
            (100, 20, 2600),
            (70, 70, 1000),
            (3, 5, 2000),
            (8, 27, 256),
            (16, 9, 1300),
            (1, 300, 700),
            (300, 1, 700),
            (40, 33, 2),
            (37, 45, 513),
        ];
        for (si, &(m, n, k)) in shapes.iter().enumerate() {
            for layout in 0..8 {
                let (lr, rr, dr) = (layout & 1 == 0, layout & 2 == 0, layout & 4 == 0);
                // Row-major or column-major lhs [m, k], rhs [k, n], dst [m, n].
                let ls = if lr { (k, 1) } else { (1, m) };
                let rs = if rr { (n, 1) } else { (1, k) };
                let ds = if dr { (n, 1) } else { (1, m) };
                let lhs = values(m * k, 3 * si as u64);
                let rhs = values(k * n, 3 * si as u64 + 1);
                for accumulate in [false, true] {
                    let init = values(m * n, 3 * si as u64 + 2);
                    let (mut got, mut want) = (init.clone(), init);
                    let is = |(a, b): (usize, usize)| (a as isize, b as isize);
                    matmul(
                        (m, n, k),
                        got.as_mut_ptr(),
                        is(ds),
                        accumulate,
                        lhs.as_ptr(),
                        is(ls),
                        rhs.as_ptr(),
                        is(rs),
                    );
                    reference((m, n, k), &mut want, ds, accumulate, &lhs, ls, &rhs, rs);
                    let diff = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                    assert_eq!(
                        diff,
                        0,
                        "{diff} of {} differ: m {m} n {n} k {k} layout {layout} accumulate {accumulate}",
                        m * n
                    );
                }
            }
        }
    }

    /// Why [`matmul`] keeps small products away from gemm: with both operands contiguous
    /// along the reduction, gemm 0.19 sums few outputs in vector lanes (8 with AVX2, 16 with
    /// AVX-512), not in order, so its result depends on the CPU's vector width.
    #[test]
    fn gemm_sums_small_products_in_vector_lanes() {
        #[cfg(target_arch = "x86_64")]
        if !std::arch::is_x86_feature_detected!("fma") {
            return;
        }
        let (m, n, k) = (4, 4, 4096);
        let (lhs, rhs) = (values(m * k, 7), values(k * n, 8));
        let mut raw = vec![0f32; m * n];
        // SAFETY: row-major [m, k] · column-major [k, n] -> row-major [m, n], all in bounds.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                raw.as_mut_ptr(),
                1,
                n as isize,
                false,
                lhs.as_ptr(),
                1,
                k as isize,
                rhs.as_ptr(),
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        };
        let in_order: Vec<f32> = (0..m * n)
            .map(|e| (0..k).fold(0f32, |acc, p| lhs[(e / n) * k + p].mul_add(rhs[(e % n) * k + p], acc)))
            .collect();
        let same = raw.iter().zip(&in_order).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
        assert!(same < m * n, "gemm summed every small product in order");
    }

    /// Times [`matmul`] against one plain `gemm` call on the products of the engine bench's
    /// convolutions (forward, weight and input gradient of 256-column tiles; medians of 15).
    /// `cargo test --release --lib matmul_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn matmul_cost() {
        let plain = |(m, n, k): (usize, usize, usize), d: *mut f32, a: *const f32, b: *const f32| unsafe {
            gemm::gemm(
                m,
                n,
                k,
                d,
                1,
                n as isize,
                false,
                a,
                1,
                k as isize,
                b,
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        };
        // (out channels, tile columns, in channels x 9): resnet8 and resnet18 stages.
        let mut total = (0f64, 0f64);
        for (cout, cols, kc) in [
            (16, 256, 27),
            (16, 256, 144),
            (32, 256, 288),
            (64, 64, 576),
            (128, 256, 1152),
            (256, 64, 2304),
            (512, 16, 4608),
        ] {
            for (m, n, k) in [(cout, cols, kc), (cout, kc, cols), (kc, cols, cout)] {
                let (a, b) = (values(m * k, 1), values(k * n, 2));
                let mut d = vec![0f32; m * n];
                let reps = (20_000_000 / (m * n * k)).max(1);
                let mut time = |f: &dyn Fn(*mut f32)| {
                    let mut ts: Vec<f64> = (0..15)
                        .map(|_| {
                            let t = std::time::Instant::now();
                            for _ in 0..reps {
                                f(d.as_mut_ptr());
                            }
                            t.elapsed().as_secs_f64() / reps as f64
                        })
                        .collect();
                    ts.sort_by(f64::total_cmp);
                    ts[7]
                };
                let t_plain = time(&|d| plain((m, n, k), d, a.as_ptr(), b.as_ptr()));
                let t_ours = time(&|d| {
                    matmul(
                        (m, n, k),
                        d,
                        (n as isize, 1),
                        false,
                        a.as_ptr(),
                        (k as isize, 1),
                        b.as_ptr(),
                        (n as isize, 1),
                    )
                });
                total.0 += t_plain;
                total.1 += t_ours;
                println!(
                    "m {m:4} n {n:4} k {k:4}: gemm {:8.1} us, matmul {:8.1} us, ratio {:.3}",
                    t_plain * 1e6,
                    t_ours * 1e6,
                    t_ours / t_plain
                );
            }
        }
        println!(
            "sum: gemm {:.1} us, matmul {:.1} us, ratio {:.3}",
            total.0 * 1e6,
            total.1 * 1e6,
            total.1 / total.0
        );
    }

    #[test]
    fn valid_range_is_exact() {
        // Brute force against the definition.
        for out_len in 1..6 {
            for s in 1..4 {
                for k in 0..4 {
                    for pad in 0..4 {
                        for len in 1..8 {
                            let ok: Vec<usize> = (0..out_len)
                                .filter(|o| {
                                    let i = (o * s + k) as isize - pad as isize;
                                    i >= 0 && i < len as isize
                                })
                                .collect();
                            let (lo, hi) = valid_range(out_len, s, k, pad, len);
                            let got: Vec<usize> = (lo..hi).collect();
                            assert_eq!(got, ok, "out_len {out_len} s {s} k {k} pad {pad} len {len}");
                        }
                    }
                }
            }
        }
    }
}
