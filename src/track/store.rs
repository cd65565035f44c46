//! The local run store: one directory per run, plain JSON files, atomic rewrites.

use super::params::InvalidEntity;
use super::{RunId, RunStatus, TrackError, mlflow_f64};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Version of the on-disk layout, written into every meta.json.
const FORMAT: u32 = 1;

/// Held (an exclusive file lock) by the process recording a run, while the run is open.
const OWNER_LOCK: &str = "owner.lock";

/// One metric point. `value` may be NaN or infinite; `timestamp_ms` is milliseconds since the
/// Unix epoch (MLflow's unit).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub key: String,
    #[serde(with = "mlflow_f64")]
    pub value: f64,
    pub step: i64,
    #[serde(rename = "timestamp")]
    pub timestamp_ms: i64,
}

impl Metric {
    pub fn new(key: impl Into<String>, value: f64, step: i64, timestamp_ms: i64) -> Metric {
        Metric { key: key.into(), value, step, timestamp_ms }
    }

    /// Equality that treats NaN as equal to NaN, for comparing what was logged with what was read.
    pub fn same_as(&self, other: &Metric) -> bool {
        self.key == other.key
            && self.step == other.step
            && self.timestamp_ms == other.timestamp_ms
            && (self.value == other.value || (self.value.is_nan() && other.value.is_nan()))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// One `distillery run` call; the parent of its node runs.
    Invocation,
    /// One node of the graph, trained or taken from the cache.
    Node,
}

/// What meta.json holds. Rewritten atomically when the status changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    pub format: u32,
    pub run_id: RunId,
    pub kind: RunKind,
    /// The invocation run a node run belongs to.
    pub parent: Option<RunId>,
    pub experiment: String,
    /// Node name, or for an invocation the spec's file name.
    pub name: String,
    pub node_kind: Option<String>,
    pub cache_key: Option<String>,
    /// Set when the node was not retrained: the run that produced the cached result.
    pub cached_from: Option<RunId>,
    pub status: RunStatus,
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    /// Why a run ended as it did when its own process could not say (it was killed or crashed,
    /// and a later command found it abandoned): pushed to MLflow as tag `distillery.end_reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// How many times the run was reopened to continue from a checkpoint after its process was
    /// interrupted ([`LocalStore::reopen_run`]); the push compares it with its ledger to set the
    /// server's run back to RUNNING.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resumed: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Tag of a run reopened to continue from a checkpoint: where it continued (`epoch 3 of 10,
/// batch 0`), each reopening appended after `"; "`.
pub const RESUMED_TAG: &str = "distillery.resumed";

/// A run [`LocalStore::reopen_run`] reopened for this process.
pub(crate) struct Reopened {
    pub meta: RunMeta,
    /// Its owner lock, held by this process until dropped.
    pub owner: File,
    /// The highest step already logged for each metric key: points the continued node logs again
    /// for those steps (epochs after its last checkpoint, trained again) are not appended.
    pub logged_through: BTreeMap<String, i64>,
}

/// Access to a store directory (`.distillery/` beside the spec by default).
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
}

/// The part of a metrics file that holds complete lines, read from a byte offset.
pub(crate) struct MetricChunk {
    pub metrics: Vec<Metric>,
    /// Byte offset just after each metric's line, to resume exactly after any prefix.
    pub ends: Vec<u64>,
}

