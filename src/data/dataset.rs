//! A loaded, selected dataset held in memory as `u8` images, and merging of a synthetic set
//! into a real one.

use super::fingerprint::FingerprintBuilder;
use super::select::Selection;
use super::sources::Records;
use super::{DataError, Fingerprint};

/// Per-channel mean and standard deviation of the pixels scaled to [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    /// `len * C * H * W` bytes, image after image, each `C,H,W`; 0..=255.
    pub images: Vec<u8>,
    /// `[C, H, W]`.
    pub shape: [usize; 3],
    /// Labels 0..n_classes, numbered in the order of `class_names`.
    pub labels: Vec<u32>,
    /// Names of the selected classes (for prompts and reports).
    pub class_names: Vec<String>,
    /// For each label, the class index in the source.
    pub source_classes: Vec<u32>,
    pub stats: Stats,
    fingerprint: Fingerprint,
}

impl Dataset {
    pub(crate) fn from_records(recs: Records, sel: &Selection, fingerprint: Fingerprint) -> Self {
        let per = recs.shape.iter().product::<usize>();
        let mut images = Vec::with_capacity(sel.indices.len() * per);
        for &i in &sel.indices {
            images.extend_from_slice(&recs.images[i * per..(i + 1) * per]);
        }
        let stats = compute_stats(&images, recs.shape);
        Self {
            images,
            shape: recs.shape,
            labels: sel.labels.clone(),
            class_names: sel.class_names.clone(),
            source_classes: sel.source_classes.clone(),
            stats,
            fingerprint,
        }
    }

    /// A dataset built in memory (e.g. generated images); the fingerprint is SHA-256 of the
    /// pixels, labels and class names.
    pub fn from_parts(
        images: Vec<u8>,
        shape: [usize; 3],
        labels: Vec<u32>,
        class_names: Vec<String>,
    ) -> Result<Self, DataError> {
        let per = shape.iter().product::<usize>();
        if per == 0 || images.len() != labels.len() * per {
            return Err(DataError::config(
                "images",
                format!("{} bytes for {} labels of shape {shape:?}", images.len(), labels.len()),
            ));
        }
        if let Some((i, &l)) = labels.iter().enumerate().find(|(_, l)| **l as usize >= class_names.len()) {
            return Err(DataError::config(
                "labels",
                format!("label {l} of image {i} out of range ({} classes)", class_names.len()),
            ));
        }
        let mut b = FingerprintBuilder::new();
        b.param("source", "in-memory");
        b.param("shape", format!("{shape:?}"));
        b.param("classes", format!("{class_names:?}"));
        let label_bytes: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
        b.content("labels", &super::fingerprint::hash_bytes(&label_bytes));
        b.content("images", &super::fingerprint::hash_bytes(&images));
        let stats = compute_stats(&images, shape);
        let source_classes = (0..class_names.len() as u32).collect();
        Ok(Self { images, shape, labels, class_names, source_classes, stats, fingerprint: b.finish() })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn n_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Bytes of one image, `C,H,W`.
    pub fn image(&self, i: usize) -> &[u8] {
        let per = self.image_len();
        &self.images[i * per..(i + 1) * per]
    }

    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Content fingerprint of this selection, computed once when loaded.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }
}

fn compute_stats(images: &[u8], shape: [usize; 3]) -> Stats {
    let [c, h, w] = shape;
    let plane = h * w;
    let mut sum = vec![0f64; c];
    let mut sq = vec![0f64; c];
    if plane > 0 {
        for img in images.chunks_exact(c * plane) {
            for ch in 0..c {
                let (mut s, mut q) = (0u64, 0u64);
                for &p in &img[ch * plane..(ch + 1) * plane] {
                    s += p as u64;
                    q += (p as u64) * (p as u64);
                }
                sum[ch] += s as f64;
                sq[ch] += q as f64;
            }
        }
    }
    let n = (images.len() / c.max(1)) as f64;
    let mut mean = Vec::with_capacity(c);
    let mut std = Vec::with_capacity(c);
    for ch in 0..c {
        let m = if n > 0.0 { sum[ch] / n / 255.0 } else { 0.0 };
        let var = if n > 0.0 { (sq[ch] / n / (255.0 * 255.0) - m * m).max(0.0) } else { 0.0 };
        mean.push(m as f32);
        std.push(var.sqrt() as f32);
    }
    Stats { mean, std }
}

