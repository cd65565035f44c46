//! Readers of each source format. Every reader returns all records of a split as `u8`
//! images (`C,H,W`, 0..=255) with labels checked against the class count.

mod cifar;
mod digits;
mod folder;
mod idx;
mod mnist_json;

use std::io::Read;
use std::path::{Path, PathBuf};

use super::dataset::Dataset;
use super::fingerprint::{FingerprintBuilder, FingerprintCache, selection_params};
use super::select::{holdout_split, select};
use super::{DataError, DatasetConfig, Fingerprint, Source, Split};

pub use cifar::{CIFAR10_CLASSES, CIFAR100_CLASSES, CIFAR100_COARSE_CLASSES};
pub use idx::FASHION_MNIST_CLASSES;

/// All records of one split of a record-based source.
#[derive(Debug)]
pub(crate) struct Records {
    pub images: Vec<u8>,
    pub shape: [usize; 3],
    pub labels: Vec<u32>,
    pub class_names: Vec<String>,
}

/// Whether a source has no official test split, so the seeded holdout makes one.
fn uses_holdout(source: &Source) -> bool {
    matches!(source, Source::BuiltinDigits | Source::MnistJson { .. })
}

pub(crate) fn load(
    cfg: &DatasetConfig,
    base_dir: &Path,
    cache: &FingerprintCache,
) -> Result<Dataset, DataError> {
    if let Source::ImageFolder { .. } = cfg.source {
        return folder::load(cfg, base_dir, cache);
    }
    let holdout = uses_holdout(&cfg.source);
    let read_split = if holdout { Split::All } else { cfg.split };
    let recs = match &cfg.source {
        Source::BuiltinDigits => digits::read()?,
        Source::Idx { path, flavor } => idx::read(&super::resolve(base_dir, path), *flavor, read_split)?,
        Source::MnistJson { path } => mnist_json::read(&super::resolve(base_dir, path))?,
        Source::Cifar10 { path } => cifar::read_cifar10(&super::resolve(base_dir, path), read_split)?,
        Source::Cifar100 { path, labels } => {
            cifar::read_cifar100(&super::resolve(base_dir, path), *labels, read_split)?
        }
        Source::ImageFolder { .. } => unreachable!("handled above"),
    };
    let candidates: Vec<usize> = if holdout {
        holdout_split(&recs.labels, recs.class_names.len(), cfg.split, cfg.holdout)
    } else {
        (0..recs.labels.len()).collect()
    };
    let sel = select(&recs.labels, &candidates, &recs.class_names, cfg)?;
    let fp = fingerprint(cfg, base_dir, cache)?;
    cache.save()?;
    Ok(Dataset::from_records(recs, &sel, fp))
}

pub(crate) fn fingerprint(
    cfg: &DatasetConfig,
    base_dir: &Path,
    cache: &FingerprintCache,
) -> Result<Fingerprint, DataError> {
    let mut b = FingerprintBuilder::new();
    let digit_names = || (0..10).map(|i| i.to_string()).collect::<Vec<String>>();
    let (files, names): (Vec<(String, PathBuf)>, Vec<String>) = match &cfg.source {
        Source::BuiltinDigits => {
            b.param("source", "builtin/digits");
            b.content("digits.csv.gz", digits::content_digest());
            (Vec::new(), digit_names())
        }
        Source::Idx { path, flavor } => {
            b.param("source", format!("idx/{flavor:?}"));
            let names = match flavor {
                super::IdxFlavor::Mnist => digit_names(),
                super::IdxFlavor::FashionMnist => {
                    FASHION_MNIST_CLASSES.iter().map(|s| s.to_string()).collect()
                }
            };
            (idx::files(&super::resolve(base_dir, path), cfg.split)?, names)
        }
        Source::MnistJson { path } => {
            b.param("source", "mnist-json");
            (mnist_json::files(&super::resolve(base_dir, path))?, digit_names())
        }
        Source::Cifar10 { path } => {
            b.param("source", "cifar10");
            let files = cifar::files_cifar10(&super::resolve(base_dir, path), cfg.split)?;
            let names = cifar::class_names_cifar10(&files)?;
            (files, names)
        }
        Source::Cifar100 { path, labels } => {
            b.param("source", format!("cifar100/{labels:?}"));
            let files = cifar::files_cifar100(&super::resolve(base_dir, path), cfg.split)?;
            let names = cifar::class_names_cifar100(&files, *labels)?;
            (files, names)
        }
        Source::ImageFolder { .. } => return folder::fingerprint(cfg, base_dir, cache),
    };
    selection_params(&mut b, cfg, &names, uses_holdout(&cfg.source))?;
    for (name, path) in &files {
        b.content(name, &cache.file_digest(path)?);
    }
    Ok(b.finish())
}

