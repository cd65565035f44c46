use super::mlflow::MlflowError;
use std::path::PathBuf;

/// Errors of the tracking layer. Each names the file, run or key it is about.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{}: invalid json: {source}", path.display())]
    Json { path: PathBuf, source: serde_json::Error },

    #[error("{}: byte {offset}: invalid metric record: {reason}", path.display())]
    CorruptMetrics { path: PathBuf, offset: u64, reason: String },

    /// A command that reads a store (`runs`, `sync`) was pointed at a folder that is not there;
    /// reading never creates one.
    #[error("no store at {}: {reason}", path.display())]
    NoStore { path: PathBuf, reason: &'static str },

    #[error("unknown run {run_id}: no run record under {}", store.display())]
    UnknownRun { run_id: String, store: PathBuf },

    #[error(transparent)]
    Invalid(#[from] super::params::InvalidEntity),

    #[error("run {run_id} is already {status}; it cannot log more")]
    RunEnded { run_id: String, status: super::RunStatus },

    #[error("unsupported tracking uri {uri:?}: {reason}")]
    BadTrackingUri { uri: String, reason: String },

    #[error(transparent)]
    Mlflow(#[from] MlflowError),
}

impl TrackError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrackError {
        let path = path.into();
        move |source| TrackError::Io { path, source }
    }

    pub(crate) fn json(path: impl Into<PathBuf>) -> impl FnOnce(serde_json::Error) -> TrackError {
        let path = path.into();
        move |source| TrackError::Json { path, source }
    }
}
