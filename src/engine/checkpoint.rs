//! Checkpoints in safetensors with torchvision's tensor names (`conv1.weight`,
//! `layer1.0.bn1.running_var`, `features.3.conv.1.0.weight`, `heads.head.bias`, ...), so
//! weights exported from a PyTorch hub load directly and ours load in PyTorch.
//!
//! Loading is strict: every model tensor must be present with its exact shape, and every
//! tensor of the file must belong to the model (BatchNorm's `num_batches_tracked` excepted),
//! unless [`LoadOptions::skip_head`] leaves the head at its initialisation (fine-tuning an
//! ImageNet backbone on a task with another class count).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Tensor, TensorData};

use crate::engine::error::EngineError;
use crate::engine::models::{ArchKind, Model, ModelConfig};
use crate::engine::optim::{PathTracker, float_params};
use crate::engine::safetensors::{self, Data, Entry};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadOptions {
    /// Keep the head's initial weights and ignore the file's head tensors.
    pub skip_head: bool,
}

/// The torchvision name of a parameter from its path components (enum variants skipped).
pub(crate) fn torch_name(kind: ArchKind, comps: &[&str]) -> String {
    let mut c: Vec<String> = comps.iter().map(|s| s.to_string()).collect();
    let n = c.len();
    if matches!(kind, ArchKind::ResNet | ArchKind::MobileNetV2) && n >= 2 {
        // `ConvBn { conv, bn }` is a torchvision Sequential(conv, bn).
        match c[n - 2].as_str() {
            "conv" => c[n - 2] = "0".into(),
            "bn" => c[n - 2] = "1".into(),
            _ => {}
        }
    }
    match kind {
        ArchKind::ResNet if c.len() >= 2 && c[0] == "layers" => {
            let stage: usize = c[1].parse().unwrap_or(0);
            c[0] = format!("layer{}", stage + 1);
            c.remove(1);
        }
        ArchKind::MobileNetV2 if c.len() >= 2 && c[0] == "classifier" && c[1] == "linear" => {
            c[1] = "1".into();
        }
        ArchKind::Vit => {
            if c.len() >= 3 && c[0] == "encoder" && c[1] == "layers" {
                c[2] = format!("encoder_layer_{}", c[2]);
            }
            if let Some(i) = c.iter().position(|s| s == "mlp") {
                if let Some(next) = c.get_mut(i + 1) {
                    match next.as_str() {
                        "fc1" => *next = "0".into(),
                        "fc2" => *next = "3".into(),
                        _ => {}
                    }
                }
            }
        }
        _ => {}
    }
    c.join(".")
}

fn collect(model: &Model, with_data: bool) -> Vec<(String, String, Vec<usize>, Option<Vec<f32>>)> {
    let kind = model.kind();
    float_params(model, with_data)
        .into_iter()
        .map(|p| {
            let comps: Vec<&str> = p.components.iter().map(String::as_str).collect();
            (p.path, torch_name(kind, &comps), p.shape, p.values)
        })
        .collect()
}

/// `(torchvision name, shape)` of every tensor a checkpoint of `model` holds (buffers too,
/// `num_batches_tracked` excepted).
pub fn torch_state_names(model: &Model) -> Vec<(String, Vec<usize>)> {
    collect(model, false).into_iter().map(|(_, n, s, _)| (n, s)).collect()
}

/// Save `model` (parameters and batch-norm running statistics) to `path`.
pub fn save(model: &Model, path: &Path) -> Result<(), EngineError> {
    // `valid()` folds per-thread running-statistics updates into the stored values.
    let model = model.valid();
    let mut tensors = BTreeMap::new();
    for (_, name, shape, data) in collect(&model, true) {
        if let Some(prefix) = name.strip_suffix("running_mean") {
            // torchvision state dicts carry it; strict `load_state_dict` wants it.
            tensors.insert(
                format!("{prefix}num_batches_tracked"),
                Entry { shape: vec![], data: Data::I64(vec![0]) },
            );
        }
        tensors.insert(name, Entry { shape, data: Data::F32(data.unwrap()) });
    }
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::write(path, &tensors, &meta)
}

