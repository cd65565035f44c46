//! Pushing local runs to an MLflow server: the live background push and `distillery sync` are
//! this same code.
//!
//! Exactly-once: a per-server ledger records, for every local run, its MLflow run id and how far
//! each part was acknowledged (params, tags, the byte offset of the last metric line sent,
//! uploaded artifacts, the final status). It is rewritten atomically after every acknowledged
//! request, so a push resumes where the last one stopped. Two holes remain and are closed by the
//! server side: a request acknowledged by the server whose reply was lost is sent again, which
//! MLflow absorbs (it drops metric rows identical in key, value, step and timestamp; params with the
//! same value and tags are idempotent); and a run created whose reply was lost is found again
//! by its `distillery.local_run_id` tag instead of being created twice.

use super::mlflow::{MlflowClient, MlflowError, RunInfo};
use super::store::{LocalStore, RunKind, RunMeta, read_json, write_json_atomic};
use super::{ClientConfig, RunId, RunStatus, TrackError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// Tag on every MLflow run that names the local run it came from; the key to find it again.
pub const LOCAL_RUN_ID_TAG: &str = "distillery.local_run_id";
/// Tag on a cached node's run: the MLflow run id of the run that produced the result.
pub const CACHED_FROM_MLFLOW_TAG: &str = "distillery.cached_from_mlflow_run";

/// Tag saying why a run ended when its own process could not (meta's `end_reason`).
const END_REASON_TAG: &str = "distillery.end_reason";

const LEDGER_FORMAT: u32 = 1;

/// What one push did. `failed` runs had an error the server will repeat (a bad value, a corrupt
/// local file); `aborted` says why the push stopped early (server unreachable or failing): what
/// was left is pushed by the next attempt.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SyncReport {
    pub uri: String,
    pub runs_seen: usize,
    pub runs_created: usize,
    /// Runs missing from the ledger but found on the server by their local-run-id tag.
    pub runs_matched: usize,
    /// Runs with nothing left to push at the end.
    pub runs_complete: usize,
    pub metrics_sent: usize,
    pub params_sent: usize,
    pub tags_sent: usize,
    pub artifacts_sent: usize,
    pub statuses_sent: usize,
    pub failed: Vec<(RunId, String)>,
    pub aborted: Option<String>,
    /// Records of cached nodes this push left for a later one (see [`push_runs`]'s `defer_cached`).
    pub deferred: Vec<RunId>,
}

impl SyncReport {
    /// True when every run seen is fully on the server.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty() && self.aborted.is_none() && self.runs_complete == self.runs_seen
    }

    /// True when every run seen is fully on the server or was deferred on purpose.
    pub fn is_complete_but_deferred(&self) -> bool {
        self.failed.is_empty()
            && self.aborted.is_none()
            && self.runs_complete + self.deferred.len() == self.runs_seen
    }
}

/// One paragraph for people: what was sent, and what is left and why.
impl std::fmt::Display for SyncReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: {} of {} runs complete; sent {} new runs ({} found again by tag), {} params, \
             {} tags, {} metric points, {} artifacts, {} final statuses",
            self.uri,
            self.runs_complete,
            self.runs_seen,
            self.runs_created,
            self.runs_matched,
            self.params_sent,
            self.tags_sent,
            self.metrics_sent,
            self.artifacts_sent,
            self.statuses_sent
        )?;
        for (run_id, error) in &self.failed {
            writeln!(f, "run {run_id} failed: {error}")?;
        }
        if let Some(reason) = &self.aborted {
            writeln!(f, "stopped early, the rest stays in the local store for the next sync: {reason}")?;
        }
        Ok(())
    }
}

/// Pushes every run of the store at `store` that is not yet (fully) on the server at `uri`.
/// Running it again pushes only what is new; it never duplicates a run or a metric point.
pub fn sync(store: &Path, uri: &str) -> Result<SyncReport, TrackError> {
    let client = MlflowClient::new(uri, ClientConfig::default())?;
    sync_with_client(store, &client)
}