impl LocalStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<LocalStore, TrackError> {
        let store = LocalStore { root: root.into() };
        let runs = store.runs_dir();
        fs::create_dir_all(&runs).map_err(TrackError::io(&runs))?;
        Ok(store)
    }

    /// Opens the existing store at `root` for reading: a missing folder is an error (reading
    /// never creates a store), a store without runs yet has none.
    pub fn open_existing(root: impl Into<PathBuf>) -> Result<LocalStore, TrackError> {
        let root = root.into();
        if !root.is_dir() {
            let reason =
                if root.exists() { "it is a file, not a folder" } else { "the folder does not exist" };
            return Err(TrackError::NoStore { path: root, reason });
        }
        Ok(LocalStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }

    pub fn run_dir(&self, run_id: &RunId) -> PathBuf {
        self.runs_dir().join(run_id.as_str())
    }

    pub(crate) fn metrics_path(&self, run_id: &RunId) -> PathBuf {
        self.run_dir(run_id).join("metrics.jsonl")
    }

    fn artifacts_dir(&self, run_id: &RunId) -> PathBuf {
        self.run_dir(run_id).join("artifacts")
    }

    /// Creates a run directory with its meta, params and tags. Params never change after; tags
    /// only gain [`RESUMED_TAG`] when the run is reopened ([`Self::reopen_run`]).
    pub(crate) fn create_run(
        &self,
        meta: &RunMeta,
        params: &[(String, String)],
        tags: &BTreeMap<String, String>,
    ) -> Result<(), TrackError> {
        self.create_run_inner(meta, params, tags, false).map(|_| ())
    }

    /// [`LocalStore::create_run`] for a run this process goes on recording: it holds the run's
    /// `owner.lock` (an exclusive lock, taken before meta.json exists) until the returned file is
    /// dropped, so a later command can tell a run whose process died ([`Self::reap_abandoned`]).
    pub(crate) fn create_owned_run(
        &self,
        meta: &RunMeta,
        params: &[(String, String)],
        tags: &BTreeMap<String, String>,
    ) -> Result<File, TrackError> {
        Ok(self.create_run_inner(meta, params, tags, true)?.expect("an owned run has an owner lock"))
    }

    fn create_run_inner(
        &self,
        meta: &RunMeta,
        params: &[(String, String)],
        tags: &BTreeMap<String, String>,
        owned: bool,
    ) -> Result<Option<File>, TrackError> {
        let dir = self.run_dir(&meta.run_id);
        fs::create_dir_all(&dir).map_err(TrackError::io(&dir))?;
        let owner = if owned {
            let p = dir.join(OWNER_LOCK);
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&p)
                .map_err(TrackError::io(&p))?;
            f.try_lock()
                .map_err(|e| TrackError::io(&p)(std::io::Error::other(format!("cannot lock: {e}"))))?;
            writeln!(f, "pid {} on {}", std::process::id(), super::tracker::host_name())
                .map_err(TrackError::io(&p))?;
            Some(f)
        } else {
            None
        };
        write_json_atomic(&dir.join("params.json"), &params)?;
        write_json_atomic(&dir.join("tags.json"), tags)?;
        let metrics = self.metrics_path(&meta.run_id);
        File::create(&metrics).map_err(TrackError::io(&metrics))?;
        // meta.json last: a run directory without it is an interrupted creation and is ignored.
        write_json_atomic(&dir.join("meta.json"), meta)?;
        Ok(owner)
    }

    /// Ends every run still RUNNING whose process is gone (its `owner.lock` is free: killed,
    /// crashed, or the machine went down): status FAILED, ended at its last metric (or its
    /// start), with the reason in `end_reason`. A run of a live process (its lock held) and a run
    /// recorded before owner locks existed are left alone. Returns the runs it ended.
    pub fn reap_abandoned(&self) -> Result<Vec<RunId>, TrackError> {
        let mut ended = Vec::new();
        for run_id in self.run_ids()? {
            let meta = self.read_meta(&run_id)?;
            let p = self.run_dir(&run_id).join(OWNER_LOCK);
            if meta.status != RunStatus::Running || !p.is_file() {
                continue;
            }
            let Ok(f) = OpenOptions::new().read(true).write(true).open(&p) else { continue };
            if f.try_lock().is_err() {
                continue; // its process is alive (or another command is ending it right now)
            }
            // Re-read under the lock: another command may have ended it meanwhile.
            let mut meta = self.read_meta(&run_id)?;
            if meta.status != RunStatus::Running {
                continue;
            }
            let owner = fs::read_to_string(&p).unwrap_or_default();
            let last = self.read_metrics(&run_id)?.iter().map(|m| m.timestamp_ms).max();
            meta.status = RunStatus::Failed;
            meta.end_ms = Some(last.unwrap_or(meta.start_ms).max(meta.start_ms));
            meta.end_reason = Some(format!(
                "its process ({}) ended without finishing it: killed, crashed or the machine stopped",
                owner.trim()
            ));
            self.write_meta(&meta)?;
            ended.push(run_id);
        }
        Ok(ended)
    }

    /// The run a node of `cache_key` continuing from a checkpoint belongs to: the latest trained
    /// (not cached) node run of that key, unless it finished (then the checkpoint is not its: a
    /// new run is started). FAILED, KILLED and RUNNING ones qualify; [`Self::reopen_run`] decides
    /// whether a RUNNING one is abandoned.
    pub(crate) fn resumable_run(&self, cache_key: &str) -> Result<Option<RunId>, TrackError> {
        let mut latest = None;
        for run_id in self.run_ids()? {
            let meta = self.read_meta(&run_id)?;
            if meta.kind == RunKind::Node
                && meta.cache_key.as_deref() == Some(cache_key)
                && meta.cached_from.is_none()
            {
                latest = Some(meta);
            }
        }
        Ok(latest.filter(|m| m.status != RunStatus::Finished).map(|m| m.run_id))
    }

    /// Reopens an ended (FAILED, KILLED) or abandoned (RUNNING, its owner gone) run for this
    /// process to go on recording: takes its `owner.lock` first and re-reads meta.json under it
    /// (so [`Self::reap_abandoned`] in another command can neither end it meanwhile nor have
    /// ended it unseen), cuts an unfinished last metric line (its process died mid-write), appends
    /// `resume` to tag [`RESUMED_TAG`], and writes meta.json back as RUNNING (no end time, no end
    /// reason, `resumed` + 1). `None` when the run cannot be reopened: it finished, it is a
    /// cached run, or its owner is alive (a RUNNING run whose lock stays held, or one recorded
    /// before owner locks existed).
    pub(crate) fn reopen_run(&self, run_id: &RunId, resume: &str) -> Result<Option<Reopened>, TrackError> {
        let meta = self.read_meta(run_id)?;
        let p = self.run_dir(run_id).join(OWNER_LOCK);
        let reopenable = |m: &RunMeta| {
            m.kind == RunKind::Node && m.cached_from.is_none() && m.status != RunStatus::Finished
        };
        // A RUNNING run without a lock file predates owner locks: whether its process lives
        // cannot be told.
        if !reopenable(&meta) || (meta.status == RunStatus::Running && !p.is_file()) {
            return Ok(None);
        }
        let mut owner = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&p)
            .map_err(TrackError::io(&p))?;
        // Another command reaping it holds the lock for a moment; a live owner holds it for good.
        let mut tries = 0;
        while owner.try_lock().is_err() {
            tries += 1;
            if tries == 40 {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // Under the lock: what another command (a reap, another resume) made of it meanwhile.
        let mut meta = self.read_meta(run_id)?;
        if !reopenable(&meta) {
            return Ok(None);
        }
        let mut tags = self.read_tags(run_id)?;
        let value = match tags.get(RESUMED_TAG) {
            Some(earlier) => format!("{earlier}; {resume}"),
            None => resume.to_string(),
        };
        super::params::check_tag(RESUMED_TAG, &value)?;
        // Complete lines only: a new line appended after half of one would corrupt both.
        let metrics = self.metrics_path(run_id);
        let bytes = fs::read(&metrics).map_err(TrackError::io(&metrics))?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            let f = OpenOptions::new().write(true).open(&metrics).map_err(TrackError::io(&metrics))?;
            f.set_len(complete as u64).map_err(TrackError::io(&metrics))?;
        }
        let mut logged_through = BTreeMap::new();
        for m in self.read_metrics(run_id)? {
            let step = logged_through.entry(m.key).or_insert(m.step);
            *step = m.step.max(*step);
        }
        owner.set_len(0).map_err(TrackError::io(&p))?;
        owner.seek(SeekFrom::Start(0)).map_err(TrackError::io(&p))?;
        writeln!(owner, "pid {} on {}", std::process::id(), super::tracker::host_name())
            .map_err(TrackError::io(&p))?;
        tags.insert(RESUMED_TAG.to_string(), value);
        // Tags before meta: a push that sees the reopened meta finds the new tag.
        write_json_atomic(&self.run_dir(run_id).join("tags.json"), &tags)?;
        meta.status = RunStatus::Running;
        meta.end_ms = None;
        meta.end_reason = None;
        meta.resumed += 1;
        self.write_meta(&meta)?;
        Ok(Some(Reopened { meta, owner, logged_through }))
    }

    pub fn read_meta(&self, run_id: &RunId) -> Result<RunMeta, TrackError> {
        let path = self.run_dir(run_id).join("meta.json");
        // An id typed by a user names a folder of runs/, never a path out of it.
        let plain = !run_id.as_str().is_empty()
            && run_id.as_str().chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !plain || !path.exists() {
            return Err(TrackError::UnknownRun { run_id: run_id.to_string(), store: self.root.clone() });
        }
        read_json(&path)
    }

    pub(crate) fn write_meta(&self, meta: &RunMeta) -> Result<(), TrackError> {
        write_json_atomic(&self.run_dir(&meta.run_id).join("meta.json"), meta)
    }

    pub fn read_params(&self, run_id: &RunId) -> Result<Vec<(String, String)>, TrackError> {
        read_json(&self.run_dir(run_id).join("params.json"))
    }

    pub fn read_tags(&self, run_id: &RunId) -> Result<BTreeMap<String, String>, TrackError> {
        read_json(&self.run_dir(run_id).join("tags.json"))
    }

    /// Opens a run's metrics file for appending.
    pub(crate) fn metrics_appender(&self, run_id: &RunId) -> Result<File, TrackError> {
        let path = self.metrics_path(run_id);
        OpenOptions::new().append(true).open(&path).map_err(TrackError::io(&path))
    }

    /// Reads every complete metric line at or after `offset`. A trailing line without its newline
    /// (a write in progress, or a crash mid-write) is left for later.
    pub(crate) fn read_metrics_from(&self, run_id: &RunId, offset: u64) -> Result<MetricChunk, TrackError> {
        let path = self.metrics_path(run_id);
        let mut file = File::open(&path).map_err(TrackError::io(&path))?;
        file.seek(SeekFrom::Start(offset)).map_err(TrackError::io(&path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(TrackError::io(&path))?;
        let mut chunk = MetricChunk { metrics: Vec::new(), ends: Vec::new() };
        let mut start = 0usize;
        while let Some(nl) = bytes[start..].iter().position(|&b| b == b'\n') {
            let line = &bytes[start..start + nl];
            let metric: Metric = serde_json::from_slice(line).map_err(|e| TrackError::CorruptMetrics {
                path: path.clone(),
                offset: offset + start as u64,
                reason: e.to_string(),
            })?;
            start += nl + 1;
            chunk.metrics.push(metric);
            chunk.ends.push(offset + start as u64);
        }
        Ok(chunk)
    }

    /// All metric points of a run, in logging order.
    pub fn read_metrics(&self, run_id: &RunId) -> Result<Vec<Metric>, TrackError> {
        Ok(self.read_metrics_from(run_id, 0)?.metrics)
    }

    /// Size of the metrics file: the push compares it with its ledger to skip idle runs cheaply.
    pub(crate) fn metrics_len(&self, run_id: &RunId) -> Result<u64, TrackError> {
        let path = self.metrics_path(run_id);
        Ok(fs::metadata(&path).map_err(TrackError::io(&path))?.len())
    }

    /// Copies `local` into the run's artifacts as `artifact_path` (a relative path with `/`).
    /// A hard link is tried first (checkpoints are large and immutable), a copy otherwise.
    pub(crate) fn add_artifact(
        &self,
        run_id: &RunId,
        local: &Path,
        artifact_path: &str,
    ) -> Result<(), TrackError> {
        check_artifact_path(artifact_path)?;
        if !local.is_file() {
            return Err(TrackError::Invalid(InvalidEntity {
                what: "artifact",
                key: local.display().to_string(),
                reason: "is not a file".into(),
            }));
        }
        let dest = self.artifacts_dir(run_id).join(artifact_path);
        let dir = dest.parent().expect("artifact path has a parent");
        fs::create_dir_all(dir).map_err(TrackError::io(dir))?;
        let tmp = temp_sibling(&dest);
        if fs::hard_link(local, &tmp).is_err() {
            fs::copy(local, &tmp).map_err(TrackError::io(local))?;
        }
        fs::rename(&tmp, &dest).map_err(TrackError::io(&dest))
    }

    /// The run's artifacts as (artifact path, file, size), sorted by path.
    pub fn list_artifacts(&self, run_id: &RunId) -> Result<Vec<(String, PathBuf, u64)>, TrackError> {
        let root = self.artifacts_dir(run_id);
        let mut out = Vec::new();
        if root.is_dir() {
            walk(&root, &root, &mut out)?;
        }
        out.sort();
        Ok(out)
    }

    /// Ids of all complete run records, oldest first.
    pub fn run_ids(&self) -> Result<Vec<RunId>, TrackError> {
        let dir = self.runs_dir();
        let mut ids = Vec::new();
        if !dir.is_dir() {
            return Ok(ids); // a store whose runs were never tracked, or opened with open_existing
        }
        for entry in fs::read_dir(&dir).map_err(TrackError::io(&dir))? {
            let entry = entry.map_err(TrackError::io(&dir))?;
            if entry.path().join("meta.json").is_file() {
                ids.push(RunId::new(entry.file_name().to_string_lossy().into_owned()));
            }
        }
        ids.sort();
        Ok(ids)
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf, u64)>) -> Result<(), TrackError> {
    for entry in fs::read_dir(dir).map_err(TrackError::io(dir))? {
        let entry = entry.map_err(TrackError::io(dir))?;
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(".tmp-") {
            continue;
        }
        let meta = entry.metadata().map_err(TrackError::io(&path))?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).expect("walk stays under root");
            let rel = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
            out.push((rel, path, meta.len()));
        }
    }
    Ok(())
}

