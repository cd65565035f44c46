//! The state a training step depends on, by parameter path, for checkpoints inside a node
//! (issue 15): every float tensor of a module (parameters and running statistics alike, of the
//! model and of its loss heads) and the optimizer's per-parameter state (SGD momentum buffers,
//! AdamW moments and step counts). Restored into a freshly built module and trainer, training
//! continues bit for bit as if it had never stopped (`state_tests` below).
//!
//! Paths are what [`crate::engine::Trainer`] uses for parameter rules: field names and vector
//! indices joined by `.`, enum variant names left out. Parameter ids are not stored: a rebuilt
//! module has new ones, and the optimizer state is re-attached by path.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Tensor, TensorData};

use crate::engine::error::EngineError;
use crate::engine::optim::{PathTracker, float_params};
use crate::engine::safetensors::{self, Data, Entry};

/// Float tensors by path: `(shape, values)`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tensors(pub BTreeMap<String, (Vec<usize>, Vec<f32>)>);

/// Every float tensor of `module` (values as f32), by path.
pub fn tensors_of<M: Module>(module: &M) -> Tensors {
    // `valid()` first: it folds running statistics' pending per-thread updates into their values
    // (a plain visit reads them one update behind), as the next training step would.
    Tensors(
        float_params(&module.valid(), true)
            .into_iter()
            .map(|p| (p.path, (p.shape, p.values.expect("asked for values"))))
            .collect(),
    )
}

/// `module` with every float tensor replaced by the one of `tensors` at its path (dtype, device,
/// parameter id and `require_grad` kept). Every tensor of the module must be there with its
/// shape, and nothing else: else an error naming the first tensor at fault, and nothing changed.
///
/// Running statistics are buffers shared between a module and its clones, and are replaced in
/// place: pass a module of its own (`valid()` makes one), not a clone of one still in use.
pub fn with_tensors<M: Module>(module: M, tensors: &Tensors, source: &Path) -> Result<M, EngineError> {
    check_tensors(&module, tensors, source)?;
    struct Apply<'a> {
        path: PathTracker,
        tensors: &'a Tensors,
    }
    impl ModuleMapper for Apply<'_> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (shape, values) = &self.tensors.0[&self.path.path()];
            let (id, t, mapper) = param.consume();
            let (device, dtype, grad) = (t.device(), t.dtype(), t.is_require_grad());
            let mut new =
                Tensor::<D>::from_data(TensorData::new(values.clone(), shape.clone()), &device).cast(dtype);
            if grad {
                new = new.require_grad();
            }
            Param::from_mapped_value(id, new, mapper)
        }
    }
    Ok(module.map(&mut Apply { path: PathTracker::default(), tensors }))
}

