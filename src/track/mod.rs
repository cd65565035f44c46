//! Run tracking: every invocation and every node becomes a run record in a local store
//! (offline, the default), optionally pushed live to an MLflow tracking server.
//!
//! Architecture Invariant: the local store is written first and is the source of truth. The MLflow
//! push (live, from a background thread, or later through [`sync`]) only ever reads the local store
//! and a per-server ledger, so a slow or down server never blocks training and never loses a record.
//!
//! Architecture Invariant: this module does not depend on the tensor library; callers hand it plain
//! numbers, strings and file paths.
//!
//! Layout of a store directory (see docs/tracking.md):
//!
//! ```text
//! <store>/runs/<run_id>/meta.json       run kind, parent, status, times (rewritten atomically)
//! <store>/runs/<run_id>/params.json     flattened params, written once
//! <store>/runs/<run_id>/tags.json       tags, written once (a reopened run gains one)
//! <store>/runs/<run_id>/metrics.jsonl   one metric point per line, append only
//! <store>/runs/<run_id>/artifacts/...   copies of logged files
//! <store>/sync/<server>.json            what was pushed to one server (the ledger)
//! ```

mod error;
pub mod mlflow;
mod params;
mod store;
mod sync;
mod tracker;

pub use error::TrackError;
pub use mlflow::{ClientConfig, MlflowClient, MlflowError};
pub use params::{
    InvalidEntity, MAX_KEY_LEN, MAX_PARAM_VALUE_LEN, MAX_TAG_VALUE_LEN, final_metrics, flatten_params,
    metric_name, readable,
};
pub use store::{
    LocalStore, Metric, RESUMED_TAG, RunKind, RunMeta, RunSummary, SyncedTo, format_runs, list_runs,
};
pub use sync::{
    CACHED_FROM_MLFLOW_TAG, LOCAL_RUN_ID_TAG, SyncReport, node_run_urls, run_url, sync, sync_run,
    sync_with_client,
};
pub use tracker::{NodeRun, PushState, Tracker, TrackerConfig, resolve_tracking_uri};

use serde::{Deserialize, Serialize};
use std::fmt;

/// Identifier of a run in the local store (a directory name under `<store>/runs/`).
///
/// Ids start with the creation time in hex milliseconds, so sorting ids sorts runs by start.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(String);

impl RunId {
    /// Wraps an existing id, e.g. one typed by a user; [`LocalStore`] checks it exists.
    pub fn new(id: impl Into<String>) -> RunId {
        RunId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn generate(now_ms: i64) -> RunId {
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
        // The time part is strictly increasing within a process (a run started in the same
        // millisecond as the previous one takes the next millisecond), so ids sort in creation
        // order. Uniqueness across processes comes from the randomly keyed hasher (std seeds it
        // from the OS) mixed with a counter, the pid and the nanoseconds.
        static LAST_MS: AtomicI64 = AtomicI64::new(0);
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let prev = LAST_MS
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| Some(now_ms.max(last + 1)))
            .expect("the closure always returns Some");
        let ms = now_ms.max(prev + 1).max(0);
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.write_u32(std::process::id());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        hasher.write_u32(nanos);
        RunId(format!("{ms:012x}-{:08x}", hasher.finish() as u32))
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// Final (or current) state of a run; the names are MLflow's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    Running,
    Finished,
    Failed,
    Killed,
}

impl RunStatus {
    pub fn as_mlflow(self) -> &'static str {
        match self {
            RunStatus::Running => "RUNNING",
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
        }
    }

    pub fn is_terminal(self) -> bool {
        self != RunStatus::Running
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            RunStatus::Running => "running",
            RunStatus::Finished => "finished",
            RunStatus::Failed => "failed",
            RunStatus::Killed => "killed",
        })
    }
}

/// Milliseconds since the Unix epoch, MLflow's timestamp unit.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Serde for `f64` the way MLflow's JSON does it: finite values as numbers, non-finite ones
/// as the strings `"NaN"`, `"Infinity"` and `"-Infinity"` (JSON has no literal for them and
/// MLflow rejects `null`).
pub(crate) mod mlflow_f64 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        if value.is_finite() {
            serializer.serialize_f64(*value)
        } else if value.is_nan() {
            serializer.serialize_str("NaN")
        } else if *value > 0.0 {
            serializer.serialize_str("Infinity")
        } else {
            serializer.serialize_str("-Infinity")
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum NumOrStr {
            Num(f64),
            Str(String),
        }
        match NumOrStr::deserialize(deserializer)? {
            NumOrStr::Num(v) => Ok(v),
            NumOrStr::Str(s) => match s.as_str() {
                "NaN" => Ok(f64::NAN),
                "Infinity" => Ok(f64::INFINITY),
                "-Infinity" => Ok(f64::NEG_INFINITY),
                other => other.parse::<f64>().map_err(|_| {
                    D::Error::custom(format!("expected a number, NaN, Infinity or -Infinity, got {other:?}"))
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug)]
    struct V {
        #[serde(with = "mlflow_f64")]
        v: f64,
    }

    fn round_trip(v: f64) -> (String, f64) {
        let text = serde_json::to_string(&V { v }).unwrap();
        let back: V = serde_json::from_str(&text).unwrap();
        (text, back.v)
    }

    #[test]
    fn non_finite_values_use_mlflow_strings() {
        assert_eq!(round_trip(0.25), (r#"{"v":0.25}"#.to_string(), 0.25));
        assert_eq!(round_trip(f64::INFINITY), (r#"{"v":"Infinity"}"#.to_string(), f64::INFINITY));
        assert_eq!(round_trip(f64::NEG_INFINITY), (r#"{"v":"-Infinity"}"#.to_string(), f64::NEG_INFINITY));
        let (text, back) = round_trip(f64::NAN);
        assert_eq!(text, r#"{"v":"NaN"}"#);
        assert!(back.is_nan());
    }

    #[test]
    fn null_is_rejected_when_reading() {
        let err = serde_json::from_str::<V>(r#"{"v":null}"#).unwrap_err();
        assert!(err.to_string().contains("did not match"), "{err}");
        assert!(serde_json::from_str::<V>(r#"{"v":"fast"}"#).is_err());
    }

    #[test]
    fn run_ids_sort_by_time_and_are_unique() {
        let a = RunId::generate(now_ms());
        let b = RunId::generate(now_ms());
        let c = RunId::generate(1_000);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_eq!(a.as_str().len(), 21);
    }
}