fn check_artifact_path(path: &str) -> Result<(), TrackError> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\\')
        || path.split('/').any(|seg| seg.is_empty() || seg == "." || seg == ".." || seg.starts_with(".tmp-"));
    if bad {
        return Err(TrackError::Invalid(InvalidEntity {
            what: "artifact path",
            key: path.to_string(),
            reason: "must be a relative path like `checkpoints/model.safetensors` without '.' or '..'".into(),
        }));
    }
    Ok(())
}

fn temp_sibling(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".tmp-{}-{}-{name}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

/// Writes JSON to a temporary sibling then renames it over `path`, so readers see the old
/// or the new file, never half of one.
pub(crate) fn write_json_atomic<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), TrackError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(TrackError::json(path))?;
    let tmp = temp_sibling(path);
    fs::write(&tmp, bytes).map_err(TrackError::io(&tmp))?;
    fs::rename(&tmp, path).map_err(TrackError::io(path))
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TrackError> {
    let bytes = fs::read(path).map_err(TrackError::io(path))?;
    serde_json::from_slice(&bytes).map_err(TrackError::json(path))
}

/// Appends metric lines in one write, so a concurrent reader sees whole lines or nothing new
/// (short of a crash mid-write, which leaves a partial last line the reader skips).
pub(crate) fn append_metrics(file: &mut File, path: &Path, metrics: &[Metric]) -> Result<(), TrackError> {
    let mut buf = Vec::with_capacity(metrics.len() * 80);
    for m in metrics {
        serde_json::to_writer(&mut buf, m).map_err(TrackError::json(path))?;
        buf.push(b'\n');
    }
    file.write_all(&buf).map_err(TrackError::io(path))
}

