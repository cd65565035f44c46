//! Per-image transforms, in a fixed order: grayscale to RGB, resize, centre crop,
//! pad-and-random-crop, horizontal flip, scale to [0, 1] and normalise, then DSA.
//! Every random choice comes from the `Rng` passed in, so `(seed, epoch, index)` fixes them.

use super::dsa::{DsaConfig, DsaFamily};
use super::rng::Rng;
use super::{DataError, Stats};

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// CIFAR-10 train-set statistics as commonly used (e.g. RepDistiller).
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub enum Normalize {
    /// The loader's dataset's own per-channel statistics ([`super::Dataset::stats`]). For a
    /// test split use the train selection's statistics instead: [`Normalize::from_stats`].
    Dataset,
    /// ImageNet's (for ImageNet-pretrained teachers).
    ImageNet,
    Given {
        mean: Vec<f32>,
        std: Vec<f32>,
    },
}

impl Normalize {
    /// Fixed statistics, e.g. those of the train selection for evaluating on its test split.
    pub fn from_stats(stats: &Stats) -> Self {
        Normalize::Given { mean: stats.mean.clone(), std: stats.std.clone() }
    }
}

/// Zero-pad by `padding` on each side, then crop `size` x `size` at a random offset
/// (torchvision `RandomCrop(size, padding)`).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomCrop {
    pub size: usize,
    pub padding: usize,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Default)]
pub struct TransformConfig {
    /// Replicate a single channel to three (grey datasets for RGB models).
    pub grayscale_to_rgb: bool,
    /// Bilinear resize to `n` x `n` (`align_corners=False`, no antialiasing).
    pub resize: Option<usize>,
    pub center_crop: Option<usize>,
    pub random_crop: Option<RandomCrop>,
    /// torchvision `RandomResizedCrop(n)`: a random crop of 8%..100% of the area and aspect
    /// ratio 3/4..4/3, resized (bilinear) to `n` x `n`.
    pub random_resized_crop: Option<usize>,
    /// Horizontal flip with probability 0.5.
    pub hflip: bool,
    pub normalize: Option<Normalize>,
    pub dsa: Option<DsaConfig>,
}

impl TransformConfig {
    /// CIFAR-style training at native size: pad 4 + random crop, flip, normalise.
    pub fn cifar_train(size: usize) -> Self {
        Self {
            random_crop: Some(RandomCrop { size, padding: size / 8 }),
            hflip: true,
            normalize: Some(Normalize::Dataset),
            ..Self::default()
        }
    }

    /// The paper's CIFAR train transform: resize 256, random crop 224, flip, ImageNet stats.
    pub fn paper_cifar_train() -> Self {
        Self {
            resize: Some(256),
            random_crop: Some(RandomCrop { size: 224, padding: 0 }),
            hflip: true,
            normalize: Some(Normalize::ImageNet),
            ..Self::default()
        }
    }

    /// The paper's train transform for the other sets: random-resized-crop 224, flip,
    /// ImageNet stats.
    pub fn paper_other_train() -> Self {
        Self {
            random_resized_crop: Some(224),
            hflip: true,
            normalize: Some(Normalize::ImageNet),
            ..Self::default()
        }
    }

    /// The paper's test transform: resize 256, centre crop 224, ImageNet stats.
    pub fn paper_test() -> Self {
        Self {
            resize: Some(256),
            center_crop: Some(224),
            normalize: Some(Normalize::ImageNet),
            ..Self::default()
        }
    }

    /// The deterministic transform that prepares test images the way this (training) transform
    /// prepared training images, for images of `in_shape`: grey-to-RGB, resize, centre crop and
    /// normalisation are kept; flips and DSA are dropped; a random crop becomes a centre crop of
    /// its size (a resize when it is larger than the image); a random-resized crop to `n`
    /// becomes resize `round(n * 8 / 7)` then centre crop `n` (torchvision's resize 256 / crop
    /// 224 convention). `paper_cifar_train` and `paper_other_train` both map to `paper_test`.
    pub fn for_evaluation(&self, in_shape: [usize; 3]) -> TransformConfig {
        let mut t = TransformConfig {
            grayscale_to_rgb: self.grayscale_to_rgb,
            resize: self.resize,
            center_crop: self.center_crop,
            normalize: self.normalize.clone(),
            ..TransformConfig::default()
        };
        let (mut h, mut w) = (in_shape[1], in_shape[2]);
        if let Some(n) = self.resize {
            (h, w) = (n, n);
        }
        if let Some(n) = self.center_crop {
            (h, w) = (n, n);
        }
        if let Some(rc) = self.random_crop {
            if rc.size > h || rc.size > w {
                t.resize = Some(rc.size);
                t.center_crop = None;
            } else if (rc.size, rc.size) != (h, w) {
                t.center_crop = Some(rc.size);
            }
        }
        if let Some(n) = self.random_resized_crop {
            t.resize = Some(((n as f64) * 8.0 / 7.0).round() as usize);
            t.center_crop = Some(n);
        }
        t
    }

