//! The event sink the executor feeds: writes run records locally and, with a tracking URI,
//! pushes them to MLflow from a background thread.

use super::params::{check_key, check_param, check_tag, flatten_params};
use super::store::{LocalStore, Metric, RunKind, RunMeta, append_metrics, new_meta};
use super::sync::{SyncReport, push_runs};
use super::{ClientConfig, MlflowClient, RunId, RunStatus, TrackError, now_ms};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where runs are recorded and, optionally, pushed.
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// The local run store (`.distillery/` beside the spec by default).
    pub store_dir: PathBuf,
    /// An `http(s)://` MLflow server to push to live; see [`resolve_tracking_uri`].
    pub tracking_uri: Option<String>,
    pub client: ClientConfig,
    /// How long the background push collects new records before sending them, so a training
    /// loop logging every step costs one request per interval rather than one per step.
    pub push_interval: Duration,
    /// Longest wait between retries while the server is unreachable.
    pub max_retry_interval: Duration,
    /// [`Tracker::finish`] leaves the records of cached nodes it has not pushed yet to a later
    /// push (its report's `deferred`), for a caller that hands them to a background `sync`.
    pub defer_cached_at_finish: bool,
}

impl TrackerConfig {
    pub fn new(store_dir: impl Into<PathBuf>, tracking_uri: Option<String>) -> TrackerConfig {
        TrackerConfig {
            store_dir: store_dir.into(),
            tracking_uri,
            client: ClientConfig::default(),
            push_interval: Duration::from_secs(1),
            max_retry_interval: Duration::from_secs(30),
            defer_cached_at_finish: false,
        }
    }
}

/// The tracking URI by MLflow's convention: the `--tracking` flag when given, else
/// `MLFLOW_TRACKING_URI` when set and not empty. `None` means record locally only.
pub fn resolve_tracking_uri(flag: Option<&str>) -> Option<String> {
    flag.map(str::to_string)
        .or_else(|| std::env::var("MLFLOW_TRACKING_URI").ok())
        .filter(|uri| !uri.trim().is_empty())
}

/// Describes a node run: who it is and the resolved config its params come from.
#[derive(Clone, Copy, Debug)]
pub struct NodeRun<'a> {
    pub node_name: &'a str,
    /// Node kind: train, finetune, distill, generate, evaluate, report, plugin.
    pub kind: &'a str,
    pub cache_key: &'a str,
    /// The resolved node config; logged as params with dotted keys ([`flatten_params`]).
    pub config: &'a serde_json::Value,
    /// Device the node runs on (`cpu`, `cuda:0`).
    pub device: &'a str,
    /// Extra tags.
    pub tags: &'a [(String, String)],
}

/// State of the live push, for progress displays.
#[derive(Clone, Debug, Default)]
pub struct PushState {
    pub uri: String,
    pub passes: u64,
    pub last_report: Option<SyncReport>,
    /// The last pass's problem, if it did not complete (records stay spooled and are retried).
    pub last_error: Option<String>,
}

/// Records runs. Share it by reference across node threads; every method takes `&self`.
///
/// Every call writes to the local store before it returns, and never waits on the network:
/// with a tracking URI, a background thread pushes new records (the same code as [`super::sync`]).
/// Call [`Tracker::finish`] at the end to push what is left.
pub struct Tracker {
    store: LocalStore,
    open: Mutex<HashMap<RunId, OpenRun>>,
    /// The latest finished run that computed each cache key (not one that found it cached),
    /// and the runs read for it: each run's meta is read once (a lookup that misses reads only
    /// runs made since, by another process), and `end_run` adds this process's.
    originals: Mutex<Originals>,
    host: String,
    push: Option<PushHandle>,
}

#[derive(Default)]
struct Originals {
    by_key: HashMap<String, RunId>,
    read: std::collections::HashSet<RunId>,
}

/// A node run's record before it is written.
struct NodeRecord {
    meta: RunMeta,
    params: Vec<(String, String)>,
    tags: BTreeMap<String, String>,
}