/// One line of `distillery runs`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunSummary {
    pub meta: RunMeta,
    pub n_params: usize,
    pub n_metric_points: usize,
    /// Last logged value of each metric key.
    pub last_metrics: BTreeMap<String, f64>,
    pub artifacts: Vec<String>,
    /// Servers this run was pushed to, with the MLflow run id and whether everything
    /// (metrics, artifacts, final status) has been acknowledged.
    pub synced: Vec<SyncedTo>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SyncedTo {
    pub uri: String,
    pub mlflow_run_id: String,
    pub complete: bool,
}

/// Lists every run in the store, oldest first (for `distillery runs`). The store must exist
/// ([`TrackError::NoStore`] otherwise): listing never creates one.
pub fn list_runs(store: &Path) -> Result<Vec<RunSummary>, TrackError> {
    let store = LocalStore::open_existing(store)?;
    store.reap_abandoned()?;
    let ledgers = super::sync::read_all_ledgers(&store)?;
    let mut out = Vec::new();
    for run_id in store.run_ids()? {
        let meta = store.read_meta(&run_id)?;
        let metrics = store.read_metrics(&run_id)?;
        let mut last_metrics = BTreeMap::new();
        for m in &metrics {
            last_metrics.insert(m.key.clone(), m.value);
        }
        let artifacts = store.list_artifacts(&run_id)?;
        let metrics_len = store.metrics_len(&run_id)?;
        let synced = ledgers
            .iter()
            .filter_map(|ledger| {
                let entry = ledger.runs.get(&run_id)?;
                Some(SyncedTo {
                    uri: ledger.uri.clone(),
                    mlflow_run_id: entry.mlflow_run_id.clone(),
                    complete: entry.is_complete(&meta, metrics_len, &artifacts),
                })
            })
            .collect();
        out.push(RunSummary {
            n_params: store.read_params(&run_id)?.len(),
            n_metric_points: metrics.len(),
            last_metrics,
            artifacts: artifacts.into_iter().map(|(p, _, _)| p).collect(),
            synced,
            meta,
        });
    }
    Ok(out)
}