/// The class names of a selection, in label order (its `classes:` order, else the source's),
/// without reading any image: what `head: auto` compares at resolve time.
pub(crate) fn class_names(cfg: &DatasetConfig, base_dir: &Path) -> Result<Vec<String>, DataError> {
    let digit_names = || (0..10).map(|i| i.to_string()).collect::<Vec<String>>();
    let names = match &cfg.source {
        Source::BuiltinDigits | Source::MnistJson { .. } => digit_names(),
        Source::Idx { flavor: super::IdxFlavor::Mnist, .. } => digit_names(),
        Source::Idx { flavor: super::IdxFlavor::FashionMnist, .. } => {
            FASHION_MNIST_CLASSES.iter().map(|s| s.to_string()).collect()
        }
        Source::Cifar10 { path } => {
            cifar::class_names_cifar10(&cifar::files_cifar10(&super::resolve(base_dir, path), cfg.split)?)?
        }
        Source::Cifar100 { path, labels } => cifar::class_names_cifar100(
            &cifar::files_cifar100(&super::resolve(base_dir, path), cfg.split)?,
            *labels,
        )?,
        Source::ImageFolder { root, .. } => folder::class_names(&super::resolve(base_dir, root))?,
    };
    let order = super::select::resolve_classes(cfg.classes.as_deref(), &names)?;
    Ok(order.iter().map(|&i| names[i as usize].clone()).collect())
}

/// Reads a file, gunzipping it when it starts with the gzip magic bytes.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    gunzip_if_needed(path, raw)
}

pub(crate) fn gunzip_if_needed(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>, DataError> {
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(|e| DataError::Truncated {
            path: path.to_path_buf(),
            detail: format!("gzip stream is incomplete or corrupt ({e}); download the file again"),
        })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The first existing path among `candidates`, or a not-found error naming the first one (or,
/// when one exists but is not a regular file, saying what it is).
pub(crate) fn first_existing(candidates: &[PathBuf], what: &str) -> Result<PathBuf, DataError> {
    for c in candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    if let Some(c) = candidates.iter().find(|c| c.exists()) {
        return Err(DataError::Format {
            path: c.clone(),
            detail: format!("is a {}, not a file; expected {what}", kind_of(c)),
        });
    }
    let also = match &candidates[1..] {
        [] => String::new(),
        rest => format!(
            "; also tried {}",
            rest.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    };
    Err(DataError::NotFound { path: candidates[0].clone(), what: format!("{what}{also}") })
}

/// What a path that exists is, for messages.
fn kind_of(path: &Path) -> &'static str {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => "directory",
        Ok(m) if m.is_file() => "file",
        Ok(_) => "special file",
        Err(_) => "path that cannot be read",
    }
}

pub(crate) fn require_dir(path: &Path, what: &str) -> Result<(), DataError> {
    if path.is_dir() {
        Ok(())
    } else if path.exists() {
        // A file that exists is not "no such file": say what it is and what was expected.
        Err(DataError::Format {
            path: path.to_path_buf(),
            detail: format!("is a {}, not a directory; expected {what}", kind_of(path)),
        })
    } else {
        Err(DataError::NotFound { path: path.to_path_buf(), what: format!("expected {what}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a data path that exists but is a file (or a directory where a file is read)
    /// was reported as "no such file or directory".
    #[test]
    fn a_path_of_the_wrong_kind_says_what_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("notes.txt");
        std::fs::write(&file, "hello").unwrap();
        let e = require_dir(&file, "an image folder").unwrap_err().to_string();
        assert!(e.contains("is a file, not a directory; expected an image folder"), "{e}");
        let e = first_existing(&[dir.path().to_path_buf()], "the train images").unwrap_err().to_string();
        assert!(e.contains("is a directory, not a file"), "{e}");
        let missing = dir.path().join("nope");
        let e = first_existing(std::slice::from_ref(&missing), "x").unwrap_err().to_string();
        assert!(e.ends_with("no such file or directory (x)"), "no empty `also tried`: {e}");
        let e = require_dir(&missing, "x").unwrap_err().to_string();
        assert!(e.contains("no such file or directory"), "{e}");
    }
}