struct OpenRun {
    meta: RunMeta,
    metrics: File,
    metrics_path: PathBuf,
    /// The run's owner lock while this process records it (dropped when the run ends); `None`
    /// for a run attached from another process, which holds it.
    _owner: Option<File>,
    /// A reopened run's highest step per metric key before it was reopened: points at or below
    /// it are dropped (see [`Tracker::resume_node_run`]). Empty for every other run.
    logged_through: BTreeMap<String, i64>,
}

struct PushHandle {
    tx: mpsc::Sender<Msg>,
    /// Set while a nudge is queued and its pass has not started: further records need no
    /// message (each costs a thread wake-up on the training thread).
    nudge_pending: Arc<AtomicBool>,
    thread: JoinHandle<Option<SyncReport>>,
    state: Arc<Mutex<PushState>>,
}

enum Msg {
    Track(RunId),
    /// A run made by this process, which no server can have yet.
    TrackNew(RunId),
    Nudge,
    Finish,
}

impl Tracker {
    /// Opens the store (creating it) and, with a tracking URI, starts the background push.
    /// A bad URI is an error here; an unreachable server is not (records wait in the store).
    pub fn open(config: TrackerConfig) -> Result<Tracker, TrackError> {
        let store = LocalStore::open(&config.store_dir)?;
        // Runs left RUNNING by a process that died are ended first (and pushed as FAILED).
        store.reap_abandoned()?;
        let push = match &config.tracking_uri {
            Some(uri) => {
                Some(start_push(store.clone(), MlflowClient::new(uri, config.client.clone())?, &config)?)
            }
            None => None,
        };
        Ok(Tracker {
            store,
            open: Mutex::new(HashMap::new()),
            originals: Default::default(),
            host: host_name(),
            push,
        })
    }

    pub fn store(&self) -> &LocalStore {
        &self.store
    }

