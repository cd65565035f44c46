//! An exponential moving average of a model's weights, as PyTorch's
//! `AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)`:
//! the first update copies the weights, each later one moves every float tensor (parameters
//! and batch-norm running statistics alike) a `1 - decay` share of the way to the model's
//! (`torch._foreach_lerp_(ema, current, 1 - decay)`).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// The settings of an average (`ema:` of a training node).
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmaConfig {
    /// In (0, 1): the share of the average kept at each update.
    pub decay: f64,
    /// The average is what the node outputs (else the trained weights, the average beside).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub output: bool,
}

/// The average of a module, on the plain (non-autodiff) device of the module it is fed.
pub struct Ema<M> {
    decay: f64,
    average: Option<M>,
    updates: u64,
}

impl<M: Module + Clone> Ema<M> {
    pub fn new(decay: f64) -> Self {
        Ema { decay, average: None, updates: 0 }
    }

    /// Folds `current` (a model's `valid()` form: no autodiff) into the average.
    pub fn update(&mut self, current: &M) {
        self.updates += 1;
        let Some(average) = self.average.take() else {
            self.average = Some(current.clone());
            return;
        };
        let mut gather = Gather(Vec::new());
        current.visit(&mut gather);
        let mut lerp = Lerp { current: gather.0.into_iter(), weight: 1.0 - self.decay };
        let average = average.map(&mut lerp);
        assert!(lerp.current.next().is_none(), "the averaged module and the model differ in structure");
        self.average = Some(average);
    }

    /// The average so far (`None` before the first update).
    pub fn average(&self) -> Option<&M> {
        self.average.as_ref()
    }

    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// An average taken up to `updates` steps, as a checkpoint kept it.
    pub fn resumed(decay: f64, average: Option<M>, updates: u64) -> Self {
        Ema { decay, average, updates }
    }
}

struct Gather(Vec<Tensor<1>>);

impl ModuleVisitor for Gather {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let n = t.shape().num_elements();
        self.0.push(t.reshape([n]));
    }
}

struct Lerp {
    current: std::vec::IntoIter<Tensor<1>>,
    weight: f64,
}

impl ModuleMapper for Lerp {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, t, mapper) = param.consume();
        let dims = t.dims();
        let current =
            self.current.next().expect("a tensor of the model for each of the average").reshape(dims);
        // torch's lerp for a weight below 0.5: start + weight * (end - start).
        let t = t.clone() + (current - t).mul_scalar(self.weight);
        Param::from_mapped_value(id, t, mapper)
    }
}
