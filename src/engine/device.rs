//! Devices: the spec's `device:` string to a burn device, and what this machine offers for CUDA.
//!
//! A CUDA device is created only after [`cuda`] has asked the runtime what exists: the driver
//! library (`libcuda`), the GPUs it lists, NVRTC (which compiles burn's kernels at run time) and
//! the CUDA headers NVRTC includes. Creating a device without them panics inside the runtime (and
//! a second thread then panics on its closed channel); asking first turns each missing piece into
//! one error that says what was looked for, what was found and what to do.

use std::path::PathBuf;
use std::sync::OnceLock;

use burn::tensor::Device;

use crate::engine::error::EngineError;

/// One GPU as the driver lists it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Gpu {
    /// The CUDA index (`cuda:N`), after `CUDA_VISIBLE_DEVICES`.
    pub index: u32,
    pub name: String,
    pub memory_bytes: u64,
    /// Compute capability, e.g. `9.0` for an H100/H200.
    pub compute_capability: String,
}

/// What this machine and binary offer for CUDA. Each field is what was found, or why not.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CudaReport {
    /// Built with the `cuda` feature.
    pub built: bool,
    /// The CUDA API version the binary was built against (`CUDARC_CUDA_VERSION`), e.g. `13.0`:
    /// the oldest driver CUDA version it runs with.
    pub api_version: Option<String>,
    /// The driver's CUDA version (`cuDriverGetVersion`), e.g. `13.0`.
    #[serde(serialize_with = "found_or_missing")]
    pub driver: Result<String, String>,
    /// NVRTC's version, e.g. `13.0`.
    #[serde(serialize_with = "found_or_missing")]
    pub nvrtc: Result<String, String>,
    /// The CUDA include folder NVRTC is given.
    #[serde(serialize_with = "found_or_missing")]
    pub headers: Result<PathBuf, String>,
    pub gpus: Vec<Gpu>,
}

/// `{"found": ...}` or `{"missing": why}` (doctor --json).
fn found_or_missing<T: serde::Serialize, S: serde::Serializer>(
    r: &Result<T, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(1))?;
    match r {
        Ok(v) => m.serialize_entry("found", v)?,
        Err(e) => m.serialize_entry("missing", e)?,
    }
    m.end()
}

/// The headers burn's generated kernels include (cubecl-cpp's CUDA dialect).
pub const CUDA_HEADERS: [&str; 4] = ["cuda_fp16.h", "cuda_bf16.h", "mma.h", "cooperative_groups.h"];

impl CudaReport {
    /// Why CUDA cannot run here: what is missing and how to fix it, or `None` when every piece
    /// is present and at least one GPU is listed.
    pub fn problem(&self) -> Option<String> {
        if !self.built {
            return Some(
                "this binary was built without CUDA support; build it with `cargo build --release --features cuda` (docs/engine.md, \"CUDA\"), or use device: cpu".into(),
            );
        }
        if let Err(why) = &self.driver {
            return Some(format!(
                "{why}; install the NVIDIA driver (it provides libcuda), or use device: cpu"
            ));
        }
        if self.gpus.is_empty() {
            return Some(
                "the NVIDIA driver lists no GPU (is CUDA_VISIBLE_DEVICES empty, or are the GPUs taken by another container?); use device: cpu on a machine without one".into(),
            );
        }
        if let Err(why) = &self.nvrtc {
            return Some(format!(
                "{why}; burn compiles its kernels with NVRTC at run time: install the CUDA toolkit's NVRTC (or `pip install nvidia-cuda-nvrtc`) and put its lib folder on LD_LIBRARY_PATH"
            ));
        }
        if let Err(why) = &self.headers {
            return Some(format!(
                "{why}; NVRTC needs the CUDA headers ({}): install the CUDA toolkit or set CUDA_PATH to a folder whose include/ has them",
                CUDA_HEADERS.join(", ")
            ));
        }
        None
    }

    /// `Ok` when `cuda:index` can be used here.
    pub fn check_index(&self, index: u32) -> Result<(), String> {
        if let Some(p) = self.problem() {
            return Err(p);
        }
        if self.gpus.iter().any(|g| g.index == index) {
            Ok(())
        } else {
            Err(format!(
                "there is no GPU cuda:{index}: the driver lists {} ({}); use one of those indices",
                self.gpus.len(),
                self.gpus.iter().map(|g| format!("cuda:{}", g.index)).collect::<Vec<_>>().join(", ")
            ))
        }
    }