    /// Starts the run of one invocation (the parent of its node runs). The spec is copied as
    /// artifact `spec/<file name>`; the git commit of the repository holding it, if any, is tagged.
    pub fn start_invocation(
        &self,
        experiment: &str,
        spec_path: Option<&Path>,
        tags: &[(String, String)],
    ) -> Result<RunId, TrackError> {
        if experiment.trim().is_empty() {
            return Err(TrackError::Invalid(super::params::InvalidEntity {
                what: "experiment",
                key: experiment.to_string(),
                reason: "must not be empty".into(),
            }));
        }
        let start = now_ms();
        let run_id = RunId::generate(start);
        let name = spec_path
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "invocation".into());
        let mut all_tags = BTreeMap::new();
        all_tags.insert("distillery.run_kind".to_string(), "invocation".to_string());
        all_tags.insert("distillery.host".to_string(), self.host.clone());
        all_tags.insert("distillery.version".to_string(), env!("CARGO_PKG_VERSION").to_string());
        all_tags.insert("mlflow.source.type".to_string(), "LOCAL".to_string());
        if let Ok(user) = std::env::var("USER") {
            all_tags.insert("mlflow.user".to_string(), user);
        }
        if let Some(spec) = spec_path {
            all_tags.insert("mlflow.source.name".to_string(), spec.display().to_string());
            if let Some(commit) = git_commit(spec) {
                all_tags.insert("mlflow.source.git.commit".to_string(), commit);
            }
        }
        all_tags.extend(tags.iter().cloned());
        for (k, v) in &all_tags {
            check_tag(k, v)?;
        }
        let meta = new_meta(run_id.clone(), RunKind::Invocation, None, experiment, &name, start);
        self.create(meta, &[], &all_tags)?;
        if let Some(spec) = spec_path {
            self.log_artifact(&run_id, spec, &format!("spec/{name}"))?;
        }
        Ok(run_id)
    }

    /// Starts the run of one node under its invocation. Params are the node's resolved config,
    /// flattened; a key or value MLflow would refuse or cut is an error before anything is written.
    pub fn start_node_run(&self, parent: &RunId, node: &NodeRun<'_>) -> Result<RunId, TrackError> {
        let NodeRecord { meta, params, tags } = self.node_record(parent, node)?;
        let run_id = meta.run_id.clone();
        self.create(meta, &params, &tags)?;
        Ok(run_id)
    }

    /// Records a node whose result came from the cache: a finished run with the node's params
    /// that points to the run which produced the result (tag `distillery.cached_from`, and on
    /// MLflow `distillery.cached_from_mlflow_run`). Nothing is retrained or copied.
    /// `metrics`: the result's final metrics (the original run's, which the result is).
    pub fn log_cached(
        &self,
        parent: &RunId,
        node: &NodeRun<'_>,
        original: &RunId,
        metrics: &[Metric],
    ) -> Result<RunId, TrackError> {
        for m in metrics {
            check_key("metric", &m.key)?;
        }
        self.store.read_meta(original)?;
        let NodeRecord { mut meta, params, mut tags } = self.node_record(parent, node)?;
        meta.cached_from = Some(original.clone());
        meta.status = RunStatus::Finished;
        meta.end_ms = Some(meta.start_ms);
        tags.insert("distillery.cached".to_string(), "true".to_string());
        tags.insert("distillery.cached_from".to_string(), original.to_string());
        let run_id = meta.run_id.clone();
        self.store.create_run(&meta, &params, &tags)?;
        if !metrics.is_empty() {
            let mut f = self.store.metrics_appender(&run_id)?;
            append_metrics(&mut f, &self.store.metrics_path(&run_id), metrics)?;
        }
        self.send(Msg::TrackNew(run_id.clone()));
        Ok(run_id)
    }

    /// Opens a run started by another process (e.g. a node running under Slurm while the
    /// invocation runs on the login node), so this tracker can log to it and end it. Both
    /// processes append whole lines to the same metrics file, so the store must be on a file
    /// system with atomic appends (a local disk; not NFS).
    pub fn attach_run(&self, run_id: &RunId) -> Result<(), TrackError> {
        let meta = self.store.read_meta(run_id)?;
        if meta.status.is_terminal() {
            return Err(TrackError::RunEnded { run_id: run_id.to_string(), status: meta.status });
        }
        let metrics = self.store.metrics_appender(run_id)?;
        let metrics_path = self.store.metrics_path(run_id);
        self.open.lock().expect("tracker lock").insert(
            run_id.clone(),
            OpenRun { meta, metrics, metrics_path, _owner: None, logged_through: BTreeMap::new() },
        );
        self.send(Msg::Track(run_id.clone()));
        Ok(())
    }

    /// Reopens the run of a node that continues from a checkpoint (`resume` says where: `epoch 3
    /// of 10, batch 0`) instead of starting a new one: the latest trained node run of
    /// `cache_key`, when it did not finish (FAILED because its process died, KILLED by Ctrl-C,
    /// or RUNNING with its owner gone). It is RUNNING again, owned by this process, with
    /// `resume` appended to its tag `distillery.resumed`; the push sets the MLflow run back to
    /// RUNNING (same MLflow run id), and ending it pushes the new status. Points logged again for
    /// steps the run already has (the epochs after its last checkpoint are trained again) are
    /// dropped, so each step is recorded once. `None` when there is no such run (the caller
    /// starts a new one with [`Tracker::start_node_run`]).
    pub fn resume_node_run(&self, cache_key: &str, resume: &str) -> Result<Option<RunId>, TrackError> {
        let Some(run_id) = self.store.resumable_run(cache_key)? else { return Ok(None) };
        if self.open.lock().expect("tracker lock").contains_key(&run_id) {
            return Ok(None); // this process is recording it already
        }
        let Some(reopened) = self.store.reopen_run(&run_id, resume)? else { return Ok(None) };
        let metrics = self.store.metrics_appender(&run_id)?;
        let metrics_path = self.store.metrics_path(&run_id);
        let run = OpenRun {
            meta: reopened.meta,
            metrics,
            metrics_path,
            _owner: Some(reopened.owner),
            logged_through: reopened.logged_through,
        };
        self.open.lock().expect("tracker lock").insert(run_id.clone(), run);
        self.send(Msg::Track(run_id.clone()));
        Ok(Some(run_id))
    }

    /// The latest finished, trained (not cached) node run with this cache key: the run a cached
    /// node points to.
    pub fn find_run_by_cache_key(&self, cache_key: &str) -> Result<Option<RunId>, TrackError> {
        let mut index = self.originals.lock().expect("tracker lock");
        if let Some(id) = index.by_key.get(cache_key) {
            return Ok(Some(id.clone()));
        }
        // Run ids sort by start time: the last one seen is the latest.
        for run_id in self.store.run_ids()? {
            if index.read.contains(&run_id) {
                continue;
            }
            let meta = self.store.read_meta(&run_id)?;
            // A run still going may finish later: read it again then.
            if meta.status.is_terminal() {
                index.read.insert(run_id.clone());
            }
            if let (Some(key), None, RunStatus::Finished) = (&meta.cache_key, &meta.cached_from, meta.status)
            {
                index.by_key.insert(key.clone(), run_id);
            }
        }
        Ok(index.by_key.get(cache_key).cloned())
    }

    /// Appends metric points (NaN and infinities allowed). Returns once they are in the local
    /// store; the network is never waited on.
    pub fn log_metrics(&self, run_id: &RunId, metrics: &[Metric]) -> Result<(), TrackError> {
        for m in metrics {
            check_key("metric", &m.key)?;
        }
        {
            let mut open = self.open.lock().expect("tracker lock");
            let run = self.open_run(&mut open, run_id)?;
            if run.logged_through.is_empty() {
                append_metrics(&mut run.metrics, &run.metrics_path, metrics)?;
            } else {
                // A reopened run: steps it has from before are not recorded twice.
                let new: Vec<Metric> = metrics
                    .iter()
                    .filter(|m| run.logged_through.get(&m.key).is_none_or(|&last| m.step > last))
                    .cloned()
                    .collect();
                if !new.is_empty() {
                    append_metrics(&mut run.metrics, &run.metrics_path, &new)?;
                }
            }
        }
        self.send(Msg::Nudge);
        Ok(())
    }

    /// Copies a file into the run's artifacts as `artifact_path` (e.g. `checkpoints/final.safetensors`).
    pub fn log_artifact(
        &self,
        run_id: &RunId,
        local_path: &Path,
        artifact_path: &str,
    ) -> Result<(), TrackError> {
        {
            let mut open = self.open.lock().expect("tracker lock");
            self.open_run(&mut open, run_id)?;
        }
        self.store.add_artifact(run_id, local_path, artifact_path)?;
        self.send(Msg::Nudge);
        Ok(())
    }

    /// Ends a run with its final status; it takes no more records after.
    pub fn end_run(&self, run_id: &RunId, status: RunStatus) -> Result<(), TrackError> {
        if !status.is_terminal() {
            return Err(TrackError::Invalid(super::params::InvalidEntity {
                what: "status",
                key: status.as_mlflow().to_string(),
                reason: "a run ends FINISHED, FAILED or KILLED".into(),
            }));
        }
        {
            let mut open = self.open.lock().expect("tracker lock");
            let mut run = open.remove(run_id).ok_or_else(|| self.not_open(run_id))?;
            run.meta.status = status;
            run.meta.end_ms = Some(now_ms());
            // Written after the run's last metric line: a push that sees the final status has
            // all the metrics (see sync.rs).
            self.store.write_meta(&run.meta)?;
            if let (Some(key), None, RunStatus::Finished) =
                (&run.meta.cache_key, &run.meta.cached_from, status)
            {
                let mut index = self.originals.lock().expect("tracker lock");
                index.by_key.insert(key.clone(), run_id.clone());
                index.read.insert(run_id.clone());
            }
        }
        self.send(Msg::Nudge);
        Ok(())
    }

    /// The live push's state, when a tracking URI is set.
    pub fn push_state(&self) -> Option<PushState> {
        self.push.as_ref().map(|p| p.state.lock().expect("push state lock").clone())
    }

    /// Ends the background push after one last attempt and returns its report (None without a
    /// tracking URI). Whatever did not reach the server stays in the store for `distillery sync`.
    pub fn finish(mut self) -> Option<SyncReport> {
        let push = self.push.take()?;
        let _ = push.tx.send(Msg::Finish);
        match push.thread.join() {
            Ok(report) => report,
            // A panicked push loses nothing (the runs are in the local store), but it must not
            // read as "nothing to report": say it stopped, so the CLI points at `sync`.
            Err(payload) => Some(SyncReport {
                aborted: Some(format!("the push thread panicked: {}", crate::data::panic_message(&*payload))),
                ..SyncReport::default()
            }),
        }
    }

    fn create(
        &self,
        meta: RunMeta,
        params: &[(String, String)],
        tags: &BTreeMap<String, String>,
    ) -> Result<(), TrackError> {
        let run_id = meta.run_id.clone();
        let owner = self.store.create_owned_run(&meta, params, tags)?;
        let metrics = self.store.metrics_appender(&run_id)?;
        let metrics_path = self.store.metrics_path(&run_id);
        self.open.lock().expect("tracker lock").insert(
            run_id.clone(),
            OpenRun { meta, metrics, metrics_path, _owner: Some(owner), logged_through: BTreeMap::new() },
        );
        self.send(Msg::TrackNew(run_id));
        Ok(())
    }

    fn node_record(&self, parent: &RunId, node: &NodeRun<'_>) -> Result<NodeRecord, TrackError> {
        let parent_meta = self.store.read_meta(parent)?;
        let params = flatten_params(node.config);
        for (k, v) in &params {
            check_param(k, v)?;
        }
        let parent_tags = self.store.read_tags(parent)?;
        let mut tags = BTreeMap::new();
        tags.insert("distillery.run_kind".to_string(), "node".to_string());
        tags.insert("distillery.node".to_string(), node.node_name.to_string());
        tags.insert("distillery.node_kind".to_string(), node.kind.to_string());
        tags.insert("distillery.cache_key".to_string(), node.cache_key.to_string());
        tags.insert("distillery.device".to_string(), node.device.to_string());
        tags.insert("distillery.host".to_string(), self.host.clone());
        for inherited in
            ["mlflow.source.git.commit", "mlflow.source.name", "mlflow.source.type", "mlflow.user"]
        {
            if let Some(v) = parent_tags.get(inherited) {
                tags.insert(inherited.to_string(), v.clone());
            }
        }
        tags.extend(node.tags.iter().cloned());
        for (k, v) in &tags {
            check_tag(k, v)?;
        }
        let start = now_ms();
        let mut meta = new_meta(
            RunId::generate(start),
            RunKind::Node,
            Some(parent.clone()),
            &parent_meta.experiment,
            node.node_name,
            start,
        );
        meta.node_kind = Some(node.kind.to_string());
        meta.cache_key = Some(node.cache_key.to_string());
        Ok(NodeRecord { meta, params, tags })
    }

    fn open_run<'m>(
        &self,
        open: &'m mut HashMap<RunId, OpenRun>,
        run_id: &RunId,
    ) -> Result<&'m mut OpenRun, TrackError> {
        if !open.contains_key(run_id) {
            return Err(self.not_open(run_id));
        }
        Ok(open.get_mut(run_id).expect("checked above"))
    }

    fn not_open(&self, run_id: &RunId) -> TrackError {
        match self.store.read_meta(run_id) {
            Ok(meta) => TrackError::RunEnded { run_id: run_id.to_string(), status: meta.status },
            Err(e) => e,
        }
    }

    fn send(&self, msg: Msg) {
        if let Some(push) = &self.push {
            if matches!(msg, Msg::Nudge) && push.nudge_pending.swap(true, Ordering::SeqCst) {
                return;
            }
            // A send fails only if the push thread is gone; records stay in the store for sync.
            let _ = push.tx.send(msg);
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        // Without finish(), stop the push thread without waiting on the network; the store
        // keeps everything for the next sync.
        if let Some(push) = self.push.take() {
            drop(push.tx);
        }
    }
}

