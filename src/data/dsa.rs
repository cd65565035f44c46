//! Differentiable Siamese Augmentation (Zhao & Bilen 2021), as in the public
//! VICO-UoE/DatasetCondensation `DiffAugment` with `ParamDiffAug`, applied per image with
//! independent random parameters (their `batchmode=False`, i.e. `seed=-1`).
//!
//! Coordinates follow PyTorch: `affine_grid` + `grid_sample` (bilinear, zero padding,
//! `align_corners=False`) for scale and rotate; crop translates with zero fill; cutout zeroes
//! a square (clamped at the borders). In mode S one family is applied (chosen once per batch,
//! as their code does, or per image); in mode M every family of the strategy in order.

use super::DataError;
use super::rng::Rng;

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsaFamily {
    /// Horizontal flip with probability `prob_flip`.
    Flip,
    /// Brightness, then saturation, then contrast.
    Color,
    /// Translation by up to `crop_pad` of the size, zero fill.
    Crop,
    Rotate,
    Scale,
    Cutout,
}

impl DsaFamily {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "flip" => Self::Flip,
            "color" => Self::Color,
            "crop" => Self::Crop,
            "rotate" => Self::Rotate,
            "scale" => Self::Scale,
            "cutout" => Self::Cutout,
            _ => return None,
        })
    }
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsaMode {
    /// One family (S).
    Single,
    /// All families in sequence (M).
    Multiple,
}

/// Where mode S draws its family.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyScope {
    /// One family for the whole batch (the public implementation).
    Batch,
    /// A family per image.
    Image,
}

/// `ParamDiffAug` defaults.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct DsaParams {
    pub prob_flip: f32,
    pub ratio_scale: f32,
    /// Degrees.
    pub ratio_rotate: f32,
    pub ratio_crop_pad: f32,
    pub ratio_cutout: f32,
    pub brightness: f32,
    pub saturation: f32,
    pub contrast: f32,
}

