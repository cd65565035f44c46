//! Run-time device selection from the spec's `device:` string.

use burn::tensor::Device;

use crate::engine::error::EngineError;

/// Parse `"cpu"`, `"cuda:N"` (or `"cuda"` for index 0) or `"auto"` into a burn device
/// (without autodiff; call `.autodiff()` to train on it).
///
/// `auto` picks CUDA device 0 when the binary was built with the `cuda` feature and a GPU
/// answers, else the CPU.
pub fn parse_device(spec: &str) -> Result<Device, EngineError> {
    let s = spec.trim();
    match s {
        "cpu" => Ok(Device::flex()),
        "auto" => Ok(auto_device()),
        _ => {
            let Some(rest) = s.strip_prefix("cuda") else {
                return Err(EngineError::Device {
                    spec: spec.into(),
                    reason: "expected cpu, cuda:N or auto".into(),
                });
            };
            let index = match rest.strip_prefix(':') {
                None if rest.is_empty() => 0,
                Some(n) => n.parse::<usize>().map_err(|_| EngineError::Device {
                    spec: spec.into(),
                    reason: format!("expected a device index after cuda:, got {n:?}"),
                })?,
                None => {
                    return Err(EngineError::Device {
                        spec: spec.into(),
                        reason: "expected cpu, cuda:N or auto".into(),
                    });
                }
            };
            cuda_device(spec, index)
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(_spec: &str, index: usize) -> Result<Device, EngineError> {
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(spec: &str, _index: usize) -> Result<Device, EngineError> {
    Err(EngineError::Device {
        spec: spec.into(),
        reason:
            "this binary was built without CUDA support; rebuild with `--features cuda` or use device: cpu"
                .into(),
    })
}

#[cfg(feature = "cuda")]
fn auto_device() -> Device {
    // Probing runs a tiny op; a missing driver panics inside the runtime, so catch it.
    let probe = std::panic::catch_unwind(|| {
        let d = Device::cuda(0);
        let t = burn::tensor::Tensor::<1>::ones([1], &d);
        t.into_scalar::<f32>() == 1.0
    });
    match probe {
        Ok(true) => Device::cuda(0),
        _ => Device::flex(),
    }
}

#[cfg(not(feature = "cuda"))]
fn auto_device() -> Device {
    Device::flex()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_auto() {
        assert!(!parse_device("cpu").unwrap().is_autodiff());
        assert!(parse_device("auto").is_ok());
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        for bad in ["gpu", "cuda:x", "cudax", ""] {
            let err = parse_device(bad).unwrap_err().to_string();
            assert!(err.contains("expected"), "{bad}: {err}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_says_how_to_fix() {
        let err = parse_device("cuda:1").unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