/// Adds `ratio` x (per class) the real set's size of synthetic images to `real` (1.0 = 1x,
/// 2.0 = 2x). Classes are matched by name; the first images of each synthetic class are
/// taken (in the synthetic set's order). Images must have the same shape.
pub fn merge(real: &Dataset, synthetic: &Dataset, ratio: f64) -> Result<Dataset, DataError> {
    if !(ratio > 0.0 && ratio.is_finite()) {
        return Err(DataError::Merge { detail: format!("ratio: expected > 0, got {ratio}") });
    }
    if real.shape != synthetic.shape {
        return Err(DataError::Merge {
            detail: format!(
                "synthetic images are {:?}, real ones {:?}; resize the synthetic set to the real image size",
                synthetic.shape, real.shape
            ),
        });
    }
    let per = real.image_len();
    let mut images = real.images.clone();
    let mut labels = real.labels.clone();
    for (c, name) in real.class_names.iter().enumerate() {
        let n_real = real.labels.iter().filter(|&&l| l as usize == c).count();
        let want = ((n_real as f64) * ratio).round() as usize;
        let Some(sc) = synthetic.class_names.iter().position(|n| n == name) else {
            return Err(DataError::Merge {
                detail: format!(
                    "synthetic set has no class {name:?}; its classes: {}",
                    synthetic.class_names.join(", ")
                ),
            });
        };
        let members: Vec<usize> =
            (0..synthetic.len()).filter(|&i| synthetic.labels[i] as usize == sc).take(want).collect();
        if members.len() < want {
            return Err(DataError::Merge {
                detail: format!(
                    "class {name:?}: {want} synthetic images needed for {ratio}x, {} available; generate more",
                    members.len()
                ),
            });
        }
        for i in members {
            images.extend_from_slice(&synthetic.images[i * per..(i + 1) * per]);
            labels.push(c as u32);
        }
    }
    let stats = compute_stats(&images, real.shape);
    Ok(Dataset {
        images,
        shape: real.shape,
        labels,
        class_names: real.class_names.clone(),
        source_classes: real.source_classes.clone(),
        stats,
        fingerprint: merged_fingerprint(&real.fingerprint, &synthetic.fingerprint, ratio),
    })
}

/// The fingerprint [`merge`] gives, computable from the two selections' fingerprints alone
/// (so a planner need not load either).
pub fn merged_fingerprint(real: &Fingerprint, synthetic: &Fingerprint, ratio: f64) -> Fingerprint {
    let mut b = FingerprintBuilder::new();
    b.param("merge", format!("{:016x}", ratio.to_bits()));
    b.content("real", &real.0);
    b.content("synthetic", &synthetic.0);
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(n_per_class: usize, value: u8, classes: &[&str]) -> Dataset {
        let mut labels = Vec::new();
        for c in 0..classes.len() {
            labels.extend(std::iter::repeat_n(c as u32, n_per_class));
        }
        let images = vec![value; labels.len() * 4];
        Dataset::from_parts(images, [1, 2, 2], labels, classes.iter().map(|s| s.to_string()).collect())
            .unwrap()
    }

    #[test]
    fn merge_adds_ratio_times_per_class_and_maps_names() {
        let real = ds(3, 10, &["cat", "dog"]);
        let syn = ds(10, 200, &["dog", "cat"]);
        let m1 = merge(&real, &syn, 1.0).unwrap();
        assert_eq!(m1.len(), 12);
        let m2 = merge(&real, &syn, 2.0).unwrap();
        assert_eq!(m2.len(), 18);
        assert_eq!(m2.labels.iter().filter(|&&l| l == 0).count(), 9);
        assert_ne!(m1.fingerprint(), m2.fingerprint());
        assert_eq!(*m2.fingerprint(), merged_fingerprint(real.fingerprint(), syn.fingerprint(), 2.0));
        // The synthetic images come after the real ones and keep their pixels.
        assert_eq!(m2.image(6), &[200; 4]);
    }

    #[test]
    fn merge_with_too_few_synthetic_images_says_how_many() {
        let real = ds(3, 10, &["cat"]);
        let syn = ds(5, 200, &["cat"]);
        let e = merge(&real, &syn, 2.0).unwrap_err().to_string();
        assert_eq!(e, "merge: class \"cat\": 6 synthetic images needed for 2x, 5 available; generate more");
    }

    #[test]
    fn stats_are_per_channel_mean_and_std() {
        // Two images, 2 channels of 1 pixel: channel 0 = {0, 255}, channel 1 = {51, 51}.
        let d = Dataset::from_parts(vec![0, 51, 255, 51], [2, 1, 1], vec![0, 0], vec!["a".into()]).unwrap();
        assert!((d.stats.mean[0] - 0.5).abs() < 1e-6 && (d.stats.std[0] - 0.5).abs() < 1e-6);
        assert!((d.stats.mean[1] - 0.2).abs() < 1e-6 && d.stats.std[1].abs() < 1e-4);
    }
}