    /// Human-readable lines (`distillery doctor`).
    pub fn lines(&self) -> Vec<String> {
        let show = |r: &Result<String, String>| match r {
            Ok(v) => v.clone(),
            Err(e) => format!("not found ({e})"),
        };
        if !self.built {
            return vec!["cuda: not built (the `cuda` feature is off)".into()];
        }
        let mut out = vec![
            format!(
                "cuda: built against CUDA {} (runs with drivers of that CUDA version or newer)",
                self.api_version.as_deref().unwrap_or("?")
            ),
            format!("  driver (libcuda): {}", show(&self.driver)),
            format!("  nvrtc: {}", show(&self.nvrtc)),
            format!(
                "  headers: {}",
                match &self.headers {
                    Ok(p) => p.display().to_string(),
                    Err(e) => format!("not found ({e})"),
                }
            ),
        ];
        if self.gpus.is_empty() {
            out.push("  gpus: none".into());
        }
        for g in &self.gpus {
            out.push(format!(
                "  cuda:{}: {} ({:.1} GiB, compute capability {})",
                g.index,
                g.name,
                g.memory_bytes as f64 / (1u64 << 30) as f64,
                g.compute_capability
            ));
        }
        out.push(match self.problem() {
            None => "  ready: device: cuda runs here".into(),
            Some(p) => format!("  not ready: {p}"),
        });
        out
    }
}

/// What this machine offers for CUDA, asked once per process (loading the libraries is not free,
/// and the answer does not change while it runs).
pub fn cuda() -> &'static CudaReport {
    static REPORT: OnceLock<CudaReport> = OnceLock::new();
    REPORT.get_or_init(probe)
}

#[cfg(not(feature = "cuda"))]
fn probe() -> CudaReport {
    fn off<T>() -> Result<T, String> {
        Err("not built with the `cuda` feature".to_string())
    }
    CudaReport { built: false, api_version: None, driver: off(), nvrtc: off(), headers: off(), gpus: vec![] }
}

#[cfg(feature = "cuda")]
fn probe() -> CudaReport {
    let api_version = Some(cuda_sys::version(cudarc::driver::sys::CUDA_VERSION as i32));
    let driver = cuda_sys::driver_version();
    let gpus = if driver.is_ok() { cuda_sys::gpus() } else { Vec::new() };
    CudaReport {
        built: true,
        api_version,
        driver,
        nvrtc: cuda_sys::nvrtc_version(),
        headers: cuda_sys::headers(),
        gpus,
    }
}

/// The driver, NVRTC and headers, asked the way burn's CUDA runtime will use them (cudarc's
/// dynamic loading and cubecl-cuda's CUDA path), each behind a presence check so that nothing
/// here panics on a machine without them.
#[cfg(feature = "cuda")]
mod cuda_sys {
    use std::path::PathBuf;

    use super::{CUDA_HEADERS, Gpu};

    /// `13000` -> `13.0` (CUDA's encoding: 1000 x major + 10 x minor).
    pub fn version(v: i32) -> String {
        format!("{}.{}", v / 1000, (v % 1000) / 10)
    }

    /// The names cudarc's loader tries, Linux's spelling (`libcuda.so`, `libcuda.so.13`, ...).
    fn candidates(lib: &str) -> String {
        let plain = format!("lib{lib}.so");
        let mut names: Vec<String> = cudarc::get_lib_name_candidates(lib)
            .into_iter()
            .filter(|n| n == &plain || n.starts_with(&format!("{plain}.")))
            .collect();
        names.dedup();
        names.join(", ")
    }

