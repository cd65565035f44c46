//! Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020), as in
//! RepDistiller `crd/` and the paper's `kd_losses/crd.py`.
//!
//! Both features go through an embedding head (a [`Projector`], RepDistiller's `Embed` is the
//! `linear` kind) to unit vectors. Two memory banks of `n_data` rows hold a momentum average of
//! each sample's student and teacher embedding. For a batch, each sample is contrasted against
//! its own bank row (the positive) and `nce_k` other rows (negatives), in both directions:
//! the teacher embedding against the student bank and the student embedding against the
//! teacher bank. Scores are `exp(v.w / nce_t) / Z`, with `Z` fixed from the first batch, and
//! go through RepDistiller's NCE loss. After the scores are taken, the positive rows are
//! updated: `w <- normalize(m * w + (1 - m) * v)`.

use std::sync::{Arc, Mutex};

use burn::module::{Module, RunningState};
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

use super::functional::{contrast_loss, l2_normalize};
use super::heads::{Projector, ProjectorKind};

/// Chooses the negative dataset indices of a batch.
///
/// Injectable so a fixture can pass PyTorch's exact negatives; the default draws uniformly,
/// with replacement like RepDistiller, from every index except the positive.
pub trait NegativeSampler: Send + std::fmt::Debug {
    /// For each positive index, `k` negative indices in `0..n_data`.
    fn sample(&mut self, positives: &[usize], k: usize, n_data: usize) -> Vec<Vec<usize>>;

    /// The sampler's position in its stream, for a checkpoint (`None`: it cannot be resumed,
    /// and a run with it keeps no checkpoint).
    fn state(&self) -> Option<u64> {
        None
    }

    /// Continues from a position [`NegativeSampler::state`] returned.
    fn set_state(&mut self, state: u64) {
        let _ = state;
    }
}

/// The default sampler: SplitMix64 seeded from the spec, uniform over the other indices.
#[derive(Debug, Clone)]
pub struct UniformNegatives {
    state: u64,
}

impl UniformNegatives {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by rejection so no index is favoured.
    fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }
}

impl NegativeSampler for UniformNegatives {
    fn state(&self) -> Option<u64> {
        Some(self.state)
    }

    fn set_state(&mut self, state: u64) {
        self.state = state;
    }

    fn sample(&mut self, positives: &[usize], k: usize, n_data: usize) -> Vec<Vec<usize>> {
        positives
            .iter()
            .map(|&pos| {
                (0..k)
                    .map(|_| {
                        // Draw from the n_data - 1 other indices: skip over the positive.
                        let r = self.below(n_data as u64 - 1) as usize;
                        if r >= pos { r + 1 } else { r }
                    })
                    .collect()
            })
            .collect()
    }
}

/// Shared, lockable sampler; cloned modules share the stream (a module clone is the same run).
#[derive(Debug, Clone)]
pub struct SharedSampler(pub Arc<Mutex<Box<dyn NegativeSampler>>>);

impl SharedSampler {
    pub fn new(sampler: impl NegativeSampler + 'static) -> Self {
        Self(Arc::new(Mutex::new(Box::new(sampler))))
    }
}

/// The CRD head: embeddings, memory banks and normalisation constants.
#[derive(Module, Debug)]
pub struct Crd {
    pub embed_s: Projector,
    pub embed_t: Projector,
    /// `[n_data, feat_dim]` momentum bank of student embeddings (a buffer, not trained).
    pub memory_s: RunningState<Tensor<2>>,
    /// `[n_data, feat_dim]` momentum bank of teacher embeddings.
    pub memory_t: RunningState<Tensor<2>>,
    /// `[Z_s, Z_t]`; negative until the first batch sets them.
    pub z: RunningState<Tensor<1>>,
    pub nce_k: usize,
    pub nce_t: f64,
    pub momentum: f64,
    pub n_data: usize,
    #[module(skip)]
    pub sampler: SharedSampler,
}

/// What [`Crd::forward`] returns: the loss of each direction.
pub struct CrdOutput {
    /// Student embedding against the teacher bank (`criterion_s(out_s)`).
    pub student_anchor: Tensor<1>,
    /// Teacher embedding against the student bank (`criterion_t(out_t)`).
    pub teacher_anchor: Tensor<1>,
}