    /// Only scaling to [0, 1] and normalising with the dataset's statistics.
    pub fn eval() -> Self {
        Self { normalize: Some(Normalize::Dataset), ..Self::default() }
    }
}

/// A transform resolved against one dataset's shape and statistics.
#[derive(Debug, Clone)]
pub(crate) struct Pipeline {
    cfg: TransformConfig,
    in_shape: [usize; 3],
    out_shape: [usize; 3],
    mean: Vec<f32>,
    std: Vec<f32>,
    inv_std: Vec<f32>,
}

impl Pipeline {
    pub fn new(cfg: &TransformConfig, in_shape: [usize; 3], stats: &Stats) -> Result<Self, DataError> {
        let [mut c, mut h, mut w] = in_shape;
        if cfg.grayscale_to_rgb {
            if c != 1 && c != 3 {
                return Err(DataError::config(
                    "transform.grayscale_to_rgb",
                    format!("images have {c} channels, expected 1"),
                ));
            }
            c = 3;
        }
        if let Some(n) = cfg.resize {
            if n == 0 {
                return Err(DataError::config("transform.resize", "expected > 0, got 0"));
            }
            (h, w) = (n, n);
        }
        if let Some(n) = cfg.center_crop {
            if n == 0 || n > h || n > w {
                return Err(DataError::config(
                    "transform.center_crop",
                    format!("{n} does not fit images of {h}x{w}"),
                ));
            }
            (h, w) = (n, n);
        }
        if let Some(rc) = cfg.random_crop {
            if rc.size == 0 || rc.size > h + 2 * rc.padding || rc.size > w + 2 * rc.padding {
                return Err(DataError::config(
                    "transform.random_crop",
                    format!("{} does not fit images of {h}x{w} padded by {}", rc.size, rc.padding),
                ));
            }
            (h, w) = (rc.size, rc.size);
        }
        if let Some(n) = cfg.random_resized_crop {
            if n == 0 {
                return Err(DataError::config("transform.random_resized_crop", "expected > 0, got 0"));
            }
            (h, w) = (n, n);
        }
        let (mean, std): (Vec<f32>, Vec<f32>) = match &cfg.normalize {
            None => (vec![0.0; c], vec![1.0; c]),
            Some(Normalize::ImageNet) => (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec()),
            Some(Normalize::Given { mean, std }) => (mean.clone(), std.clone()),
            Some(Normalize::Dataset) => {
                let rep = |v: &Vec<f32>| {
                    if c == 3 && v.len() == 1 { vec![v[0]; 3] } else { v.clone() }
                };
                (rep(&stats.mean), rep(&stats.std))
            }
        };
        if mean.len() != c || std.len() != c {
            return Err(DataError::config(
                "transform.normalize",
                format!("{} means and {} stds for images with {c} channels", mean.len(), std.len()),
            ));
        }
        if let Some(s) = std.iter().find(|s| s.is_nan() || **s <= 0.0) {
            return Err(DataError::config(
                "transform.normalize.std",
                format!("expected > 0, got {s}; the dataset may be constant"),
            ));
        }
        if let Some(d) = &cfg.dsa
            && d.families.is_empty()
        {
            return Err(DataError::config("dsa.strategy", "expected at least one family"));
        }
        Ok(Self {
            cfg: cfg.clone(),
            in_shape,
            out_shape: [c, h, w],
            mean,
            inv_std: std.iter().map(|s| 1.0 / s).collect(),
            std,
        })
    }

    pub fn out_shape(&self) -> [usize; 3] {
        self.out_shape
    }

