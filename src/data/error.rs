//! Typed errors of the data layer: each names the file, record, class or field at fault and
//! says what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: no such file or directory ({what})")]
    NotFound { path: PathBuf, what: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: truncated file: {detail}")]
    Truncated { path: PathBuf, detail: String },

    #[error("{path}: {detail}")]
    Format { path: PathBuf, detail: String },

    #[error("{path}: record {record}: label {label} out of range (the dataset has {n_classes} classes)")]
    LabelOutOfRange { path: PathBuf, record: usize, label: i64, n_classes: usize },

    #[error("{path}: cannot decode image: {detail}")]
    Decode { path: PathBuf, detail: String },

    #[error("classes: unknown class {class:?}; valid: {valid}")]
    UnknownClass { class: String, valid: String },

    #[error(
        "per_class: class {class:?} has {available} images in this split, {wanted} requested; lower per_class"
    )]
    NotEnough { class: String, wanted: usize, available: usize },

    #[error("{field}: {detail}")]
    Config { field: String, detail: String },

    #[error("merge: {detail}")]
    Merge { detail: String },

    /// A loader thread failed (a panic while preparing a batch) or stopped before the epoch's end.
    #[error("data loader: {detail}")]
    Loader { detail: String },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::NotFound { path, what: "check the dataset path".into() }
        } else {
            DataError::Io { path, source }
        }
    }

    pub(crate) fn config(field: &str, detail: impl Into<String>) -> Self {
        DataError::Config { field: field.to_string(), detail: detail.into() }
    }
}