fn start_push(
    store: LocalStore,
    client: MlflowClient,
    config: &TrackerConfig,
) -> Result<PushHandle, TrackError> {
    let (tx, rx) = mpsc::channel::<Msg>();
    let state =
        Arc::new(Mutex::new(PushState { uri: client.base_uri().to_string(), ..PushState::default() }));
    let thread_state = state.clone();
    let nudge_pending = Arc::new(AtomicBool::new(false));
    let thread_nudge = nudge_pending.clone();
    let interval = config.push_interval;
    let max_retry = config.max_retry_interval.max(interval);
    let defer_at_finish = config.defer_cached_at_finish;
    let thread = std::thread::Builder::new()
        .name("distillery-mlflow-push".into())
        .spawn(move || {
            let mut runs: Vec<RunId> = Vec::new();
            let mut fresh: std::collections::HashSet<RunId> = std::collections::HashSet::new();
            let mut due: Option<Instant> = None;
            let mut retry_wait = interval;
            let pass = |runs: &[RunId],
                        fresh: &mut std::collections::HashSet<RunId>,
                        last: bool|
             -> (bool, Option<SyncReport>) {
                // Cleared before reading the store: a record written after this point nudges again.
                thread_nudge.store(false, Ordering::SeqCst);
                let result = push_runs(&store, &client, runs, fresh, last && defer_at_finish);
                let mut st = thread_state.lock().expect("push state lock");
                st.passes += 1;
                match result {
                    Ok(report) => {
                        let done = report.is_complete();
                        st.last_error = report
                            .aborted
                            .clone()
                            .or_else(|| report.failed.first().map(|(id, e)| format!("run {id}: {e}")));
                        st.last_report = Some(report.clone());
                        (done, Some(report))
                    }
                    Err(e) => {
                        st.last_error = Some(e.to_string());
                        (false, None)
                    }
                }
            };
            loop {
                let wait = due
                    .map(|d| d.saturating_duration_since(Instant::now()))
                    .unwrap_or(Duration::from_secs(3600));
                match rx.recv_timeout(wait) {
                    Ok(Msg::Track(id)) => {
                        runs.push(id);
                        due.get_or_insert_with(|| Instant::now() + interval);
                    }
                    Ok(Msg::TrackNew(id)) => {
                        fresh.insert(id.clone());
                        // The first run (the invocation's) goes at once, overlapping the work.
                        let wait = if runs.is_empty() { Duration::ZERO } else { interval };
                        runs.push(id);
                        due.get_or_insert_with(|| Instant::now() + wait);
                    }
                    Ok(Msg::Nudge) => {
                        due.get_or_insert_with(|| Instant::now() + interval);
                    }
                    Ok(Msg::Finish) => return pass(&runs, &mut fresh, true).1,
                    // Tracker dropped without finish(): leave the rest to `sync`.
                    Err(RecvTimeoutError::Disconnected) => return None,
                    Err(RecvTimeoutError::Timeout) => {}
                }
                if due.is_some_and(|d| Instant::now() >= d) {
                    let (done, _) = pass(&runs, &mut fresh, false);
                    if done {
                        due = None;
                        retry_wait = interval;
                    } else {
                        // Server down or failing: records are safe in the store; back off.
                        due = Some(Instant::now() + retry_wait);
                        retry_wait = (retry_wait * 2).min(max_retry);
                    }
                }
            }
        })
        .map_err(TrackError::io("<push thread>"))?;
    Ok(PushHandle { tx, nudge_pending, thread, state })
}

pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// The commit checked out in the git repository holding `spec`, if it is in one.
fn git_commit(spec: &Path) -> Option<String> {
    let dir = spec.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && commit.len() >= 40).then_some(commit)
}

#[cfg(test)]
mod tests {
    use super::super::RESUMED_TAG;
    use super::*;
    use serde_json::json;

    fn tracker(dir: &Path) -> Tracker {
        Tracker::open(TrackerConfig::new(dir.join(".distillery"), None)).unwrap()
    }

    fn node<'a>(name: &'a str, config: &'a serde_json::Value) -> NodeRun<'a> {
        NodeRun { node_name: name, kind: "distill", cache_key: "k1", config, device: "cpu", tags: &[] }
    }

    #[test]
    fn an_invocation_with_nodes_is_recorded_locally() {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("exp.yaml");
        std::fs::write(&spec, "experiment: e\n").unwrap();
        let t = tracker(dir.path());
        let inv = t.start_invocation("e", Some(&spec), &[]).unwrap();
        let config = json!({"losses": {"kd": {"temperature": 4}}, "epochs": 2});
        let kd = t.start_node_run(&inv, &node("kd", &config)).unwrap();
        t.log_metrics(&kd, &[Metric::new("loss", 1.0, 0, 1), Metric::new("loss", f64::NAN, 1, 2)]).unwrap();
        t.end_run(&kd, RunStatus::Finished).unwrap();
        let cached = t
            .log_cached(&inv, &node("kd_again", &config), &kd, &[Metric::new("accuracy", 0.5, 0, 3)])
            .unwrap();
        t.end_run(&inv, RunStatus::Failed).unwrap();
        assert!(t.finish().is_none());

        let runs = super::super::list_runs(&dir.path().join(".distillery")).unwrap();
        assert_eq!(runs.len(), 3);
        let by_id = |id: &RunId| runs.iter().find(|r| &r.meta.run_id == id).unwrap();
        assert_eq!(by_id(&inv).meta.status, RunStatus::Failed);
        assert_eq!(by_id(&inv).artifacts, vec!["spec/exp.yaml".to_string()]);
        let kd_run = by_id(&kd);
        assert_eq!(kd_run.meta.parent.as_ref(), Some(&inv));
        assert_eq!(kd_run.n_params, 2);
        assert_eq!(kd_run.n_metric_points, 2);
        assert!(kd_run.last_metrics["loss"].is_nan());
        assert!(kd_run.synced.is_empty());
        assert_eq!(by_id(&cached).meta.cached_from.as_ref(), Some(&kd));
        // A cached run carries the result's metrics.
        assert_eq!(by_id(&cached).last_metrics["accuracy"], 0.5);
        let table = super::super::format_runs(&runs);
        assert!(
            table.contains("  kd_again") && table.contains("cached") && table.contains("local only"),
            "{table}"
        );
    }