    /// The per-channel mean and std this pipeline normalises with (resolved: a dataset's own
    /// statistics, ImageNet's or the given ones; zeros and ones without normalisation).
    pub fn normalization(&self) -> (&[f32], &[f32]) {
        (&self.mean, &self.std)
    }

    pub fn out_len(&self) -> usize {
        self.out_shape.iter().product()
    }

    pub fn dsa(&self) -> Option<&DsaConfig> {
        self.cfg.dsa.as_ref()
    }

    /// Transforms one `u8` image into `out` (length `out_len`).
    pub fn apply(&self, src: &[u8], rng: &mut Rng, batch_family: Option<DsaFamily>, out: &mut [f32]) {
        let [c0, h0, w0] = self.in_shape;
        let mut shape = [c0, h0, w0];
        let mut cur: Vec<f32> = src.iter().map(|&p| p as f32 / 255.0).collect(); // as torchvision ToTensor
        if self.cfg.grayscale_to_rgb && c0 == 1 {
            let plane = cur.clone();
            cur = [plane.as_slice(), plane.as_slice(), plane.as_slice()].concat();
            shape[0] = 3;
        }
        if let Some(n) = self.cfg.resize
            && (shape[1], shape[2]) != (n, n)
        {
            cur = resize_bilinear(&cur, shape, n, n);
            (shape[1], shape[2]) = (n, n);
        }
        if let Some(n) = self.cfg.center_crop {
            let (top, left) = ((shape[1] - n) / 2, (shape[2] - n) / 2);
            cur = crop(&cur, shape, top as i64, left as i64, n);
            (shape[1], shape[2]) = (n, n);
        }
        if let Some(rc) = self.cfg.random_crop {
            let top = rng.below((shape[1] + 2 * rc.padding - rc.size + 1) as u64) as i64 - rc.padding as i64;
            let left = rng.below((shape[2] + 2 * rc.padding - rc.size + 1) as u64) as i64 - rc.padding as i64;
            cur = crop(&cur, shape, top, left, rc.size);
            (shape[1], shape[2]) = (rc.size, rc.size);
        }
        if let Some(n) = self.cfg.random_resized_crop {
            let (top, left, ch, cw) = random_resized_crop_params(shape[1], shape[2], rng);
            let mut window = vec![0.0; shape[0] * ch * cw];
            for c in 0..shape[0] {
                for r in 0..ch {
                    let src = (c * shape[1] + top + r) * shape[2] + left;
                    window[(c * ch + r) * cw..(c * ch + r + 1) * cw].copy_from_slice(&cur[src..src + cw]);
                }
            }
            cur = resize_bilinear(&window, [shape[0], ch, cw], n, n);
            (shape[1], shape[2]) = (n, n);
        }
        if self.cfg.hflip && rng.next_f32() < 0.5 {
            super::dsa::hflip(&mut cur, shape);
        }
        let plane = shape[1] * shape[2];
        for ch in 0..shape[0] {
            let (m, s) = (self.mean[ch], self.inv_std[ch]);
            cur[ch * plane..(ch + 1) * plane].iter_mut().for_each(|v| *v = (*v - m) * s);
        }
        if let Some(d) = &self.cfg.dsa {
            let mut scratch = vec![0.0; cur.len()];
            d.apply(&mut cur, shape, batch_family, rng, &mut scratch);
        }
        out.copy_from_slice(&cur);
    }
}

