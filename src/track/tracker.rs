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
}

impl TrackerConfig {
    pub fn new(store_dir: impl Into<PathBuf>, tracking_uri: Option<String>) -> TrackerConfig {
        TrackerConfig {
            store_dir: store_dir.into(),
            tracking_uri,
            client: ClientConfig::default(),
            push_interval: Duration::from_secs(1),
            max_retry_interval: Duration::from_secs(30),
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
    host: String,
    push: Option<PushHandle>,
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
        Ok(Tracker { store, open: Mutex::new(HashMap::new()), host: host_name(), push })
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
    pub fn log_cached(
        &self,
        parent: &RunId,
        node: &NodeRun<'_>,
        original: &RunId,
    ) -> Result<RunId, TrackError> {
        self.store.read_meta(original)?;
        let NodeRecord { mut meta, params, mut tags } = self.node_record(parent, node)?;
        meta.cached_from = Some(original.clone());
        meta.status = RunStatus::Finished;
        meta.end_ms = Some(meta.start_ms);
        tags.insert("distillery.cached".to_string(), "true".to_string());
        tags.insert("distillery.cached_from".to_string(), original.to_string());
        let run_id = meta.run_id.clone();
        self.store.create_run(&meta, &params, &tags)?;
        self.send(Msg::Track(run_id.clone()));
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
        self.open
            .lock()
            .expect("tracker lock")
            .insert(run_id.clone(), OpenRun { meta, metrics, metrics_path, _owner: None });
        self.send(Msg::Track(run_id.clone()));
        Ok(())
    }

    /// The latest finished, trained (not cached) node run with this cache key: the run a cached
    /// node points to.
    pub fn find_run_by_cache_key(&self, cache_key: &str) -> Result<Option<RunId>, TrackError> {
        let mut found = None;
        for run_id in self.store.run_ids()? {
            let meta = self.store.read_meta(&run_id)?;
            if meta.cache_key.as_deref() == Some(cache_key)
                && meta.cached_from.is_none()
                && meta.status == RunStatus::Finished
            {
                found = Some(run_id);
            }
        }
        Ok(found)
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
            append_metrics(&mut run.metrics, &run.metrics_path, metrics)?;
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
        self.open
            .lock()
            .expect("tracker lock")
            .insert(run_id.clone(), OpenRun { meta, metrics, metrics_path, _owner: Some(owner) });
        self.send(Msg::Track(run_id));
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
    let thread = std::thread::Builder::new()
        .name("distillery-mlflow-push".into())
        .spawn(move || {
            let mut runs: Vec<RunId> = Vec::new();
            let mut due: Option<Instant> = None;
            let mut retry_wait = interval;
            let pass = |runs: &[RunId]| -> (bool, Option<SyncReport>) {
                // Cleared before reading the store: a record written after this point nudges again.
                thread_nudge.store(false, Ordering::SeqCst);
                let result = push_runs(&store, &client, runs);
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
                    Ok(Msg::Nudge) => {
                        due.get_or_insert_with(|| Instant::now() + interval);
                    }
                    Ok(Msg::Finish) => return pass(&runs).1,
                    // Tracker dropped without finish(): leave the rest to `sync`.
                    Err(RecvTimeoutError::Disconnected) => return None,
                    Err(RecvTimeoutError::Timeout) => {}
                }
                if due.is_some_and(|d| Instant::now() >= d) {
                    let (done, _) = pass(&runs);
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
        let cached = t.log_cached(&inv, &node("kd_again", &config), &kd).unwrap();
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
        t.log_cached(&inv, &node("kd", &config), &first).unwrap();
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