impl Default for DsaParams {
    fn default() -> Self {
        Self {
            prob_flip: 0.5,
            ratio_scale: 1.2,
            ratio_rotate: 15.0,
            ratio_crop_pad: 0.125,
            ratio_cutout: 0.5,
            brightness: 1.0,
            saturation: 2.0,
            contrast: 0.5,
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub struct DsaConfig {
    pub families: Vec<DsaFamily>,
    pub mode: DsaMode,
    pub scope: FamilyScope,
    pub params: DsaParams,
}

/// The paper's strategy.
pub const PAPER_STRATEGY: &str = "flip_color_crop_rotate_scale_cutout";

impl DsaConfig {
    /// Parses a DSA strategy string such as `flip_color_crop_rotate_scale_cutout`.
    pub fn from_strategy(strategy: &str, mode: DsaMode) -> Result<Self, DataError> {
        let mut families = Vec::new();
        for part in strategy.split('_') {
            let f = DsaFamily::parse(part).ok_or_else(|| {
                DataError::config(
                    "dsa.strategy",
                    format!("unknown family {part:?}; valid: flip, color, crop, rotate, scale, cutout"),
                )
            })?;
            families.push(f);
        }
        Ok(Self { families, mode, scope: FamilyScope::Batch, params: DsaParams::default() })
    }

    pub fn paper(mode: DsaMode) -> Self {
        Self::from_strategy(PAPER_STRATEGY, mode).expect("valid strategy")
    }

    /// The family of a batch in mode S with batch scope (else `None`).
    pub fn batch_family(&self, rng: &mut Rng) -> Option<DsaFamily> {
        (self.mode == DsaMode::Single && self.scope == FamilyScope::Batch)
            .then(|| self.families[rng.below(self.families.len() as u64) as usize])
    }

    /// Augments one image `x` (`C,H,W`) in place; `scratch` has the same length.
    pub fn apply(
        &self,
        x: &mut [f32],
        shape: [usize; 3],
        batch_family: Option<DsaFamily>,
        rng: &mut Rng,
        scratch: &mut [f32],
    ) {
        match self.mode {
            DsaMode::Multiple => {
                for &f in &self.families {
                    apply_family(f, &self.params, x, shape, rng, scratch);
                }
            }
            DsaMode::Single => {
                let f = batch_family
                    .unwrap_or_else(|| self.families[rng.below(self.families.len() as u64) as usize]);
                apply_family(f, &self.params, x, shape, rng, scratch);
            }
        }
    }
}

fn apply_family(
    f: DsaFamily,
    p: &DsaParams,
    x: &mut [f32],
    shape: [usize; 3],
    rng: &mut Rng,
    scratch: &mut [f32],
) {
    let [_, h, w] = shape;
    match f {
        DsaFamily::Scale => {
            let lo = 1.0 / p.ratio_scale;
            let sx = rng.next_f32() * (p.ratio_scale - lo) + lo;
            let sy = rng.next_f32() * (p.ratio_scale - lo) + lo;
            affine(x, shape, [[sx, 0.0, 0.0], [0.0, sy, 0.0]], scratch);
        }
        DsaFamily::Rotate => {
            let t = (rng.next_f32() - 0.5) * 2.0 * p.ratio_rotate / 180.0 * std::f32::consts::PI;
            affine(x, shape, [[t.cos(), (-t).sin(), 0.0], [t.sin(), t.cos(), 0.0]], scratch);
        }
        DsaFamily::Flip => {
            if rng.next_f32() < p.prob_flip {
                hflip(x, shape);
            }
        }
        DsaFamily::Color => {
            brightness(x, (rng.next_f32() - 0.5) * p.brightness);
            saturation(x, shape, rng.next_f32() * p.saturation);
            contrast(x, rng.next_f32() + p.contrast);
        }
        DsaFamily::Crop => {
            // DSA names the row shift "x" (tensor dim 2) and the column shift "y".
            let shift_r = (h as f32 * p.ratio_crop_pad + 0.5) as i64;
            let shift_c = (w as f32 * p.ratio_crop_pad + 0.5) as i64;
            let tr = rng.range_inclusive(-shift_r, shift_r);
            let tc = rng.range_inclusive(-shift_c, shift_c);
            translate(x, shape, tr, tc, scratch);
        }
        DsaFamily::Cutout => {
            let ch = (h as f32 * p.ratio_cutout + 0.5) as usize;
            let cw = (w as f32 * p.ratio_cutout + 0.5) as usize;
            // torch.randint(0, size + (1 - cut % 2)): exclusive upper bound.
            let or = rng.below((h + 1 - ch % 2) as u64) as i64;
            let oc = rng.below((w + 1 - cw % 2) as u64) as i64;
            cutout(x, shape, or, oc, ch, cw);
        }
    }
}

/// `grid_sample(x, affine_grid(theta))` with bilinear sampling, zero padding and
/// `align_corners=False`; theta maps output to input normalised coordinates (x = column).
pub fn affine(x: &mut [f32], shape: [usize; 3], theta: [[f32; 3]; 2], scratch: &mut [f32]) {
    let [c, h, w] = shape;
    let plane = h * w;
    scratch[..x.len()].copy_from_slice(x);
    let src = &scratch[..x.len()];
    let (wf, hf) = (w as f32, h as f32);
    for i in 0..h {
        let yn = (2 * i + 1) as f32 / hf - 1.0;
        for j in 0..w {
            let xn = (2 * j + 1) as f32 / wf - 1.0;
            let gx = theta[0][0] * xn + theta[0][1] * yn + theta[0][2];
            let gy = theta[1][0] * xn + theta[1][1] * yn + theta[1][2];
            let ix = ((gx + 1.0) * wf - 1.0) / 2.0;
            let iy = ((gy + 1.0) * hf - 1.0) / 2.0;
            // floor without a libm call (the x86-64 baseline has no rounding instruction).
            let (x0, y0) = (floor_i64(ix), floor_i64(iy));
            let (wx1, wy1) = (ix - x0 as f32, iy - y0 as f32);
            let out = i * w + j;
            if x0 >= 0 && y0 >= 0 && x0 + 1 < w as i64 && y0 + 1 < h as i64 {
                // All four neighbours inside: the common case, no per-corner checks.
                let k = y0 as usize * w + x0 as usize;
                let (w00, w01) = ((1.0 - wy1) * (1.0 - wx1), (1.0 - wy1) * wx1);
                let (w10, w11) = (wy1 * (1.0 - wx1), wy1 * wx1);
                for ch in 0..c {
                    let s = &src[ch * plane..(ch + 1) * plane];
                    x[ch * plane + out] = w00 * s[k] + w01 * s[k + 1] + w10 * s[k + w] + w11 * s[k + w + 1];
                }
                continue;
            }
            let corners = [
                (y0, x0, (1.0 - wy1) * (1.0 - wx1)),
                (y0, x0 + 1, (1.0 - wy1) * wx1),
                (y0 + 1, x0, wy1 * (1.0 - wx1)),
                (y0 + 1, x0 + 1, wy1 * wx1),
            ];
            for ch in 0..c {
                let mut v = 0.0;
                for &(yy, xx, wt) in &corners {
                    if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w {
                        v += wt * src[ch * plane + yy as usize * w + xx as usize];
                    }
                }
                x[ch * plane + out] = v;
            }
        }
    }
}

fn floor_i64(v: f32) -> i64 {
    let t = v as i64;
    if (t as f32) > v { t - 1 } else { t }
}

pub fn hflip(x: &mut [f32], shape: [usize; 3]) {
    let w = shape[2];
    for row in x.chunks_exact_mut(w) {
        row.reverse();
    }
}

pub fn brightness(x: &mut [f32], delta: f32) {
    x.iter_mut().for_each(|v| *v += delta);
}

/// `(x - mean over channels) * factor + mean`, per pixel.
pub fn saturation(x: &mut [f32], shape: [usize; 3], factor: f32) {
    let [c, h, w] = shape;
    let plane = h * w;
    for p in 0..plane {
        let mean = (0..c).map(|ch| x[ch * plane + p]).sum::<f32>() / c as f32;
        for ch in 0..c {
            let v = &mut x[ch * plane + p];
            *v = (*v - mean) * factor + mean;
        }
    }
}

/// `(x - mean over the image) * factor + mean`.
pub fn contrast(x: &mut [f32], factor: f32) {
    let mean = x.iter().sum::<f32>() / x.len() as f32;
    x.iter_mut().for_each(|v| *v = (*v - mean) * factor + mean);
}

/// `out[r][c] = x[r + dr][c + dc]`, zero outside.
pub fn translate(x: &mut [f32], shape: [usize; 3], dr: i64, dc: i64, scratch: &mut [f32]) {
    let [c, h, w] = shape;
    scratch[..x.len()].copy_from_slice(x);
    for ch in 0..c {
        for r in 0..h {
            for col in 0..w {
                let (sr, sc) = (r as i64 + dr, col as i64 + dc);
                x[(ch * h + r) * w + col] = if sr >= 0 && sc >= 0 && (sr as usize) < h && (sc as usize) < w {
                    scratch[(ch * h + sr as usize) * w + sc as usize]
                } else {
                    0.0
                };
            }
        }
    }
}

/// Zeroes rows `clamp(or - ch/2 ..)` x columns `clamp(oc - cw/2 ..)` of size `ch` x `cw`.
pub fn cutout(x: &mut [f32], shape: [usize; 3], or: i64, oc: i64, ch: usize, cw: usize) {
    let [c, h, w] = shape;
    let r0 = (or - (ch / 2) as i64).clamp(0, h as i64 - 1) as usize;
    let r1 = (or - (ch / 2) as i64 + ch as i64 - 1).clamp(0, h as i64 - 1) as usize;
    let c0 = (oc - (cw / 2) as i64).clamp(0, w as i64 - 1) as usize;
    let c1 = (oc - (cw / 2) as i64 + cw as i64 - 1).clamp(0, w as i64 - 1) as usize;
    for chn in 0..c {
        for r in r0..=r1 {
            for col in c0..=c1 {
                x[(chn * h + r) * w + col] = 0.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::transform::resize_bilinear;

    /// Outputs of DatasetCondensation's DSA ops with fixed parameters, from PyTorch
    /// (tools/data/make_dsa_fixtures.py).
    const FIXTURE: &str = include_str!("../../tests/fixtures/data/dsa_ops.json");

    fn input(shape: [usize; 3]) -> Vec<f32> {
        let [c, h, w] = shape;
        let mut x = Vec::with_capacity(c * h * w);
        for ch in 0..c {
            for i in 0..h {
                for j in 0..w {
                    x.push((ch as f32 * 1.3 + i as f32 * 0.7 + j as f32 * 0.37).sin() + 0.1 * ch as f32);
                }
            }
        }
        x
    }

    #[test]
    fn ops_match_pytorch_dsa_reference() {
        let fx: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
        let cases = fx["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 32);
        for case in cases {
            let s: Vec<usize> =
                case["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            let shape = [s[0], s[1], s[2]];
            let p: Vec<f64> =
                case["params"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let want: Vec<f32> =
                case["output"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let mut x = input(shape);
            let mut scratch = vec![0.0; x.len()];
            let op = case["op"].as_str().unwrap();
            match op {
                "scale" => {
                    affine(&mut x, shape, [[p[0] as f32, 0.0, 0.0], [0.0, p[1] as f32, 0.0]], &mut scratch)
                }
                "rotate" => {
                    let t = (p[0] as f32) / 180.0 * std::f32::consts::PI;
                    affine(&mut x, shape, [[t.cos(), (-t).sin(), 0.0], [t.sin(), t.cos(), 0.0]], &mut scratch)
                }
                "flip" => hflip(&mut x, shape),
                "brightness" => brightness(&mut x, (p[0] as f32 - 0.5) * DsaParams::default().brightness),
                "saturation" => saturation(&mut x, shape, p[0] as f32 * DsaParams::default().saturation),
                "contrast" => contrast(&mut x, p[0] as f32 + DsaParams::default().contrast),
                "crop" => translate(&mut x, shape, p[0] as i64, p[1] as i64, &mut scratch),
                "cutout" => {
                    let (ch, cw) =
                        ((shape[1] as f32 * 0.5 + 0.5) as usize, (shape[2] as f32 * 0.5 + 0.5) as usize);
                    cutout(&mut x, shape, p[0] as i64, p[1] as i64, ch, cw)
                }
                "resize" => x = resize_bilinear(&x, shape, p[0] as usize, p[1] as usize),
                other => panic!("unknown op {other}"),
            }
            assert_eq!(x.len(), want.len(), "{op} {p:?} {shape:?}");
            // Tolerance: f32 arithmetic in a different order, and the fixture's 7 decimals.
            for (k, (a, b)) in x.iter().zip(&want).enumerate() {
                assert!((a - b).abs() < 2e-5, "{op} {p:?} {shape:?} element {k}: ours {a}, pytorch {b}");
            }
        }
    }

    #[test]
    fn random_draws_stay_in_the_paper_ranges() {
        // Crop never shifts by more than round(0.125 * size); cutout zeroes a 0.5-size square.
        let cfg = DsaConfig::from_strategy("crop", DsaMode::Multiple).unwrap();
        let shape = [1, 16, 16];
        for seed in 0..200 {
            let mut x: Vec<f32> = (0..256).map(|v| v as f32 + 1.0).collect();
            let mut scratch = vec![0.0; 256];
            cfg.apply(&mut x, shape, None, &mut Rng::new(seed), &mut scratch);
            // The source pixel of output (8, 8) tells the shift: value = 1 + 16*r + c.
            let v = x[8 * 16 + 8] as i64 - 1;
            let (dr, dc) = (v / 16 - 8, v % 16 - 8);
            assert!(dr.abs() <= 2 && dc.abs() <= 2, "shift ({dr}, {dc})");
        }
        let cfg = DsaConfig::from_strategy("cutout", DsaMode::Multiple).unwrap();
        for seed in 0..200 {
            let mut x = vec![1.0f32; 256];
            let mut scratch = vec![0.0; 256];
            cfg.apply(&mut x, shape, None, &mut Rng::new(seed), &mut scratch);
            let zeros = x.iter().filter(|&&v| v == 0.0).count();
            assert!(zeros > 0 && zeros <= 64, "{zeros} zeros");
        }
    }

    #[test]
    fn single_mode_applies_exactly_one_family() {
        // Flip-only strategy in S mode: every output is the input or its exact mirror.
        let cfg = DsaConfig::from_strategy("flip", DsaMode::Single).unwrap();
        let shape = [2, 3, 4];
        let x0: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let mut mirrored = x0.clone();
        hflip(&mut mirrored, shape);
        let mut n_flipped = 0;
        for seed in 0..100 {
            let mut x = x0.clone();
            let mut scratch = vec![0.0; 24];
            cfg.apply(&mut x, shape, None, &mut Rng::new(seed), &mut scratch);
            if x == mirrored {
                n_flipped += 1;
            } else {
                assert_eq!(x, x0);
            }
        }
        assert!((30..70).contains(&n_flipped), "{n_flipped} of 100 flipped with p = 0.5");
    }

    #[test]
    fn unknown_family_is_a_config_error() {
        let e = DsaConfig::from_strategy("flip_blur", DsaMode::Single).unwrap_err().to_string();
        assert_eq!(
            e,
            "dsa.strategy: unknown family \"blur\"; valid: flip, color, crop, rotate, scale, cutout"
        );
    }
}