/// torchvision's `RandomResizedCrop.get_params` with scale (0.08, 1) and ratio (3/4, 4/3):
/// ten tries at a random area and log-uniform aspect ratio, else a centre crop clamped to the
/// ratio range. Returns (top, left, height, width).
pub(crate) fn random_resized_crop_params(
    height: usize,
    width: usize,
    rng: &mut Rng,
) -> (usize, usize, usize, usize) {
    let area = (height * width) as f64;
    let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * (0.08 + rng.next_f64() * (1.0 - 0.08));
        let aspect = (lo + rng.next_f64() * (hi - lo)).exp();
        let w = (target * aspect).sqrt().round() as usize;
        let h = (target / aspect).sqrt().round() as usize;
        if w > 0 && w <= width && h > 0 && h <= height {
            let top = rng.below((height - h + 1) as u64) as usize;
            let left = rng.below((width - w + 1) as u64) as usize;
            return (top, left, h, w);
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (h, w) = if in_ratio < 3.0 / 4.0 {
        (((width as f64) / (3.0 / 4.0)).round() as usize, width)
    } else if in_ratio > 4.0 / 3.0 {
        (height, ((height as f64) * (4.0 / 3.0)).round() as usize)
    } else {
        (height, width)
    };
    ((height - h) / 2, (width - w) / 2, h, w)
}

/// `size` x `size` window at (`top`, `left`), which may lie partly outside (zero fill).
pub(crate) fn crop(x: &[f32], shape: [usize; 3], top: i64, left: i64, size: usize) -> Vec<f32> {
    let [c, h, w] = shape;
    let mut out = vec![0.0; c * size * size];
    for ch in 0..c {
        for r in 0..size {
            let sr = top + r as i64;
            if sr < 0 || sr as usize >= h {
                continue;
            }
            for col in 0..size {
                let sc = left + col as i64;
                if sc >= 0 && (sc as usize) < w {
                    out[(ch * size + r) * size + col] = x[(ch * h + sr as usize) * w + sc as usize];
                }
            }
        }
    }
    out
}

/// Bilinear resize with `align_corners=False` (PyTorch's `F.interpolate(mode="bilinear")`
/// without antialiasing): source coordinate `(dst + 0.5) * in / out - 0.5`, clamped at 0.
pub(crate) fn resize_bilinear(x: &[f32], shape: [usize; 3], oh: usize, ow: usize) -> Vec<f32> {
    let [c, h, w] = shape;
    let axis = |n_in: usize, n_out: usize| -> Vec<(usize, usize, f32)> {
        let scale = n_in as f32 / n_out as f32;
        (0..n_out)
            .map(|d| {
                let s = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (s.floor() as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                (i0, i1, s - i0 as f32)
            })
            .collect()
    };
    let ys = axis(h, oh);
    let xs = axis(w, ow);
    let mut out = vec![0.0; c * oh * ow];
    for ch in 0..c {
        let src = &x[ch * h * w..(ch + 1) * h * w];
        for (r, &(y0, y1, fy)) in ys.iter().enumerate() {
            for (col, &(x0, x1, fx)) in xs.iter().enumerate() {
                let top = src[y0 * w + x0] * (1.0 - fx) + src[y0 * w + x1] * fx;
                let bot = src[y1 * w + x0] * (1.0 - fx) + src[y1 * w + x1] * fx;
                out[(ch * oh + r) * ow + col] = top * (1.0 - fy) + bot * fy;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_resized_crop_params_stay_inside_and_in_the_area_range() {
        let mut rng = Rng::new(0);
        let mut areas = Vec::new();
        for _ in 0..500 {
            let (t, l, h, w) = random_resized_crop_params(40, 60, &mut rng);
            assert!(t + h <= 40 && l + w <= 60 && h > 0 && w > 0);
            areas.push((h * w) as f64 / 2400.0);
        }
        let (min, max) = areas.iter().fold((1f64, 0f64), |(a, b), &x| (a.min(x), b.max(x)));
        // Rounding of h and w lets the area stray a little outside [0.08, 1].
        assert!((0.07..0.2).contains(&min) && max > 0.8, "{min} {max}");
    }

    #[test]
    fn random_resized_crop_falls_back_to_a_centre_crop_of_extreme_images() {
        // A 1x100 strip can never hold a crop of ratio <= 4/3 with area >= 8%, so the fallback
        // takes the centred 1 x round(4/3) window.
        let mut rng = Rng::new(3);
        assert_eq!(random_resized_crop_params(1, 100, &mut rng), (0, 49, 1, 1));
    }

    #[test]
    fn resize_of_a_constant_image_is_constant_and_crop_zero_fills() {
        let x = vec![0.25f32; 2 * 5 * 7];
        let y = resize_bilinear(&x, [2, 5, 7], 9, 3);
        assert_eq!(y.len(), 2 * 27);
        assert!(y.iter().all(|&v| (v - 0.25).abs() < 1e-7));
        let c = crop(&[1.0, 2.0, 3.0, 4.0], [1, 2, 2], -1, 0, 2);
        assert_eq!(c, vec![0.0, 0.0, 1.0, 2.0]);
    }
}