/// A plain-text table of runs: invocations, each followed by its node runs indented.
pub fn format_runs(runs: &[RunSummary]) -> String {
    let mut out = String::new();
    let header = format!(
        "{:<22} {:<10} {:<28} {:<10} {:>7} {:>8}  {}\n",
        "RUN", "STATUS", "NAME", "KIND", "POINTS", "SECONDS", "SYNCED"
    );
    out.push_str(&header);
    let line = |r: &RunSummary, indent: &str| {
        let m = &r.meta;
        let seconds = m
            .end_ms
            .map(|e| format!("{:.1}", (e - m.start_ms) as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let kind = match (&m.node_kind, &m.cached_from) {
            (_, Some(_)) => "cached".to_string(),
            (Some(k), None) => k.clone(),
            (None, None) => "invocation".to_string(),
        };
        let synced = if r.synced.is_empty() {
            "local only".to_string()
        } else {
            r.synced
                .iter()
                .map(|s| format!("{}{}", s.uri, if s.complete { "" } else { " (partial)" }))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{:<22} {:<10} {:<28} {:<10} {:>7} {:>8}  {}\n",
            m.run_id,
            m.status,
            match m.kind {
                RunKind::Invocation => format!("{indent}{} [{}]", m.name, m.experiment),
                RunKind::Node => format!("{indent}{}", m.name),
            },
            kind,
            r.n_metric_points,
            seconds,
            synced
        )
    };
    for inv in runs.iter().filter(|r| r.meta.parent.is_none()) {
        out.push_str(&line(inv, ""));
        for child in runs.iter().filter(|r| r.meta.parent.as_ref() == Some(&inv.meta.run_id)) {
            out.push_str(&line(child, "  "));
        }
    }
    // Node runs whose invocation record is gone still get listed.
    for orphan in runs
        .iter()
        .filter(|r| r.meta.parent.as_ref().is_some_and(|p| !runs.iter().any(|x| &x.meta.run_id == p)))
    {
        out.push_str(&line(orphan, "? "));
    }
    out
}

pub(crate) fn new_meta(
    run_id: RunId,
    kind: RunKind,
    parent: Option<RunId>,
    experiment: &str,
    name: &str,
    start_ms: i64,
) -> RunMeta {
    RunMeta {
        format: FORMAT,
        run_id,
        kind,
        parent,
        experiment: experiment.to_string(),
        name: name.to_string(),
        node_kind: None,
        cache_key: None,
        cached_from: None,
        status: RunStatus::Running,
        start_ms,
        end_ms: None,
        end_reason: None,
        resumed: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_run() -> (tempfile::TempDir, LocalStore, RunId) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join(".distillery")).unwrap();
        let id = RunId::generate(super::super::now_ms());
        let meta = new_meta(id.clone(), RunKind::Invocation, None, "exp", "spec.yaml", 5);
        let params = vec![("a.b".to_string(), "1".to_string())];
        let tags = BTreeMap::from([("host".to_string(), "h".to_string())]);
        store.create_run(&meta, &params, &tags).unwrap();
        (dir, store, id)
    }

    #[test]
    fn a_run_is_reaped_only_once_its_owner_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join(".distillery")).unwrap();
        let id = RunId::generate(super::super::now_ms());
        let meta = new_meta(id.clone(), RunKind::Node, None, "exp", "n", 5);
        let owner = store.create_owned_run(&meta, &[], &BTreeMap::new()).unwrap();
        let mut m = store.metrics_appender(&id).unwrap();
        append_metrics(&mut m, &store.metrics_path(&id), &[Metric::new("loss", 1.0, 1, 40)]).unwrap();
        // Its owner lives (the lock is held): left alone.
        assert_eq!(store.reap_abandoned().unwrap(), Vec::<RunId>::new());
        assert_eq!(store.read_meta(&id).unwrap().status, RunStatus::Running);
        // The owner is gone (its lock released, as when a process dies): FAILED, at its last metric.
        drop(owner);
        assert_eq!(store.reap_abandoned().unwrap(), vec![id.clone()]);
        let meta = store.read_meta(&id).unwrap();
        assert_eq!((meta.status, meta.end_ms), (RunStatus::Failed, Some(40)));
        let reason = meta.end_reason.unwrap();
        assert!(
            reason.contains(&format!("pid {}", std::process::id()))
                && reason.contains("ended without finishing"),
            "{reason}"
        );
        // Once ended it stays as it is; a run without an owner lock (an older store) is not touched.
        assert!(store.reap_abandoned().unwrap().is_empty());
        let (_d, old, old_id) = store_with_run();
        assert!(old.reap_abandoned().unwrap().is_empty());
        assert_eq!(old.read_meta(&old_id).unwrap().status, RunStatus::Running);
    }

    #[test]
    fn an_interrupted_run_is_reopened_running_under_its_owner_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join(".distillery")).unwrap();
        let id = RunId::generate(super::super::now_ms());
        let mut meta = new_meta(id.clone(), RunKind::Node, None, "exp", "n", 5);
        meta.cache_key = Some("k".into());
        let owner = store.create_owned_run(&meta, &[], &BTreeMap::new()).unwrap();
        let path = store.metrics_path(&id);
        let mut m = store.metrics_appender(&id).unwrap();
        append_metrics(&mut m, &path, &[Metric::new("loss", 1.0, 1, 40), Metric::new("loss", 0.5, 2, 41)])
            .unwrap();
        m.write_all(br#"{"key":"loss","va"#).unwrap(); // the process died mid-write
        assert_eq!(store.resumable_run("k").unwrap(), Some(id.clone()), "RUNNING qualifies");
        assert_eq!(store.resumable_run("other").unwrap(), None);
        // Its process is gone: reaped FAILED, then reopened by the process that resumes it.
        drop(owner);
        assert_eq!(store.reap_abandoned().unwrap(), vec![id.clone()]);
        assert_eq!(store.resumable_run("k").unwrap(), Some(id.clone()), "FAILED qualifies");
        let r = store.reopen_run(&id, "epoch 3 of 10, batch 0 of 5").unwrap().expect("reopened");
        let read = store.read_meta(&id).unwrap();
        assert_eq!(read, r.meta);
        assert_eq!(
            (read.status, read.end_ms, read.end_reason, read.resumed),
            (RunStatus::Running, None, None, 1)
        );
        assert_eq!(store.read_tags(&id).unwrap()[RESUMED_TAG], "epoch 3 of 10, batch 0 of 5");
        assert_eq!(r.logged_through, BTreeMap::from([("loss".to_string(), 2)]));
        // The unfinished line is cut, so the next append starts a line of its own.
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("}\n") && text.lines().count() == 2, "{text:?}");
        let lock = fs::read_to_string(store.run_dir(&id).join(OWNER_LOCK)).unwrap();
        assert_eq!(
            lock.trim(),
            format!("pid {} on {}", std::process::id(), super::super::tracker::host_name())
        );
        // Held by its new owner: no reap ends it and nobody else reopens it.
        assert!(store.reap_abandoned().unwrap().is_empty());
        assert!(store.reopen_run(&id, "x").unwrap().is_none());
        assert_eq!(store.read_meta(&id).unwrap().resumed, 1);
        // Stopped again (Ctrl-C: KILLED), and reopened again: the places add up.
        let mut killed = store.read_meta(&id).unwrap();
        (killed.status, killed.end_ms) = (RunStatus::Killed, Some(60));
        store.write_meta(&killed).unwrap();
        drop(r.owner);
        let again = store.reopen_run(&id, "epoch 7 of 10, batch 2 of 5").unwrap().expect("reopened");
        assert_eq!((again.meta.status, again.meta.end_ms, again.meta.resumed), (RunStatus::Running, None, 2));
        assert_eq!(
            store.read_tags(&id).unwrap()[RESUMED_TAG],
            "epoch 3 of 10, batch 0 of 5; epoch 7 of 10, batch 2 of 5"
        );
        // Finished: not reopened, and a later resume of the key starts a new run.
        let mut done = store.read_meta(&id).unwrap();
        (done.status, done.end_ms) = (RunStatus::Finished, Some(70));
        store.write_meta(&done).unwrap();
        drop(again.owner);
        assert!(store.reopen_run(&id, "x").unwrap().is_none());
        assert_eq!(store.resumable_run("k").unwrap(), None);
        assert_eq!(store.read_meta(&id).unwrap().resumed, 2, "a meta.json with resumed: 2 reads back");
    }

    #[test]
    fn cached_finished_and_ownerless_runs_are_not_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join(".distillery")).unwrap();
        let node = |status: RunStatus, cached: bool| {
            let id = RunId::generate(super::super::now_ms());
            let mut meta = new_meta(id.clone(), RunKind::Node, None, "exp", "n", 5);
            meta.cache_key = Some("k".into());
            meta.status = status;
            meta.cached_from = cached.then(|| RunId::new("orig"));
            store.create_run(&meta, &[], &BTreeMap::new()).unwrap(); // no owner lock
            id
        };
        let old_running = node(RunStatus::Running, false);
        assert!(store.reopen_run(&old_running, "x").unwrap().is_none(), "its owner cannot be told");
        let failed = node(RunStatus::Failed, false);
        let cached = node(RunStatus::Finished, true);
        assert!(store.reopen_run(&cached, "x").unwrap().is_none());
        // The latest trained run of the key is the FAILED one (cached runs do not count)...
        assert_eq!(store.resumable_run("k").unwrap(), Some(failed.clone()));
        // ...and one recorded before owner locks existed gets one when reopened.
        let r = store.reopen_run(&failed, "epoch 2 of 3, batch 0 of 1").unwrap().expect("reopened");
        assert!(store.run_dir(&failed).join(OWNER_LOCK).is_file());
        drop(r);
        // A trained run that finished after it: nothing of the key to resume.
        node(RunStatus::Finished, false);
        assert_eq!(store.resumable_run("k").unwrap(), None);
    }

    #[test]
    fn run_record_round_trips() {
        let (_dir, store, id) = store_with_run();
        assert_eq!(store.run_ids().unwrap(), vec![id.clone()]);
        assert_eq!(store.read_meta(&id).unwrap().name, "spec.yaml");
        assert_eq!(store.read_params(&id).unwrap(), vec![("a.b".to_string(), "1".to_string())]);
        assert_eq!(store.read_tags(&id).unwrap()["host"], "h");
        let path = store.metrics_path(&id);
        let mut file = store.metrics_appender(&id).unwrap();
        let logged = vec![
            Metric::new("loss", f64::NAN, 0, 10),
            Metric::new("loss", 0.5, 1, 11),
            Metric::new("acc", f64::INFINITY, 1, 11),
        ];
        append_metrics(&mut file, &path, &logged).unwrap();
        let read = store.read_metrics(&id).unwrap();
        assert_eq!(read.len(), 3);
        assert!(read.iter().zip(&logged).all(|(a, b)| a.same_as(b)));
    }

    #[test]
    fn partial_last_line_is_left_for_later_and_offsets_resume_exactly() {
        let (_dir, store, id) = store_with_run();
        let path = store.metrics_path(&id);
        let mut file = store.metrics_appender(&id).unwrap();
        append_metrics(&mut file, &path, &[Metric::new("a", 1.0, 0, 1), Metric::new("a", 2.0, 1, 2)])
            .unwrap();
        file.write_all(br#"{"key":"a","val"#).unwrap();
        let chunk = store.read_metrics_from(&id, 0).unwrap();
        assert_eq!(chunk.metrics.len(), 2);
        let rest = store.read_metrics_from(&id, chunk.ends[0]).unwrap();
        assert_eq!(rest.metrics, vec![Metric::new("a", 2.0, 1, 2)]);
        assert_eq!(rest.ends, vec![chunk.ends[1]]);
        file.write_all(b"ue\":3.0,\"step\":2,\"timestamp\":3}\n").unwrap();
        let tail = store.read_metrics_from(&id, chunk.ends[1]).unwrap();
        assert_eq!(tail.metrics, vec![Metric::new("a", 3.0, 2, 3)]);
    }

    #[test]
    fn corrupt_metric_line_names_the_file() {
        let (_dir, store, id) = store_with_run();
        fs::write(store.metrics_path(&id), "not json\n").unwrap();
        let err = store.read_metrics(&id).unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl") && err.contains("invalid metric record"), "{err}");
    }

    #[test]
    fn artifacts_are_copied_under_their_path() {
        let (dir, store, id) = store_with_run();
        let src = dir.path().join("model.bin");
        fs::write(&src, b"weights").unwrap();
        store.add_artifact(&id, &src, "checkpoints/model.bin").unwrap();
        let listed = store.list_artifacts(&id).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].0.as_str(), listed[0].2), ("checkpoints/model.bin", 7));
        for bad in ["../x", "/abs", "a//b", ""] {
            assert!(store.add_artifact(&id, &src, bad).is_err(), "{bad:?}");
        }
        let err = store.add_artifact(&id, &dir.path().join("missing"), "m").unwrap_err().to_string();
        assert!(err.contains("is not a file"), "{err}");
    }

    #[test]
    fn listing_a_missing_store_says_so_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("typo");
        let err = list_runs(&missing).unwrap_err();
        assert!(matches!(err, TrackError::NoStore { .. }), "{err}");
        assert!(err.to_string().contains("typo"), "{err}");
        assert!(!missing.exists(), "reading created the store");
        // An existing store with nothing tracked yet lists no runs.
        assert!(list_runs(dir.path()).unwrap().is_empty());
        assert!(!dir.path().join("runs").exists());
    }

    #[test]
    fn unknown_run_is_a_clear_error() {
        let (_dir, store, _) = store_with_run();
        let err = store.read_meta(&RunId::new("nope")).unwrap_err().to_string();
        assert!(err.starts_with("unknown run nope: no run record under"), "{err}");
    }
}
