//! A minimal reader and writer of the safetensors format (an 8-byte little-endian header
//! length, a JSON header of `name -> {dtype, shape, data_offsets}`, then the raw bytes).
//!
//! Written here rather than through burn-store so that names stay exactly PyTorch's, errors
//! name the tensor at fault, and float16/bfloat16/float64 files from hubs load as f32.

use std::collections::BTreeMap;
use std::path::Path;

use crate::engine::error::EngineError;

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// One tensor of a file, converted to f32 (floats) or i64 (integers).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub shape: Vec<usize>,
    pub data: Data,
}

fn ck(path: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::Checkpoint { path: path.to_path_buf(), reason: reason.into() }
}

/// Read every tensor of a safetensors file.
pub fn read(path: &Path) -> Result<BTreeMap<String, Entry>, EngineError> {
    let bytes = std::fs::read(path).map_err(|source| EngineError::Io { path: path.to_path_buf(), source })?;
    parse(path, &bytes)
}

/// A file's tensors by name and its `__metadata__` strings.
pub type WithMetadata = (BTreeMap<String, Entry>, BTreeMap<String, String>);

/// Every tensor of a safetensors file and its `__metadata__` strings.
pub fn read_with_metadata(path: &Path) -> Result<WithMetadata, EngineError> {
    let bytes = std::fs::read(path).map_err(|source| EngineError::Io { path: path.to_path_buf(), source })?;
    let tensors = parse(path, &bytes)?;
    // parse checked the header's length and JSON.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).map_err(|e| ck(path, e.to_string()))?;
    let meta = match header.get("__metadata__") {
        Some(m) => serde_json::from_value(m.clone())
            .map_err(|e| ck(path, format!("__metadata__ is not a map of strings: {e}")))?,
        None => BTreeMap::new(),
    };
    Ok((tensors, meta))
}

fn parse(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, Entry>, EngineError> {
    if bytes.len() < 8 {
        return Err(ck(path, "not a safetensors file (shorter than its 8-byte header length)"));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let body_start = 8usize.checked_add(n).filter(|&e| e <= bytes.len()).ok_or_else(|| {
        ck(path, format!("not a safetensors file (header length {n} exceeds the file size {})", bytes.len()))
    })?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..body_start])
        .map_err(|e| ck(path, format!("not a safetensors file (bad JSON header: {e})")))?;
    let body = &bytes[body_start..];
    let mut out = BTreeMap::new();
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| ck(path, format!("tensor {name:?}: {what}"));
        let dtype = info.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("missing dtype"))?;
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("missing shape"))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("shape is not a list of sizes"))?;
        let offs = info
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .and_then(|o| Some((o[0].as_u64()? as usize, o[1].as_u64()? as usize)))
            .ok_or_else(|| bad("missing data_offsets"))?;
        if offs.0 > offs.1 || offs.1 > body.len() {
            return Err(bad("data_offsets point outside the file"));
        }
        let raw = &body[offs.0..offs.1];
        let numel: usize = shape.iter().product();
        let width = match dtype {
            "F64" | "I64" => 8,
            "F32" | "I32" => 4,
            "F16" | "BF16" => 2,
            other => {
                return Err(bad(&format!(
                    "unsupported dtype {other} (expected F32, F64, F16, BF16, I64 or I32)"
                )));
            }
        };
        if raw.len() != numel * width {
            return Err(bad(&format!("{} bytes of data for shape {shape:?} of {dtype}", raw.len())));
        }
        let data = match dtype {
            "F32" => {
                Data::F32(raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
            }
            "F64" => Data::F32(
                raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            ),
            "BF16" => Data::F32(
                raw.chunks_exact(2)
                    .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                    .collect(),
            ),
            "F16" => {
                Data::F32(raw.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect())
            }
            "I64" => {
                Data::I64(raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
            }
            _ => Data::I64(
                raw.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
            ),
        };
        out.insert(name, Entry { shape, data });
    }
    Ok(out)
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // subnormal: renormalise
            let mut e = 127 - 15 + 1;
            let mut f = f;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// Write tensors (in the given order of names, sorted in the header as the format requires)
/// atomically: to a temporary file beside `path`, then renamed.
pub fn write(
    path: &Path,
    tensors: &BTreeMap<String, Entry>,
    metadata: &BTreeMap<String, String>,
) -> Result<(), EngineError> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata).unwrap());
    }
    let mut body: Vec<u8> = Vec::new();
    for (name, e) in tensors {
        let start = body.len();
        let dtype = match &e.data {
            Data::F32(v) => {
                v.iter().for_each(|x| body.extend_from_slice(&x.to_le_bytes()));
                "F32"
            }
            Data::I64(v) => {
                v.iter().for_each(|x| body.extend_from_slice(&x.to_le_bytes()));
                "I64"
            }
        };
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": e.shape, "data_offsets": [start, body.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut bytes = Vec::with_capacity(8 + h.len() + body.len());
    bytes.extend_from_slice(&(h.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&h);
    bytes.extend_from_slice(&body);
    let tmp = path.with_extension("safetensors.tmp");
    let io = |source| EngineError::Io { path: path.to_path_buf(), source };
    std::fs::write(&tmp, &bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_matches_known_values() {
        for (h, f) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x0001, 5.960_464_5e-8),
            (0x7bff, 65504.0),
        ] {
            assert_eq!(f16_to_f32(h), f, "{h:#x}");
        }
    }

    #[test]
    fn round_trips_and_rejects_truncated_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let mut t = BTreeMap::new();
        t.insert(
            "a.weight".to_string(),
            Entry { shape: vec![2, 3], data: Data::F32(vec![1., 2., 3., 4., 5., 6.]) },
        );
        t.insert("n".to_string(), Entry { shape: vec![], data: Data::I64(vec![7]) });
        write(&p, &t, &BTreeMap::new()).unwrap();
        assert_eq!(read(&p).unwrap(), t);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        let err = read(&p).unwrap_err().to_string();
        assert!(err.contains("outside the file") || err.contains("bytes of data"), "{err}");
    }
}