impl Crd {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        projector: ProjectorKind,
        s_dim: usize,
        t_dim: usize,
        feat_dim: usize,
        nce_k: usize,
        nce_t: f64,
        momentum: f64,
        n_data: usize,
        seed: u64,
        device: &Device,
    ) -> Self {
        // RepDistiller's init: uniform in [-stdv, stdv], stdv = 1 / sqrt(feat_dim / 3).
        let stdv = 1.0 / (feat_dim as f64 / 3.0).sqrt();
        let mut rng = UniformNegatives::new(seed ^ 0xC0DE_C0DE);
        let mut bank = || {
            let values: Vec<f32> = (0..n_data * feat_dim)
                .map(|_| {
                    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                    (u * 2.0 * stdv - stdv) as f32
                })
                .collect();
            RunningState::new(Tensor::from_data(TensorData::new(values, [n_data, feat_dim]), device))
        };
        let memory_t = bank();
        let memory_s = bank();
        Self {
            embed_s: Projector::new(projector, s_dim, feat_dim, device),
            embed_t: Projector::new(projector, t_dim, feat_dim, device),
            memory_s,
            memory_t,
            z: RunningState::new(Tensor::from_data(TensorData::new(vec![-1.0f32; 2], [2]), device)),
            nce_k,
            nce_t,
            momentum,
            n_data,
            sampler: SharedSampler::new(UniformNegatives::new(seed)),
        }
    }

    /// Replaces the negative sampler (tests pass PyTorch's indices through one).
    pub fn with_sampler(mut self, sampler: impl NegativeSampler + 'static) -> Self {
        self.sampler = SharedSampler::new(sampler);
        self
    }

    /// `contrast` rows are `[positive, negatives...]` (RepDistiller's `contrast_idx`); when
    /// `None`, the negatives come from the sampler.
    pub fn forward(
        &self,
        feat_s: Tensor<2>,
        feat_t: Tensor<2>,
        indices: &[usize],
        contrast: Option<&[Vec<usize>]>,
    ) -> CrdOutput {
        let device = feat_s.device();
        let v_s = self.embed_s.forward(feat_s);
        let v_t = self.embed_t.forward(feat_t);
        let [batch, feat_dim] = v_s.dims();
        let dtype = v_s.dtype();
        let k = self.nce_k;

        let rows: Vec<Vec<usize>> = match contrast {
            Some(rows) => rows.to_vec(),
            None => {
                let negatives =
                    self.sampler.0.lock().expect("crd sampler lock poisoned").sample(indices, k, self.n_data);
                indices
                    .iter()
                    .zip(negatives)
                    .map(|(&p, neg)| std::iter::once(p).chain(neg).collect())
                    .collect()
            }
        };
        let flat: Vec<i64> = rows.iter().flatten().map(|&i| i as i64).collect();
        let flat = Tensor::<1, Int>::from_data(TensorData::new(flat, [batch * (k + 1)]), &device);

        let memory_s = self.memory_s.value_sync().cast(dtype).to_device(&device);
        let memory_t = self.memory_t.value_sync().cast(dtype).to_device(&device);
        // Bank rows are constants of this step: gradients flow through the embeddings only.
        let weight_s = memory_s.clone().select(0, flat.clone()).detach().reshape([batch, k + 1, feat_dim]);
        let weight_t = memory_t.clone().select(0, flat).detach().reshape([batch, k + 1, feat_dim]);
        // [batch, k+1, d] x [batch, d, 1] -> [batch, k+1]
        let score = |w: Tensor<3>, v: Tensor<2>| {
            w.matmul(v.reshape([batch, feat_dim, 1]))
                .reshape([batch, k + 1])
                .mul_scalar(1.0 / self.nce_t)
                .exp()
        };
        let out_t = score(weight_s, v_t.clone());
        let out_s = score(weight_t, v_s.clone());

        // Z from the first batch, then fixed (RepDistiller: out.mean() * n_data).
        let z_state = self.z.value_sync();
        let z: Vec<f64> = z_state.to_data().iter::<f64>().collect();
        let (z_s, z_t) = if z[0] < 0.0 {
            let z_s = out_s.clone().mean().into_scalar::<f64>() * self.n_data as f64;
            let z_t = out_t.clone().mean().into_scalar::<f64>() * self.n_data as f64;
            let z_dtype = z_state.dtype();
            self.z.update(Tensor::from_data(
                TensorData::new(vec![z_s, z_t], [2]),
                (&z_state.device(), z_dtype),
            ));
            (z_s, z_t)
        } else {
            (z[0], z[1])
        };
        let out_s = out_s.mul_scalar(1.0 / z_s);
        let out_t = out_t.mul_scalar(1.0 / z_t);

        // Momentum update of the positive rows, from detached embeddings.
        let positives = Tensor::<1, Int>::from_data(
            TensorData::new(indices.iter().map(|&i| i as i64).collect::<Vec<_>>(), [batch]),
            &device,
        );
        let update = |bank: Tensor<2>, v: Tensor<2>, state: &RunningState<Tensor<2>>| {
            let bank = bank.detach();
            let old = bank.clone().select(0, positives.clone());
            let new = l2_normalize(
                old.clone().mul_scalar(self.momentum) + v.detach().mul_scalar(1.0 - self.momentum),
            );
            // Add the difference: `Add` is the update every backend supports.
            let stored_dtype = state.value().dtype();
            let bank = bank.select_assign(0, positives.clone(), new - old, IndexingUpdateOp::Add);
            state.update(bank.cast(stored_dtype));
        };
        update(memory_s, v_s, &self.memory_s);
        update(memory_t, v_t, &self.memory_t);

        CrdOutput {
            student_anchor: contrast_loss(out_s, self.n_data),
            teacher_anchor: contrast_loss(out_t, self.n_data),
        }
    }
}