/// Whether [`with_tensors`] would take `tensors` for `module` (the same error if not), changing
/// nothing.
pub fn check_tensors<M: Module>(module: &M, tensors: &Tensors, source: &Path) -> Result<(), EngineError> {
    let expected = tensors_shapes(module);
    for (path, shape) in &expected {
        match tensors.0.get(path) {
            None => {
                return Err(EngineError::MissingTensor {
                    path: source.into(),
                    name: path.clone(),
                    expected: shape.clone(),
                });
            }
            Some((s, _)) if s != shape => {
                return Err(EngineError::ShapeMismatch {
                    path: source.into(),
                    name: path.clone(),
                    expected: shape.clone(),
                    found: s.clone(),
                });
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = tensors.0.keys().find(|k| !expected.contains_key(*k)) {
        return Err(EngineError::Checkpoint {
            path: source.into(),
            reason: format!("tensor {extra:?} is not part of the module (a state of another model?)"),
        });
    }
    Ok(())
}

fn tensors_shapes<M: Module>(module: &M) -> BTreeMap<String, Vec<usize>> {
    float_params(module, false).into_iter().map(|p| (p.path, p.shape)).collect()
}

/// A state file: named sections of tensors and string metadata, written atomically (a
/// temporary file, then renamed) as one safetensors file, tensor names `<section>/<path>`.
pub fn write_state(
    file: &Path,
    sections: &[(&str, &Tensors)],
    metadata: &BTreeMap<String, String>,
) -> Result<(), EngineError> {
    let mut all = BTreeMap::new();
    for (section, t) in sections {
        for (path, (shape, values)) in &t.0 {
            all.insert(
                format!("{section}/{path}"),
                Entry { shape: shape.clone(), data: Data::F32(values.clone()) },
            );
        }
    }
    safetensors::write(file, &all, metadata)
}

/// A state file's tensors by section, and its metadata.
pub type Sections = (BTreeMap<String, Tensors>, BTreeMap<String, String>);

/// The sections and metadata of a file [`write_state`] wrote.
pub fn read_state(file: &Path) -> Result<Sections, EngineError> {
    let (tensors, meta) = safetensors::read_with_metadata(file)?;
    let mut sections: BTreeMap<String, Tensors> = BTreeMap::new();
    for (name, e) in tensors {
        let Some((section, path)) = name.split_once('/') else {
            return Err(EngineError::Checkpoint {
                path: file.into(),
                reason: format!("tensor {name:?} belongs to no section (not a training state file)"),
            });
        };
        let Data::F32(values) = e.data else {
            return Err(EngineError::Checkpoint {
                path: file.into(),
                reason: format!("tensor {name:?} is not float"),
            });
        };
        sections.entry(section.to_string()).or_default().0.insert(path.to_string(), (e.shape, values));
    }
    Ok((sections, meta))
}

#[cfg(test)]
mod state_tests {
    use burn::tensor::{Device, Int};

    use super::*;
    use crate::engine::parity_tests::{config, fixture_dir};
    use crate::engine::{OptimizerConfig, Trainer, TrainerConfig, cross_entropy, load, save};

    fn batch(step: usize, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let n = 6;
        let x: Vec<f32> =
            (0..n * 3 * 8 * 8).map(|i| (((i * 7919 + step * 104729) % 997) as f32 / 997.0) - 0.5).collect();
        let y: Vec<i64> = (0..n).map(|i| ((i + step) % 5) as i64).collect();
        (
            Tensor::<4>::from_data(TensorData::new(x, [n, 3, 8, 8]), device),
            Tensor::<1, Int>::from_data(TensorData::new(y, [n]), device),
        )
    }

    fn steps(
        model: crate::engine::Model,
        trainer: &mut Trainer,
        from: usize,
        to: usize,
        device: &Device,
    ) -> crate::engine::Model {
        let mut model = model;
        for step in from..to {
            trainer.set_position(0, step, to.max(8));
            let (x, y) = batch(step, device);
            let (_, z) = model.forward(x);
            model = trainer.step(model, cross_entropy(z, y)).0;
        }
        model
    }

    fn bytes(model: &crate::engine::Model) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        save(model, &p).unwrap();
        std::fs::read(p).unwrap()
    }

    /// Train 3 steps, write the state, rebuild a model from other random weights and a new
    /// trainer, restore, train 3 more: bit for bit the 6-step run, for SGD (momentum buffers)
    /// and AdamW (moments and step counts), with a cosine schedule per step and batch norm.
    #[test]
    fn a_restored_state_continues_bit_for_bit() {
        let ad = Device::flex().autodiff();
        for opt in [
            OptimizerConfig::Sgd { lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 5e-4 },
            OptimizerConfig::AdamW { lr: 1e-2, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01 },
        ] {
            let mut cfg = TrainerConfig::new(opt.clone());
            cfg.schedule = crate::engine::ScheduleConfig::Cosine;
            cfg.step_every = crate::engine::StepEvery::Step;
            cfg.grad_clip = Some(1.0);
            let start = || load(&config("cnn"), &fixture_dir().join("cnn.weights.safetensors"), &ad).unwrap();
            let whole = steps(start(), &mut Trainer::new(cfg.clone()).unwrap(), 0, 6, &ad);

            let mut t1 = Trainer::new(cfg.clone()).unwrap();
            let half = steps(start(), &mut t1, 0, 3, &ad);
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("state.safetensors");
            let meta = BTreeMap::from([("steps".to_string(), t1.steps().to_string())]);
            write_state(&file, &[("model", &tensors_of(&half)), ("optimizer", &t1.state_of(&half))], &meta)
                .unwrap();
            drop((half, t1));

            let (sections, meta) = read_state(&file).unwrap();
            let fresh = config("cnn").init(&ad).unwrap();
            assert!(bytes(&fresh.valid()) != bytes(&start().valid()), "the rebuilt model starts elsewhere");
            let model = with_tensors(fresh, &sections["model"], &file).unwrap();
            let mut t2 = Trainer::new(cfg).unwrap();
            t2.restore(&model, &sections["optimizer"], meta["steps"].parse().unwrap(), &file).unwrap();
            let resumed = steps(model, &mut t2, 3, 6, &ad);
            let (a, b) = (tensors_of(&resumed), tensors_of(&whole));
            for (path, (_, v)) in &b.0 {
                assert!(a.0[path].1 == *v, "{opt:?}: {path} differs after resuming");
            }
            assert!(bytes(&resumed.valid()) == bytes(&whole.valid()), "{opt:?}: the saved files differ");
        }
    }

    #[test]
    fn a_state_of_another_model_names_the_tensor_at_fault() {
        let ad = Device::flex().autodiff();
        let model = config("cnn").init(&ad).unwrap();
        let mut t = tensors_of(&model);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.safetensors");
        t.0.get_mut("head.weight").unwrap().0 = vec![1, 1];
        let e = with_tensors(config("cnn").init(&ad).unwrap(), &t, &file).unwrap_err().to_string();
        assert!(e.contains("\"head.weight\" has shape [1, 1]"), "{e}");
        t.0.remove("head.weight");
        let e = with_tensors(config("cnn").init(&ad).unwrap(), &t, &file).unwrap_err().to_string();
        assert!(e.contains("missing tensor \"head.weight\""), "{e}");
        let mut t = tensors_of(&model);
        t.0.insert("extra".into(), (vec![1], vec![0.0]));
        let e = with_tensors(model, &t, &file).unwrap_err().to_string();
        assert!(e.contains("\"extra\" is not part of the module"), "{e}");
    }
}