    #[test]
    fn ended_and_unknown_runs_refuse_records() {
        let dir = tempfile::tempdir().unwrap();
        let t = tracker(dir.path());
        let inv = t.start_invocation("e", None, &[]).unwrap();
        t.end_run(&inv, RunStatus::Finished).unwrap();
        let err = t.log_metrics(&inv, &[Metric::new("a", 1.0, 0, 0)]).unwrap_err().to_string();
        assert_eq!(err, format!("run {inv} is already finished; it cannot log more"));
        let err = t.end_run(&RunId::new("x"), RunStatus::Finished).unwrap_err().to_string();
        assert!(err.starts_with("unknown run x"), "{err}");
        assert!(t.end_run(&inv, RunStatus::Running).is_err());
    }

    #[test]
    fn bad_keys_and_long_params_fail_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let t = tracker(dir.path());
        let inv = t.start_invocation("e", None, &[]).unwrap();
        let config = json!({"note": "x".repeat(6001)});
        let err = t.start_node_run(&inv, &node("n", &config)).unwrap_err().to_string();
        assert!(err.starts_with(r#"param "note": value is 6001 characters"#), "{err}");
        assert_eq!(t.store().run_ids().unwrap().len(), 1);
        let err = t.log_metrics(&inv, &[Metric::new("acc@1", 1.0, 0, 0)]).unwrap_err().to_string();
        assert!(err.starts_with(r#"metric "acc@1": contains '@'"#), "{err}");
        assert!(t.store().read_metrics(&inv).unwrap().is_empty());
    }

    #[test]
    fn cache_key_lookup_finds_the_trained_run() {
        let dir = tempfile::tempdir().unwrap();
        let t = tracker(dir.path());
        let inv = t.start_invocation("e", None, &[]).unwrap();
        let config = json!({});
        let first = t.start_node_run(&inv, &node("kd", &config)).unwrap();
        assert_eq!(t.find_run_by_cache_key("k1").unwrap(), None);
        t.end_run(&first, RunStatus::Finished).unwrap();
        t.log_cached(&inv, &node("kd", &config), &first, &[]).unwrap();
        assert_eq!(t.find_run_by_cache_key("k1").unwrap(), Some(first));
    }

    #[test]
    fn another_tracker_can_attach_to_a_running_run() {
        let dir = tempfile::tempdir().unwrap();
        let main = tracker(dir.path());
        let inv = main.start_invocation("e", None, &[]).unwrap();
        let config = json!({});
        let run = main.start_node_run(&inv, &node("n", &config)).unwrap();
        main.log_metrics(&run, &[Metric::new("a", 1.0, 0, 1)]).unwrap();

        let worker = tracker(dir.path());
        worker.attach_run(&run).unwrap();
        worker.log_metrics(&run, &[Metric::new("a", 2.0, 1, 2)]).unwrap();
        worker.end_run(&run, RunStatus::Finished).unwrap();
        assert_eq!(main.store().read_metrics(&run).unwrap().len(), 2);
        assert_eq!(main.store().read_meta(&run).unwrap().status, RunStatus::Finished);
        let err = tracker(dir.path()).attach_run(&run).unwrap_err().to_string();
        assert!(err.contains("already finished"), "{err}");
    }

    #[test]
    fn a_resumed_node_goes_on_in_its_interrupted_run_and_logs_each_step_once() {
        let dir = tempfile::tempdir().unwrap();
        let config = json!({"epochs": 5});
        let (first, inv) = {
            let t = tracker(dir.path());
            let inv = t.start_invocation("e", None, &[]).unwrap();
            let run = t.start_node_run(&inv, &node("kd", &config)).unwrap();
            let points: Vec<Metric> = (1..=3).map(|s| Metric::new("loss", 1.0 / s as f64, s, s)).collect();
            t.log_metrics(&run, &points).unwrap();
            (run, inv) // the process dies: the tracker goes without ending the run
        };
        // Nothing to resume for another key; the next process reaps it (FAILED) on opening.
        let t = tracker(dir.path());
        assert_eq!(t.store().read_meta(&first).unwrap().status, RunStatus::Failed);
        assert_eq!(t.resume_node_run("k2", "epoch 3 of 5, batch 0 of 1").unwrap(), None);
        let resumed = t.resume_node_run("k1", "epoch 3 of 5, batch 0 of 1").unwrap();
        assert_eq!(resumed.as_ref(), Some(&first), "the same run goes on");
        assert_eq!(t.resume_node_run("k1", "again").unwrap(), None, "it is open here already");
        // Its checkpoint was of epoch 2: epoch 3 is trained (and logged) again.
        let again: Vec<Metric> = (3..=5).map(|s| Metric::new("loss", 1.0 / s as f64, s, 10 + s)).collect();
        t.log_metrics(&first, &again[..1]).unwrap();
        t.log_metrics(&first, &[again[1].clone(), Metric::new("acc", 0.5, 3, 14)]).unwrap();
        t.log_metrics(&first, &again[2..]).unwrap();
        t.end_run(&first, RunStatus::Finished).unwrap();
        let steps: Vec<(String, i64)> =
            t.store().read_metrics(&first).unwrap().into_iter().map(|m| (m.key, m.step)).collect();
        let want = [("loss", 1), ("loss", 2), ("loss", 3), ("loss", 4), ("acc", 3), ("loss", 5)];
        assert_eq!(steps, want.map(|(k, s)| (k.to_string(), s)));
        let meta = t.store().read_meta(&first).unwrap();
        assert_eq!((meta.status, meta.resumed, meta.end_reason), (RunStatus::Finished, 1, None));
        assert_eq!(meta.parent, Some(inv), "still under the invocation that started it");
        assert_eq!(t.store().read_tags(&first).unwrap()[RESUMED_TAG], "epoch 3 of 5, batch 0 of 1");
        assert_eq!(t.find_run_by_cache_key("k1").unwrap(), Some(first.clone()));
        // Finished: a later node of the key starts afresh.
        assert_eq!(t.resume_node_run("k1", "epoch 2 of 5, batch 0 of 1").unwrap(), None);
        assert_eq!(t.store().run_ids().unwrap().len(), 2);
    }

    #[test]
    fn tracker_is_shared_across_node_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Tracker>();
    }

    #[test]
    fn tracking_uri_flag_wins_over_the_environment() {
        assert_eq!(resolve_tracking_uri(Some("http://a")), Some("http://a".to_string()));
        assert_eq!(resolve_tracking_uri(Some("  ")), None);
    }
}