/// Build the model of `config` on `device` and load its weights from `path`.
pub fn load(config: &ModelConfig, path: &Path, device: &burn::tensor::Device) -> Result<Model, EngineError> {
    load_into(config.init(device)?, path, &LoadOptions::default())
}

/// Load weights from `path` into an existing model.
pub fn load_into(model: Model, path: &Path, options: &LoadOptions) -> Result<Model, EngineError> {
    let mut file = safetensors::read(path)?;
    let head = model.head_path().to_string();
    let expected = collect(&model, false);
    // Check everything first so that the error names the first bad tensor and the model is
    // never half-loaded.
    for (burn_path, name, shape, _) in &expected {
        if options.skip_head && is_under(burn_path, &head) {
            continue;
        }
        match file.get(name) {
            None => {
                return Err(EngineError::MissingTensor {
                    path: path.into(),
                    name: name.clone(),
                    expected: shape.clone(),
                });
            }
            Some(e) if &e.shape != shape => {
                return Err(EngineError::ShapeMismatch {
                    path: path.into(),
                    name: name.clone(),
                    expected: shape.clone(),
                    found: e.shape.clone(),
                });
            }
            Some(Entry { data: Data::I64(_), .. }) => {
                return Err(EngineError::Checkpoint {
                    path: path.into(),
                    reason: format!("tensor {name:?} is an integer tensor, expected floats"),
                });
            }
            Some(_) => {}
        }
    }
    let known: BTreeSet<&str> = expected.iter().map(|(_, n, _, _)| n.as_str()).collect();
    let head_names: BTreeSet<&str> =
        expected.iter().filter(|(p, ..)| is_under(p, &head)).map(|(_, n, _, _)| n.as_str()).collect();
    let head_prefix = head_names.iter().next().map(|n| n.rsplit_once('.').map_or("", |x| x.0).to_string());
    if let Some(extra) = file.keys().find(|k| {
        !known.contains(k.as_str())
            && !k.ends_with("num_batches_tracked")
            && !(options.skip_head && head_prefix.as_deref().is_some_and(|h| k.starts_with(h)))
    }) {
        return Err(EngineError::Checkpoint {
            path: path.into(),
            reason: format!(
                "tensor {extra:?} is not part of this model (a checkpoint of another architecture or size?)"
            ),
        });
    }
    let mut mapper = Apply {
        kind: model.kind(),
        path: PathTracker::default(),
        head,
        skip_head: options.skip_head,
        file: &mut file,
    };
    Ok(model.map(&mut mapper))
}

fn is_under(path: &str, prefix: &str) -> bool {
    path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'.'))
}

struct Apply<'a> {
    kind: ArchKind,
    path: PathTracker,
    head: String,
    skip_head: bool,
    file: &'a mut BTreeMap<String, Entry>,
}

