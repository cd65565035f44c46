//! Seeded, shuffled batches assembled in parallel (rayon) on a background thread, a bounded
//! number of batches ahead of the training step.
//!
//! Determinism: the order of an epoch is a pure function of `(seed, epoch)` and each image's
//! augmentation of `(seed, epoch, dataset index)`, so batches do not depend on thread count,
//! prefetch depth or batch size (except which images share a batch).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use rayon::prelude::*;

use super::rng::Rng;
use super::transform::Pipeline;
use super::{DataError, Dataset, TransformConfig};

#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub shuffle: bool,
    /// Drop the last incomplete batch (training); keep it for evaluation.
    pub drop_last: bool,
    pub seed: u64,
    pub transform: TransformConfig,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
}

impl LoaderConfig {
    pub fn train(batch_size: usize, seed: u64, transform: TransformConfig) -> Self {
        Self { batch_size, shuffle: true, drop_last: true, seed, transform, prefetch: 2 }
    }

    pub fn eval(batch_size: usize, transform: TransformConfig) -> Self {
        Self { batch_size, shuffle: false, drop_last: false, seed: 0, transform, prefetch: 2 }
    }
}

/// One batch: `images` is `N*C*H*W` f32 in `shape` = `[N, C, H, W]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub images: Vec<f32>,
    pub shape: [usize; 4],
    pub labels: Vec<u32>,
    /// Dataset index of each image (CRD's memory bank needs them).
    pub indices: Vec<usize>,
}

#[derive(Clone)]
pub struct Loader {
    dataset: Arc<Dataset>,
    cfg: LoaderConfig,
    pipeline: Arc<Pipeline>,
}

const TAG_ORDER: u64 = 11;
const TAG_SAMPLE: u64 = 12;
const TAG_BATCH: u64 = 13;

impl Loader {
    pub fn new(dataset: Arc<Dataset>, cfg: LoaderConfig) -> Result<Self, DataError> {
        if cfg.batch_size == 0 {
            return Err(DataError::config("batch_size", "expected > 0, got 0"));
        }
        if dataset.is_empty() {
            return Err(DataError::config("data", "the dataset selection is empty"));
        }
        let pipeline = Pipeline::new(&cfg.transform, dataset.shape, &dataset.stats)?;
        Ok(Self { dataset, cfg, pipeline: Arc::new(pipeline) })
    }

    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.dataset
    }

    /// `[C, H, W]` of the transformed images.
    pub fn image_shape(&self) -> [usize; 3] {
        self.pipeline.out_shape()
    }

    pub fn n_batches(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.cfg.batch_size);
        if self.cfg.drop_last { (n / b).max(1) } else { n.div_ceil(b) }
    }

    /// Dataset indices in the order of `epoch`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.cfg.shuffle {
            Rng::derive(&[self.cfg.seed, TAG_ORDER, epoch]).shuffle(&mut order);
        }
        order
    }

    /// Builds batch `b` of `epoch` (images transformed in parallel).
    pub fn batch(&self, epoch: u64, b: usize) -> Batch {
        self.batch_from_order(&self.order(epoch), epoch, b)
    }

    fn batch_from_order(&self, order: &[usize], epoch: u64, b: usize) -> Batch {
        let start = b * self.cfg.batch_size;
        // With drop_last and a dataset smaller than one batch, still yield what there is.
        let end = (start + self.cfg.batch_size).min(order.len());
        let indices = order[start..end].to_vec();
        let per = self.pipeline.out_len();
        let family = self
            .pipeline
            .dsa()
            .and_then(|d| d.batch_family(&mut Rng::derive(&[self.cfg.seed, TAG_BATCH, epoch, b as u64])));
        let mut images = vec![0f32; indices.len() * per];
        images.par_chunks_mut(per).zip(indices.par_iter()).for_each(|(out, &i)| {
            let mut rng = Rng::derive(&[self.cfg.seed, TAG_SAMPLE, epoch, i as u64]);
            self.pipeline.apply(self.dataset.image(i), &mut rng, family, out);
        });
        let [c, h, w] = self.pipeline.out_shape();
        Batch {
            shape: [indices.len(), c, h, w],
            labels: indices.iter().map(|&i| self.dataset.labels[i]).collect(),
            images,
            indices,
        }
    }

    /// The batches of `epoch`, prepared up to `prefetch` ahead on a background thread.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        let (tx, rx) = sync_channel(self.cfg.prefetch.max(1));
        let loader = self.clone();
        let n = self.n_batches();
        let handle = std::thread::spawn(move || {
            let order = loader.order(epoch);
            for b in 0..n {
                if tx.send(loader.batch_from_order(&order, epoch, b)).is_err() {
                    break; // the consumer stopped early
                }
            }
        });
        Epoch { rx: Some(rx), handle: Some(handle), remaining: n }
    }
}

/// Iterator over one epoch's batches; dropping it stops the producer.
pub struct Epoch {
    rx: Option<Receiver<Batch>>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
}

impl Iterator for Epoch {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let b = self.rx.as_ref()?.recv().ok();
        if b.is_some() {
            self.remaining -= 1;
        }
        b
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