/// [`sync`] with a client configured by the caller (timeouts, retries).
pub fn sync_with_client(store: &Path, client: &MlflowClient) -> Result<SyncReport, TrackError> {
    // The store must exist (TrackError::NoStore): a typo in --store never creates an empty one.
    let store = LocalStore::open_existing(store)?;
    // A run whose process died is ended (FAILED, with the reason) before it is pushed.
    store.reap_abandoned()?;
    let run_ids = store.run_ids()?;
    push_runs(&store, client, &run_ids, &mut HashSet::new(), false)
}

/// Pushes one run of the store at `store` and, for an invocation, its node runs, to `uri`: what
/// `run` starts in the background for the records it deferred. Each run is pushed in its own turn
/// of the ledger lock, so a `run` starting meanwhile waits one run's push at most, not all of it.
pub fn sync_run(store: &Path, uri: &str, run: &RunId) -> Result<SyncReport, TrackError> {
    let client = MlflowClient::new(uri, ClientConfig::default())?;
    let store = LocalStore::open_existing(store)?;
    let meta = store.read_meta(run)?;
    let mut ids = vec![run.clone()];
    if meta.kind == RunKind::Invocation {
        // Run ids sort by start time: its node runs come after it.
        for id in store.run_ids()?.into_iter().filter(|id| id > run) {
            if store.read_meta(&id).is_ok_and(|m| m.parent.as_ref() == Some(run)) {
                ids.push(id);
            }
        }
    }
    let mut report = SyncReport { uri: client.base_uri().to_string(), ..SyncReport::default() };
    for id in &ids {
        let one = push_runs(&store, &client, std::slice::from_ref(id), &mut HashSet::new(), false)?;
        report.add(one);
        if report.aborted.is_some() {
            break;
        }
    }
    Ok(report)
}

impl SyncReport {
    fn add(&mut self, o: SyncReport) {
        self.runs_seen += o.runs_seen;
        self.runs_created += o.runs_created;
        self.runs_matched += o.runs_matched;
        self.runs_complete += o.runs_complete;
        self.metrics_sent += o.metrics_sent;
        self.params_sent += o.params_sent;
        self.tags_sent += o.tags_sent;
        self.artifacts_sent += o.artifacts_sent;
        self.statuses_sent += o.statuses_sent;
        self.failed.extend(o.failed);
        self.aborted = self.aborted.take().or(o.aborted);
        self.deferred.extend(o.deferred);
    }
}

/// Pushes the given runs (and the runs they point to) under the ledger lock.
/// `fresh`: runs this process created and has not tried to create on the server yet, so no
/// server can have them: created without looking them up first (a run is taken out of it on its
/// first try; a later one looks it up, since that try's reply may have been lost).
/// `defer_cached`: leave the runs that record a cached node (they point to an original, and are
/// three requests each with nothing computed) that are not on the server yet to a later push,
/// listed in the report's `deferred` (what `run` hands to a background `sync`).
pub(crate) fn push_runs(
    store: &LocalStore,
    client: &MlflowClient,
    run_ids: &[RunId],
    fresh: &mut HashSet<RunId>,
    defer_cached: bool,
) -> Result<SyncReport, TrackError> {
    let mut pusher = Pusher::open(store, client, fresh)?;
    for run_id in run_ids {
        pusher.report.runs_seen += 1;
        if defer_cached && !pusher.ledger.runs.contains_key(run_id) {
            match store.read_meta(run_id) {
                Ok(meta) if meta.cached_from.is_some() => {
                    pusher.report.deferred.push(run_id.clone());
                    continue;
                }
                _ => {}
            }
        }
        match pusher.push_run(run_id) {
            Ok(true) => pusher.report.runs_complete += 1,
            Ok(false) => {}
            Err(TrackError::Mlflow(e)) if e.is_transient() => {
                pusher.report.aborted = Some(e.to_string());
                break;
            }
            Err(e) => pusher.report.failed.push((run_id.clone(), e.to_string())),
        }
    }
    Ok(pusher.report)
}

