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
    /// Drop the last incomplete batch.
    pub drop_last: bool,
    /// When the last batch is kept and would hold a single image, that image joins the batch
    /// before (training: a batch-norm layer in training mode cannot normalise one image, and
    /// PyTorch refuses it), so no image is left out. Evaluation keeps a batch of one.
    pub join_lone_last: bool,
    pub seed: u64,
    pub transform: TransformConfig,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
}

impl LoaderConfig {
    pub fn train(batch_size: usize, drop_last: bool, seed: u64, transform: TransformConfig) -> Self {
        Self { batch_size, shuffle: true, drop_last, join_lone_last: true, seed, transform, prefetch: 2 }
    }

    pub fn eval(batch_size: usize, transform: TransformConfig) -> Self {
        Self {
            batch_size,
            shuffle: false,
            drop_last: false,
            join_lone_last: false,
            seed: 0,
            transform,
            prefetch: 2,
        }
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

    /// The mean and std the images are normalised with, per output channel.
    pub fn normalization(&self) -> (&[f32], &[f32]) {
        self.pipeline.normalization()
    }

    pub fn n_batches(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.cfg.batch_size);
        if self.cfg.drop_last {
            (n / b).max(1)
        } else if self.merges_last_image() {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// Whether the epoch's last batch has an extra image (a lone last image joined it).
    pub fn merges_last_image(&self) -> bool {
        let (n, b) = (self.dataset.len(), self.cfg.batch_size);
        !self.cfg.drop_last && self.cfg.join_lone_last && n > b && n % b == 1
    }

    /// The images of batch `b` of an epoch (every epoch has the same sizes).
    pub fn batch_len(&self, b: usize) -> usize {
        let (n, size) = (self.dataset.len(), self.cfg.batch_size);
        let start = (b * size).min(n);
        if b + 1 == self.n_batches() && self.merges_last_image() {
            n - start
        } else {
            (start + size).min(n) - start
        }
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
        // With drop_last and a dataset smaller than one batch, still yield what there is; the
        // last batch takes a lone last image (see `LoaderConfig::drop_last`).
        let last = b + 1 == self.n_batches();
        let end = if last && self.merges_last_image() {
            order.len()
        } else {
            (start + self.cfg.batch_size).min(order.len())
        };
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
    ///
    /// Every batch of the epoch is yielded, or an error: a panic on the producer thread (or in
    /// one of its rayon tasks) ends the epoch with `Err` carrying the panic's message, never with
    /// a silently short epoch.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` from batch `first` on (a run resumed mid-epoch): the same batches
    /// [`Loader::epoch`] yields there, the ones before never built.
    pub fn epoch_from(&self, epoch: u64, first: usize) -> Epoch {
        let (tx, rx) = sync_channel(self.cfg.prefetch.max(1));
        let loader = self.clone();
        let n = self.n_batches();
        let first = first.min(n);
        let handle = std::thread::spawn(move || {
            let order = loader.order(epoch);
            for b in first..n {
                if tx.send(loader.batch_from_order(&order, epoch, b)).is_err() {
                    break; // the consumer stopped early
                }
            }
        });
        Epoch { rx: Some(rx), handle: Some(handle), remaining: n - first }
    }
}

/// Iterator over one epoch's batches; dropping it stops the producer.
pub struct Epoch {
    rx: Option<Receiver<Batch>>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
}

impl Iterator for Epoch {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Result<Batch, DataError>> {
        match self.rx.as_ref()?.recv() {
            Ok(b) => {
                self.remaining -= 1;
                Some(Ok(b))
            }
            Err(_) => {
                // The producer is gone: it finished, or it panicked. Its join says which.
                self.rx = None;
                let joined = self.handle.take().map(JoinHandle::join);
                let remaining = std::mem::take(&mut self.remaining);
                match joined {
                    Some(Err(payload)) => Some(Err(DataError::Loader {
                        detail: format!("panicked: {}", panic_message(&*payload)),
                    })),
                    _ if remaining > 0 => Some(Err(DataError::Loader {
                        detail: format!("the epoch ended {remaining} batches early"),
                    })),
                    _ => None,
                }
            }
        }
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

/// The text of a panic's payload (`panic!` with a literal or a formatted message).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(n: usize) -> Arc<Dataset> {
        let images = (0..n * 16).map(|i| (i % 251) as u8).collect();
        let labels = (0..n as u32).map(|i| i % 2).collect();
        Arc::new(Dataset::from_parts(images, [1, 4, 4], labels, vec!["a".into(), "b".into()]).unwrap())
    }

    #[test]
    fn a_full_epoch_yields_every_batch_then_ends() {
        let l = Loader::new(tiny(10), LoaderConfig::eval(3, TransformConfig::eval())).unwrap();
        let got: Vec<Batch> = l.epoch(0).collect::<Result<_, _>>().unwrap();
        assert_eq!(got.iter().map(|b| b.labels.len()).collect::<Vec<_>>(), [3, 3, 3, 1]);
    }

    /// A resumed epoch yields the same batches from where it stopped (shuffled, augmented).
    #[test]
    fn an_epoch_from_a_batch_on_is_the_rest_of_the_epoch() {
        let t = TransformConfig { hflip: true, ..TransformConfig::eval() };
        let l = Loader::new(tiny(10), LoaderConfig::train(3, false, 5, t)).unwrap();
        let all: Vec<Batch> = l.epoch(2).collect::<Result<_, _>>().unwrap();
        let rest: Vec<Batch> = l.epoch_from(2, 2).collect::<Result<_, _>>().unwrap();
        assert_eq!(rest.len(), all.len() - 2);
        for (a, b) in all[2..].iter().zip(&rest) {
            assert!(a.indices == b.indices && a.images == b.images && a.labels == b.labels);
        }
        assert_eq!(l.epoch_from(2, 99).count(), 0);
    }

    /// Regression: a panic while building a batch (seen with an absurd `resize`) ended the epoch
    /// early and silently; the node was then committed as done after fewer steps.
    #[test]
    fn a_panic_in_a_loader_thread_is_an_error_not_a_short_epoch() {
        let mut ds = (*tiny(10)).clone();
        ds.images.truncate(5 * 16); // images 5.. are missing: building their batch panics
        let l = Loader::new(Arc::new(ds), LoaderConfig::eval(2, TransformConfig::eval())).unwrap();
        let got: Vec<Result<Batch, DataError>> = l.epoch(0).collect();
        let ok = got.iter().take_while(|r| r.is_ok()).count();
        assert!(ok <= 2, "{ok} batches before the failure");
        let err = got[ok].as_ref().expect_err("an error ends the epoch");
        assert!(matches!(err, DataError::Loader { .. }), "{err}");
        assert!(err.to_string().contains("panicked"), "{err}");
        assert_eq!(got.len(), ok + 1, "nothing after the error");
    }
}