    pub fn driver_version() -> Result<String, String> {
        // SAFETY: only tries to dlopen each candidate name.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(format!(
                "no NVIDIA driver library: looked for {} on the loader path (LD_LIBRARY_PATH, the system's library folders)",
                candidates("cuda")
            ));
        }
        cudarc::driver::result::init()
            .map_err(|e| format!("the NVIDIA driver did not start (cuInit: {e})"))?;
        let mut v = 0;
        // SAFETY: writes one int; the library is loaded (checked above).
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) }
            .result()
            .map_err(|e| format!("cuDriverGetVersion: {e}"))?;
        Ok(version(v))
    }

    /// The GPUs, as burn's runtime enumerates them, with what the driver says of each.
    pub fn gpus() -> Vec<Gpu> {
        use cudarc::driver::sys::CUdevice_attribute::*;
        let count = burn::tensor::Device::enumerate(burn::tensor::DeviceType::Cuda).into_iter().count();
        (0..count)
            .filter_map(|i| {
                let dev = cudarc::driver::result::device::get(i as i32).ok()?;
                let name = cudarc::driver::result::device::get_name(dev).unwrap_or_else(|_| "unknown".into());
                // SAFETY: a valid device handle from `device::get`; read-only queries.
                let (memory, major, minor) = unsafe {
                    (
                        cudarc::driver::result::device::total_mem(dev).unwrap_or(0) as u64,
                        cudarc::driver::result::device::get_attribute(
                            dev,
                            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                        )
                        .unwrap_or(0),
                        cudarc::driver::result::device::get_attribute(
                            dev,
                            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                        )
                        .unwrap_or(0),
                    )
                };
                Some(Gpu {
                    index: i as u32,
                    name,
                    memory_bytes: memory,
                    compute_capability: format!("{major}.{minor}"),
                })
            })
            .collect()
    }

    pub fn nvrtc_version() -> Result<String, String> {
        // SAFETY: only tries to dlopen each candidate name.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(format!(
                "no NVRTC library: looked for {} on the loader path (LD_LIBRARY_PATH, the system's library folders)",
                candidates("nvrtc")
            ));
        }
        let (mut major, mut minor) = (0, 0);
        // SAFETY: writes two ints; the library is loaded (checked above).
        unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| format!("nvrtcVersion: {e:?}"))?;
        Ok(format!("{major}.{minor}"))
    }

    /// The include folder cubecl-cuda hands NVRTC (CUDA_PATH, else /usr/local/cuda, /opt/cuda,
    /// /usr when /usr/bin/nvcc exists), with the headers it needs.
    pub fn headers() -> Result<PathBuf, String> {
        let Some(root) = cubecl_cuda::install::cuda_path() else {
            return Err("no CUDA installation: CUDA_PATH is unset and none of /usr/local/cuda, /opt/cuda, /usr/bin/nvcc exists".into());
        };
        let include = root.join("include");
        let missing: Vec<_> = CUDA_HEADERS.iter().filter(|h| !include.join(h).is_file()).copied().collect();
        if missing.is_empty() {
            Ok(include)
        } else {
            Err(format!("{} lacks {}", include.display(), missing.join(", ")))
        }
    }
}

/// Parse `"cpu"`, `"cuda:N"` (or `"cuda"` for index 0) or `"auto"` into a burn device
/// (without autodiff; call `.autodiff()` to train on it).
///
/// `cuda:N` is created only when [`cuda`] finds everything it needs and a GPU N; otherwise this
/// is an error saying what is missing. `auto` is CUDA device 0 when CUDA can run here, else the
/// CPU.
pub fn parse_device(spec: &str) -> Result<Device, EngineError> {
    let s = spec.trim();
    match s {
        "cpu" => Ok(Device::flex()),
        "auto" => Ok(if cuda().problem().is_none() { cuda_device(0) } else { Device::flex() }),
        _ => {
            let Some(rest) = s.strip_prefix("cuda") else {
                return Err(EngineError::Device {
                    spec: spec.into(),
                    reason: "expected cpu, cuda:N or auto".into(),
                });
            };
            let index = match rest.strip_prefix(':') {
                None if rest.is_empty() => 0,
                Some(n) => n.parse::<u32>().map_err(|_| EngineError::Device {
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
            cuda().check_index(index).map_err(|reason| EngineError::Device { spec: spec.into(), reason })?;
            Ok(cuda_device(index))
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(index: u32) -> Device {
    Device::cuda(index as usize)
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_index: u32) -> Device {
    unreachable!("cuda().problem() is always Some without the cuda feature")
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
        assert!(cuda().lines()[0].contains("not built"));
    }

    /// A report missing each piece names that piece; complete, it has no problem.
    #[test]
    fn a_report_names_the_first_missing_piece() {
        let gpu = Gpu { index: 0, name: "G".into(), memory_bytes: 1 << 30, compute_capability: "9.0".into() };
        let full = CudaReport {
            built: true,
            api_version: Some("13.0".into()),
            driver: Ok("13.0".into()),
            nvrtc: Ok("13.0".into()),
            headers: Ok("/usr/local/cuda/include".into()),
            gpus: vec![gpu],
        };
        assert_eq!(full.problem(), None);
        assert_eq!(full.check_index(0), Ok(()));
        assert!(full.check_index(3).unwrap_err().contains("no GPU cuda:3"));
        let mut r = full.clone();
        r.driver = Err("no NVIDIA driver library".into());
        assert!(r.problem().unwrap().contains("install the NVIDIA driver"));
        let mut r = full.clone();
        r.gpus.clear();
        assert!(r.problem().unwrap().contains("lists no GPU"));
        let mut r = full.clone();
        r.nvrtc = Err("no NVRTC library".into());
        assert!(r.problem().unwrap().contains("NVRTC"));
        let mut r = full.clone();
        r.headers = Err("no CUDA installation".into());
        assert!(r.problem().unwrap().contains("cuda_fp16.h"));
        let r = CudaReport { built: false, ..full };
        assert!(r.problem().unwrap().contains("--features cuda"));
    }
}