/// The ledger of one server: what of each local run it has acknowledged.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Ledger {
    pub format: u32,
    pub uri: String,
    pub runs: BTreeMap<RunId, RunSync>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct RunSync {
    pub mlflow_run_id: String,
    pub experiment_id: String,
    pub artifact_uri: String,
    pub params_done: bool,
    pub tags_done: bool,
    /// Metric lines acknowledged, and the byte offset just after the last of them.
    pub metric_lines: u64,
    pub metric_bytes: u64,
    /// Uploaded artifacts and their sizes.
    pub artifacts: BTreeMap<String, u64>,
    /// The terminal status the server has (`None` while it has the run RUNNING).
    pub status: Option<RunStatus>,
    /// The reopenings of the run (meta's `resumed`) the server has seen: each set its run back
    /// to RUNNING and its tags to be sent again (with `distillery.resumed`).
    #[serde(default)]
    pub resumed: u32,
}

impl RunSync {
    pub fn is_complete(
        &self,
        meta: &RunMeta,
        metrics_len: u64,
        artifacts: &[(String, PathBuf, u64)],
    ) -> bool {
        self.params_done
            && self.tags_done
            && self.metric_bytes == metrics_len
            && artifacts.iter().all(|(p, _, size)| self.artifacts.get(p) == Some(size))
            && self.resumed == meta.resumed
            // A run reopened after its end was pushed is not complete until the server has it
            // RUNNING again (and then its new end).
            && self.status == meta.status.is_terminal().then_some(meta.status)
    }
}

fn ledger_paths(store: &LocalStore, uri: &str) -> (PathBuf, PathBuf) {
    let digest = Sha256::digest(uri.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let dir = store.root().join("sync");
    (dir.join(format!("{hex}.json")), dir.join(format!("{hex}.lock")))
}

/// The MLflow UI's page of local run `run` on server `uri` (the normalised base URI a
/// [`SyncReport`] names), once the run has been pushed there.
pub fn run_url(store: &LocalStore, uri: &str, run: &RunId) -> Option<String> {
    let (path, _) = ledger_paths(store, uri);
    let ledger: Ledger = read_json(&path).ok()?;
    let r = ledger.runs.get(run)?;
    Some(format!("{uri}/#/experiments/{}/runs/{}", r.experiment_id, r.mlflow_run_id))
}

/// For each cache key, the MLflow pages of the latest node run that computed it (not one that
/// found it cached), on every server it was pushed to. Reads the store only.
pub fn node_run_urls(store: &LocalStore) -> Result<HashMap<String, Vec<String>>, TrackError> {
    let ledgers = read_all_ledgers(store)?;
    let mut latest: HashMap<String, RunId> = HashMap::new();
    // Run ids sort by start time: the last one seen is the latest.
    for run_id in store.run_ids()? {
        let meta = store.read_meta(&run_id)?;
        if let (RunKind::Node, Some(key), None) = (meta.kind, &meta.cache_key, &meta.cached_from) {
            latest.insert(key.clone(), run_id);
        }
    }
    let mut out = HashMap::new();
    for (key, run) in latest {
        let urls: Vec<String> = ledgers
            .iter()
            .filter_map(|l| {
                let r = l.runs.get(&run)?;
                Some(format!("{}/#/experiments/{}/runs/{}", l.uri, r.experiment_id, r.mlflow_run_id))
            })
            .collect();
        if !urls.is_empty() {
            out.insert(key, urls);
        }
    }
    Ok(out)
}

pub(crate) fn read_all_ledgers(store: &LocalStore) -> Result<Vec<Ledger>, TrackError> {
    let dir = store.root().join("sync");
    let mut out = Vec::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    for entry in fs::read_dir(&dir).map_err(TrackError::io(&dir))? {
        let path = entry.map_err(TrackError::io(&dir))?.path();
        if path.extension().is_some_and(|e| e == "json") {
            out.push(read_json(&path)?);
        }
    }
    out.sort_by(|a: &Ledger, b| a.uri.cmp(&b.uri));
    Ok(out)
}

struct Pusher<'a> {
    store: &'a LocalStore,
    client: &'a MlflowClient,
    ledger: Ledger,
    ledger_path: PathBuf,
    experiments: HashMap<String, String>,
    fresh: &'a mut HashSet<RunId>,
    report: SyncReport,
    /// Held while pushing: a live push and a `sync` of the same store take turns.
    _lock: File,
}