impl ModuleMapper for Apply<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.skip_head && is_under(&self.path.path(), &self.head) {
            return param;
        }
        let name = torch_name(self.kind, &self.path.components());
        // Checked in `load_into` before mapping.
        let Some(Entry { shape, data: Data::F32(values) }) = self.file.remove(&name) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let device = tensor.device();
        let mut t = Tensor::<D>::from_data(TensorData::new(values, shape), &device);
        if require_grad {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

/// Loading the hub-style fixture written by `tools/fixtures_pretrained.py` (see its
/// docstring): torchvision names, 1 input channel, a 1000-class head.
#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use burn::tensor::Device;

    use super::*;
    use crate::engine::models::{Arch, Stem};

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pretrained/resnet8_w4_grey.safetensors")
    }

    /// The fixture's architecture as a spec says it (`resnet`, depth 8, width 0.25, CIFAR
    /// stem) on the 8x8 digits with their 10 classes.
    fn digits_resnet8(in_channels: usize) -> ModelConfig {
        ModelConfig {
            arch: Arch::ResNet { depth: 8, width_mult: 0.25, stem: Stem::Cifar },
            in_channels,
            image_size: 8,
            num_classes: 10,
        }
    }

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    /// `torchvision name -> (is head, shape, values)` of every tensor of `model`.
    fn tensors(model: &Model) -> BTreeMap<String, (bool, Vec<usize>, Vec<f32>)> {
        let head = model.head_path();
        collect(model, true)
            .into_iter()
            .map(|(p, n, s, d)| (n, (is_under(&p, head), s, d.unwrap())))
            .collect()
    }

    #[test]
    fn pretrained_fixture_loads_the_backbone_bit_for_bit_and_keeps_the_head() {
        let device = Device::flex();
        let fresh = digits_resnet8(1).init(&device).unwrap();
        let before = tensors(&fresh);
        let loaded = load_into(fresh, &fixture(), &LoadOptions { skip_head: true }).unwrap();
        let after = tensors(&loaded);
        let file = safetensors::read(&fixture()).unwrap();

        let mut backbone = 0;
        for (name, (head, shape, values)) in &after {
            if *head {
                assert_eq!(bits(values), bits(&before[name].2), "{name}: the head keeps its initialisation");
                continue;
            }
            let Some(Entry { shape: file_shape, data: Data::F32(file_values) }) = file.get(name) else {
                panic!("{name}: not a float tensor of the fixture");
            };
            assert_eq!(shape, file_shape, "{name}");
            assert_eq!(bits(values), bits(file_values), "{name}: not the file's values");
            backbone += 1;
        }
        // Every file tensor but the 1000-class head and the batch counters went in.
        let in_file =
            file.keys().filter(|k| !k.starts_with("fc.") && !k.ends_with("num_batches_tracked")).count();
        assert_eq!(backbone, in_file);
        assert_eq!(after["fc.weight"].1, vec![10, 16]);
        // The fixture's statistics are a trained network's, not a fresh one's 0/1.
        assert!(after["layer3.0.bn2.running_var"].2.iter().all(|&v| v != 1.0));

        // Without skip_head the 1000-class head does not fit a 10-class task.
        let err = load_into(digits_resnet8(1).init(&device).unwrap(), &fixture(), &LoadOptions::default())
            .unwrap_err();
        assert!(matches!(&err, EngineError::ShapeMismatch { name, .. } if name == "fc.weight"), "{err}");
    }

    #[test]
    fn pretrained_fixture_into_another_in_channels_names_conv1_and_both_shapes() {
        let device = Device::flex();
        let rgb = digits_resnet8(3).init(&device).unwrap();
        let err = load_into(rgb, &fixture(), &LoadOptions { skip_head: true }).unwrap_err();
        let EngineError::ShapeMismatch { name, expected, found, .. } = &err else {
            panic!("expected a shape mismatch, got {err}");
        };
        assert_eq!(
            (name.as_str(), expected.as_slice(), found.as_slice()),
            ("conv1.weight", &[4, 3, 3, 3][..], &[4, 1, 3, 3][..])
        );
        let msg = err.to_string();
        assert!(msg.contains("resnet8_w4_grey.safetensors"), "{msg}");
        assert!(
            msg.contains("tensor \"conv1.weight\" has shape [4, 1, 3, 3], the model expects [4, 3, 3, 3]"),
            "{msg}"
        );
    }

    #[test]
    fn pretrained_file_missing_a_tensor_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = safetensors::read(&fixture()).unwrap();
        assert!(file.remove("layer2.0.downsample.1.running_mean").is_some());
        let path = dir.path().join("cut.safetensors");
        safetensors::write(&path, &file, &BTreeMap::new()).unwrap();

        let model = digits_resnet8(1).init(&Device::flex()).unwrap();
        let err = load_into(model, &path, &LoadOptions { skip_head: true }).unwrap_err();
        let EngineError::MissingTensor { name, expected, .. } = &err else {
            panic!("expected a missing tensor, got {err}");
        };
        assert_eq!((name.as_str(), expected.as_slice()), ("layer2.0.downsample.1.running_mean", &[8][..]));
        let msg = err.to_string();
        assert!(msg.contains("cut.safetensors"), "{msg}");
        assert!(
            msg.contains("missing tensor \"layer2.0.downsample.1.running_mean\" (expected shape [8])"),
            "{msg}"
        );
    }
}