impl<'a> Pusher<'a> {
    fn open(
        store: &'a LocalStore,
        client: &'a MlflowClient,
        fresh: &'a mut HashSet<RunId>,
    ) -> Result<Pusher<'a>, TrackError> {
        let uri = client.base_uri().to_string();
        let (ledger_path, lock_path) = ledger_paths(store, &uri);
        let dir = ledger_path.parent().expect("ledger has a directory");
        fs::create_dir_all(dir).map_err(TrackError::io(dir))?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(TrackError::io(&lock_path))?;
        lock.lock().map_err(TrackError::io(&lock_path))?;
        let ledger = if ledger_path.exists() {
            read_json(&ledger_path)?
        } else {
            Ledger { format: LEDGER_FORMAT, uri: uri.clone(), runs: BTreeMap::new() }
        };
        Ok(Pusher {
            store,
            client,
            ledger,
            ledger_path,
            experiments: HashMap::new(),
            fresh,
            report: SyncReport { uri, ..SyncReport::default() },
            _lock: lock,
        })
    }

    fn save(&self) -> Result<(), TrackError> {
        write_json_atomic(&self.ledger_path, &self.ledger)
    }

    fn entry(&mut self, run_id: &RunId) -> &mut RunSync {
        self.ledger.runs.get_mut(run_id).expect("ensure_run made the entry")
    }

    fn experiment_id(&mut self, name: &str) -> Result<String, MlflowError> {
        if let Some(id) = self.experiments.get(name) {
            return Ok(id.clone());
        }
        let id = self.client.ensure_experiment(name)?;
        self.experiments.insert(name.to_string(), id.clone());
        Ok(id)
    }

    /// Makes sure the run exists on the server (found by tag, or created) and is in the ledger.
    fn ensure_run(&mut self, run_id: &RunId, meta: &RunMeta) -> Result<(), TrackError> {
        if self.ledger.runs.contains_key(run_id) {
            return Ok(());
        }
        let mut tags = vec![(LOCAL_RUN_ID_TAG.to_string(), run_id.to_string())];
        if let Some(parent) = &meta.parent {
            // The whole parent, not just its id: it may be an earlier invocation that only reaches
            // this server through a cached node pointing into it.
            self.push_run(parent)?;
            tags.push(("mlflow.parentRunId".to_string(), self.ledger.runs[parent].mlflow_run_id.clone()));
        }
        let experiment_id = self.experiment_id(&meta.experiment)?;
        let found = if self.fresh.remove(run_id) {
            Vec::new()
        } else {
            let filter = format!("tags.`{LOCAL_RUN_ID_TAG}` = '{}'", run_id.as_str().replace('\'', "\\'"));
            self.client.search_runs(&[&experiment_id], &filter)?
        };
        let info: RunInfo = match found.into_iter().next() {
            Some(run) => {
                self.report.runs_matched += 1;
                run.info
            }
            None => {
                let info = self.client.create_run(&experiment_id, &meta.name, meta.start_ms, &tags)?;
                self.report.runs_created += 1;
                info
            }
        };
        self.ledger.runs.insert(
            run_id.clone(),
            RunSync {
                mlflow_run_id: info.run_id,
                experiment_id,
                artifact_uri: info.artifact_uri,
                ..RunSync::default()
            },
        );
        self.save()
    }

    /// Pushes what the server lacks of one run. Returns whether the run is now complete.
    fn push_run(&mut self, run_id: &RunId) -> Result<bool, TrackError> {
        // Meta first: a terminal status read here was written after the run's last metric line,
        // so pushing the status only after the metrics read below never closes a run early.
        let meta = self.store.read_meta(run_id)?;
        let metrics_len = self.store.metrics_len(run_id)?;
        let artifacts = self.store.list_artifacts(run_id)?;
        if let Some(entry) = self.ledger.runs.get(run_id)
            && entry.is_complete(&meta, metrics_len, &artifacts)
        {
            return Ok(true);
        }
        self.ensure_run(run_id, &meta)?;
        let mlflow_id = self.ledger.runs[run_id].mlflow_run_id.clone();

        if self.ledger.runs[run_id].resumed < meta.resumed {
            // Reopened to continue from a checkpoint: the same MLflow run goes on. If the server
            // has its end, it is RUNNING again (MLflow keeps the old end time until the new end
            // is sent: `runs/update` cannot clear it), without the old end's reason.
            if self.ledger.runs[run_id].status.is_some() {
                if meta.end_reason.is_none() {
                    self.client.delete_tag(&mlflow_id, END_REASON_TAG)?;
                }
                if meta.status == RunStatus::Running {
                    self.client.update_run(&mlflow_id, RunStatus::Running.as_mlflow(), None)?;
                }
            }
            let entry = self.entry(run_id);
            entry.status = None;
            entry.tags_done = false; // distillery.resumed is new
            entry.resumed = meta.resumed;
            self.save()?;
        }

        // Params, tags and the first metrics together: a short run (a cached node's) is one
        // request. Sending any of them again is harmless (the same params, tags overwritten,
        // identical metric points dropped by the server), so a failed request is simply redone.
        let params = match self.ledger.runs[run_id].params_done {
            false => self.store.read_params(run_id)?,
            true => Vec::new(),
        };
        let tags = match self.ledger.runs[run_id].tags_done {
            false => {
                let mut tags: Vec<(String, String)> = self.store.read_tags(run_id)?.into_iter().collect();
                if let Some(original) = &meta.cached_from {
                    // Point at the original's MLflow run. It may belong to an earlier invocation
                    // that was never pushed: push all of it first, so the pointer leads to a full run.
                    if self.store.read_meta(original).is_ok() {
                        self.push_run(original)?;
                        tags.push((
                            CACHED_FROM_MLFLOW_TAG.to_string(),
                            self.ledger.runs[original].mlflow_run_id.clone(),
                        ));
                    }
                }
                Some(tags)
            }
            true => None,
        };
        let offset = self.ledger.runs[run_id].metric_bytes;
        let chunk = match offset < metrics_len {
            true => Some(self.store.read_metrics_from(run_id, offset)?),
            false => None,
        };
        let batch = super::mlflow::MAX_METRICS_PER_BATCH;
        let mut sent = 0;
        if !self.ledger.runs[run_id].params_done || tags.is_some() {
            let first = chunk.as_ref().map_or(&[][..], |c| &c.metrics[..c.metrics.len().min(batch)]);
            let tags = tags.unwrap_or_default();
            self.client.log_batch(&mlflow_id, first, &params, &tags)?;
            self.report.params_sent += params.len();
            self.report.tags_sent += tags.len();
            let entry = self.entry(run_id);
            entry.params_done = true;
            entry.tags_done = true;
            if let (Some(c), n) = (&chunk, first.len())
                && n > 0
            {
                let entry = self.entry(run_id);
                entry.metric_bytes = c.ends[n - 1];
                entry.metric_lines += n as u64;
                self.report.metrics_sent += n;
            }
            sent = first.len();
            self.save()?;
        }
        if let Some(chunk) = chunk {
            for (i, metrics) in chunk.metrics[sent..].chunks(batch).enumerate() {
                self.client.log_batch(&mlflow_id, metrics, &[], &[])?;
                let end = chunk.ends[sent + i * batch + metrics.len() - 1];
                let entry = self.entry(run_id);
                entry.metric_bytes = end;
                entry.metric_lines += metrics.len() as u64;
                self.report.metrics_sent += metrics.len();
                self.save()?;
            }
        }

        let pending: Vec<_> = artifacts
            .iter()
            .filter(|(path, _, size)| self.ledger.runs[run_id].artifacts.get(path) != Some(size))
            .cloned()
            .collect();
        if !pending.is_empty() {
            let info = self.run_info(run_id);
            for (path, file, size) in pending {
                self.client.upload_artifact(&info, &file, &path)?;
                self.entry(run_id).artifacts.insert(path, size);
                self.report.artifacts_sent += 1;
                self.save()?;
            }
        }

        if meta.status.is_terminal() && self.ledger.runs[run_id].status != Some(meta.status) {
            if let Some(reason) = &meta.end_reason {
                let tag = [(END_REASON_TAG.to_string(), reason.clone())];
                self.client.log_batch(&mlflow_id, &[], &[], &tag)?;
            }
            self.client.update_run(&mlflow_id, meta.status.as_mlflow(), meta.end_ms)?;
            self.entry(run_id).status = Some(meta.status);
            self.report.statuses_sent += 1;
            self.save()?;
        }
        // Complete as of the meta read above; lines appended since are for the next push.
        Ok(self.ledger.runs[run_id].is_complete(&meta, self.store.metrics_len(run_id)?, &artifacts))
    }

    fn run_info(&self, run_id: &RunId) -> RunInfo {
        let entry = &self.ledger.runs[run_id];
        RunInfo {
            run_id: entry.mlflow_run_id.clone(),
            experiment_id: entry.experiment_id.clone(),
            run_name: None,
            status: String::new(),
            start_time: None,
            end_time: None,
            artifact_uri: entry.artifact_uri.clone(),
            lifecycle_stage: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_says_what_is_left_and_why() {
        let report = SyncReport {
            uri: "http://h:5000".into(),
            runs_seen: 3,
            runs_created: 2,
            runs_complete: 1,
            metrics_sent: 40,
            failed: vec![(RunId::new("r1"), "metric \"a!\": bad".into())],
            aborted: Some("POST runs/log-batch: cannot reach the server".into()),
            ..SyncReport::default()
        };
        assert!(!report.is_complete());
        assert_eq!(
            report.to_string(),
            "http://h:5000: 1 of 3 runs complete; sent 2 new runs (0 found again by tag), 0 params, \
             0 tags, 40 metric points, 0 artifacts, 0 final statuses\n\
             run r1 failed: metric \"a!\": bad\n\
             stopped early, the rest stays in the local store for the next sync: \
             POST runs/log-batch: cannot reach the server\n"
        );
    }

    #[test]
    fn a_run_reopened_after_its_end_was_pushed_is_not_complete() {
        let mut meta =
            super::super::store::new_meta(RunId::new("r"), super::super::RunKind::Node, None, "e", "n", 1);
        let mut entry = RunSync { params_done: true, tags_done: true, ..RunSync::default() };
        assert!(entry.is_complete(&meta, 0, &[]), "running, nothing left");
        (meta.status, meta.end_ms) = (RunStatus::Failed, Some(5));
        assert!(!entry.is_complete(&meta, 0, &[]), "its end is not pushed");
        entry.status = Some(RunStatus::Failed);
        assert!(entry.is_complete(&meta, 0, &[]));
        // Reopened: RUNNING again, which the server does not know yet.
        (meta.status, meta.end_ms, meta.resumed) = (RunStatus::Running, None, 1);
        assert!(!entry.is_complete(&meta, 0, &[]));
        entry.resumed = 1; // as if the ledger had missed only the status
        assert!(!entry.is_complete(&meta, 0, &[]), "the server still has it FAILED");
        entry.status = None;
        assert!(entry.is_complete(&meta, 0, &[]));
        // Reopened and ended again before any push: the new end is still to send.
        (meta.status, meta.end_ms, meta.resumed) = (RunStatus::Failed, Some(9), 2);
        entry.status = Some(RunStatus::Failed);
        assert!(!entry.is_complete(&meta, 0, &[]));
        // A ledger written before reopenings existed reads as none seen.
        let old: RunSync = serde_json::from_str(
            r#"{"mlflow_run_id":"m","experiment_id":"1","artifact_uri":"a","params_done":true,
                "tags_done":true,"metric_lines":0,"metric_bytes":0,"artifacts":{},"status":"FAILED"}"#,
        )
        .unwrap();
        assert_eq!((old.resumed, old.status), (0, Some(RunStatus::Failed)));
    }

    #[test]
    fn ledger_names_depend_only_on_the_normalised_uri() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("s")).unwrap();
        let (a, lock) = ledger_paths(&store, "http://h:5000");
        assert_eq!(a.extension().unwrap(), "json");
        assert_eq!(lock.extension().unwrap(), "lock");
        assert_ne!(a, ledger_paths(&store, "http://h:5001").0);
    }
}
