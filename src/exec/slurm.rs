//! The Slurm launcher (docs/cluster.md): each node to run is one `sbatch` job that runs
//! `distillery worker` on the node's resolved job file, against the shared store.
//!
//! [`Slurm::submit_all`] submits every job of a plan at once, each with `--dependency=afterok:`
//! on the jobs of its node inputs, so the cluster queues the whole graph; [`exec::run`] then calls
//! [`Launcher::launch`] for a job once its inputs are committed, as for the local launcher, and
//! `launch` waits for that job. Ground truth is the store (an entry is committed, or it is not)
//! and the exit record the worker writes, never the scheduler's state alone; the scheduler's
//! state says only whether a job is still coming and, when it ended without a result, why.
//!
//! Per key, `slurm/jobs/<key>/` in the store holds `job.json` (what the worker runs), `run.sh`,
//! `record.json` (every submission: job id, why, resources), `events.jsonl` (the worker's events,
//! forwarded to this process's sinks: the terminal and MLflow), `exit.json` and the job's
//! `slurm-<id>.out`/`.err`. The binary jobs run is `slurm/bin/<sha256>/distillery`, copied at
//! submit time, so a rebuild while jobs wait cannot mix versions.
//!
//! [`exec::run`]: super::run

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use petgraph::graph::NodeIndex;
use serde::{Deserialize, Serialize};

use super::{Cancel, Event, EventSink, Launcher, NodeError};
use crate::graph::{CacheKey, Graph, Vertex};
use crate::job::Job;
use crate::plan::{PlanEntry, Status};
use crate::spec::Resources;
use crate::store::{Entry, Lookup, Store, write_atomic};

/// Submissions of one key, most recent last (`record.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub node: String,
    pub experiment: String,
    pub key: String,
    pub attempts: Vec<Attempt>,
    /// Its last job's events reached a watching process's sinks (terminal, MLflow).
    #[serde(default)]
    pub delivered: bool,
}

/// One `sbatch` of a key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Attempt {
    pub job_id: u64,
    pub submitted_unix: u64,
    /// `first`, `retry after OUT_OF_MEMORY`, `continue after PREEMPTED` ...
    pub why: String,
    /// The sbatch flags of its resources (after any scaling).
    pub flags: Vec<String>,
    pub memory_mib: Option<u64>,
    pub time_s: Option<u64>,
    /// Nodes excluded after NODE_FAIL.
    pub exclude: Vec<String>,
    /// The jobs it waited on (`--dependency=afterok:`).
    #[serde(default)]
    pub dependency: Vec<u64>,
    /// Retries this attempt counts toward `resources.retries` (continuations do not count).
    pub retries_used: u32,
    /// Where its events start in `events.jsonl` (earlier runs' events come before).
    #[serde(default)]
    pub events_from: u64,
}

/// What a worker writes when it stops (`--exit FILE`): how, and for which Slurm job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExitRecord {
    /// `$SLURM_JOB_ID` of the process that wrote it.
    pub job_id: Option<u64>,
    /// `done`, `cached`, `failed` or `interrupted` (SIGTERM: time limit, pre-emption, scancel).
    pub outcome: String,
    pub seconds: Option<f64>,
    pub error: Option<String>,
}

impl ExitRecord {
    /// Written atomically, so a reader sees the whole record or none.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        write_atomic(path, serde_json::to_string(self).expect("json").as_bytes())
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

/// A worker's events, one JSON line each (`--events FILE`); progress lines at most one a second.
pub struct EventFile {
    file: Mutex<(std::fs::File, Option<Instant>)>,
}

impl EventFile {
    pub fn append(path: &Path) -> std::io::Result<EventFile> {
        let f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(EventFile { file: Mutex::new((f, None)) })
    }
}

impl EventSink for EventFile {
    fn event(&self, e: Event) {
        let mut g = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Event::Progress { step, steps, .. } = &e {
            let due = g.1.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if !due && step != steps {
                return;
            }
            g.1 = Some(Instant::now());
        }
        let mut line = serde_json::to_string(&e).expect("events serialise");
        line.push('\n');
        // One write per line (O_APPEND): a reader sees whole lines, or a part it waits on.
        let _ = g.0.write_all(line.as_bytes());
    }
}

/// A job's state as the scheduler tells it.
#[derive(Clone, Debug, PartialEq)]
pub enum JobState {
    /// Pending, running, requeued, completing ...: a result may still come.
    Live { state: String, reason: String },
    /// Ended (COMPLETED, FAILED, OUT_OF_MEMORY, TIMEOUT, NODE_FAIL, CANCELLED, PREEMPTED ...).
    Ended { state: String, nodes: String },
    /// The scheduler no longer lists it (accounting off and past MinJobAge).
    Gone,
}

const LIVE_STATES: [&str; 12] = [
    "PENDING",
    "RUNNING",
    "SUSPENDED",
    "COMPLETING",
    "CONFIGURING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "RESV_DEL_HOLD",
];

fn state_of(state: &str, reason: &str, nodes: &str) -> JobState {
    // sacct writes `CANCELLED by 0`.
    let state = state.split_whitespace().next().unwrap_or("").to_string();
    if LIVE_STATES.contains(&state.as_str()) {
        JobState::Live { state, reason: reason.to_string() }
    } else {
        JobState::Ended { state, nodes: nodes.to_string() }
    }
}

/// Parses `ID|STATE|REASON|NODES` lines (squeue's `-o %i|%T|%r|%N`, sacct's `-P` output with
/// `JobIDRaw,State,Reason,NodeList`); array steps and job steps (`12.batch`) are skipped.
pub fn parse_states(text: &str) -> HashMap<u64, JobState> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut f = line.split('|');
        let (Some(id), Some(state)) = (f.next(), f.next()) else { continue };
        let reason = f.next().unwrap_or("");
        let nodes = f.next().unwrap_or("");
        if let Ok(id) = id.trim().parse::<u64>() {
            out.insert(id, state_of(state.trim(), reason.trim(), nodes.trim()));
        }
    }
    out
}

/// One poll of the scheduler for every job being watched, shared by the threads that wait, with
/// back-off while nothing changes and after a failed poll (which is never fatal).
struct Poller {
    inner: Mutex<PollInner>,
    min: Duration,
}

struct PollInner {
    ids: BTreeSet<u64>,
    states: HashMap<u64, JobState>,
    last: Option<Instant>,
    interval: Duration,
    /// sacct answered that accounting is off: squeue from now on.
    no_sacct: bool,
    failed_polls: u32,
}

impl Poller {
    fn new(min: Duration) -> Poller {
        Poller {
            inner: Mutex::new(PollInner {
                ids: BTreeSet::new(),
                states: HashMap::new(),
                last: None,
                interval: min,
                no_sacct: false,
                failed_polls: 0,
            }),
            min,
        }
    }

    fn watch(&self, id: u64) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.ids.insert(id);
        g.states.remove(&id);
        // A new job: look soon.
        g.interval = self.min;
    }

    /// Stops polling `id` (its launch has returned).
    fn forget(&self, id: u64) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.ids.remove(&id);
    }

    /// The last known state of `id`, polling first if the last poll is older than the interval.
    /// `None` until a poll has answered for it.
    fn state(&self, id: u64, events: &dyn EventSink, node: &str) -> Option<JobState> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.ids.insert(id);
        let due = g.last.is_none_or(|t| t.elapsed() >= g.interval) || !g.states.contains_key(&id);
        if due && g.last.is_none_or(|t| t.elapsed() >= self.min) {
            let ids: Vec<u64> = g.ids.iter().copied().collect();
            let no_sacct = g.no_sacct;
            match poll(&ids, no_sacct) {
                Ok((states, sacct_off)) => {
                    g.no_sacct |= sacct_off;
                    let changed = ids.iter().any(|i| g.states.get(i) != states.get(i));
                    for &i in &ids {
                        let s = states.get(&i).cloned().unwrap_or(JobState::Gone);
                        g.states.insert(i, s);
                    }
                    g.failed_polls = 0;
                    g.interval = if changed {
                        self.min
                    } else {
                        (g.interval.mul_f64(1.5)).min(Duration::from_secs(20))
                    };
                }
                Err(e) => {
                    g.failed_polls += 1;
                    g.interval = (g.interval * 2).min(Duration::from_secs(60));
                    if g.failed_polls == 1 || g.failed_polls.is_multiple_of(10) {
                        events.event(Event::Warning {
                            node: node.to_string(),
                            message: format!(
                                "cannot ask Slurm about its jobs ({e}); trying again in {} s",
                                g.interval.as_secs()
                            ),
                        });
                    }
                }
            }
            g.last = Some(Instant::now());
        }
        g.states.get(&id).cloned()
    }
}

/// Asks sacct (or squeue when accounting is off) about `ids`. Returns the states and whether
/// sacct said accounting is off.
fn poll(ids: &[u64], no_sacct: bool) -> Result<(HashMap<u64, JobState>, bool), String> {
    if ids.is_empty() {
        return Ok((HashMap::new(), false));
    }
    let list = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let mut sacct_off = no_sacct;
    if !no_sacct {
        let r = run_tool(Command::new("sacct").args([
            "-n",
            "-P",
            "-X",
            "-j",
            &list,
            "-o",
            "JobIDRaw,State,Reason,NodeList",
        ]));
        match r {
            Ok(out) => {
                let states = parse_states(&out);
                // sacct lists a job once the controller has told the database: a job it does
                // not list yet is asked of squeue.
                if ids.iter().all(|i| states.contains_key(i)) {
                    return Ok((states, false));
                }
            }
            Err(e) if e.contains("disabled") || e.contains("accounting_storage/none") => sacct_off = true,
            Err(_) => {}
        }
    }
    let out = run_tool(Command::new("squeue").args(["-h", "-t", "all", "-j", &list, "-o", "%i|%T|%r|%N"]));
    match out {
        Ok(out) => Ok((parse_states(&out), sacct_off)),
        // Every id is past MinJobAge: none is listed.
        Err(e) if e.contains("Invalid job id") => Ok((HashMap::new(), sacct_off)),
        Err(e) => Err(e),
    }
}

/// Runs a Slurm command with a time limit; its stdout, or its stderr as the error.
fn run_tool(cmd: &mut Command) -> Result<String, String> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{name}`: {e} (is Slurm's client installed and on PATH?)"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("`{name}` did not answer within 60 s"));
            }
            Err(e) => return Err(format!("`{name}`: {e}")),
        }
    };
    let out = out_t.join().unwrap_or_default();
    let err = err_t.join().unwrap_or_default();
    if status.success() {
        Ok(out)
    } else {
        let msg = err.trim();
        Err(if msg.is_empty() { format!("`{name}` failed ({status})") } else { crate::diag::clip(msg, 2000) })
    }
}

/// The sbatch flags of `r` (memory and time as given, or as scaled by a retry).
pub fn resource_flags(
    r: &Resources,
    memory_mib: Option<u64>,
    time_s: Option<u64>,
    exclude: &[String],
) -> Vec<String> {
    let mut f = Vec::new();
    if let Some(c) = r.cpus {
        f.push(format!("--cpus-per-task={c}"));
    }
    if let Some(m) = memory_mib {
        f.push(format!("--mem={m}M"));
    }
    if let Some(g) = r.gpus.filter(|g| *g > 0) {
        match &r.gpu_type {
            Some(t) => f.push(format!("--gres=gpu:{t}:{g}")),
            None => f.push(format!("--gres=gpu:{g}")),
        }
    }
    for (flag, v) in [("--partition", &r.partition), ("--account", &r.account), ("--qos", &r.qos)] {
        if let Some(v) = v {
            f.push(format!("{flag}={v}"));
        }
    }
    if let Some(t) = time_s {
        f.push(format!("--time={}", slurm_time(t)));
    }
    if !exclude.is_empty() {
        f.push(format!("--exclude={}", exclude.join(",")));
    }
    f.extend(r.sbatch.iter().flatten().cloned());
    f
}

/// Seconds as Slurm's `D-HH:MM:SS`, rounded up to a minute.
fn slurm_time(s: u64) -> String {
    let m = s.div_ceil(60);
    format!("{}-{:02}:{:02}:00", m / 1440, (m / 60) % 24, m % 60)
}

/// Asks `sbatch --test-only` whether the cluster can ever run a job with `r`: `Err` with sbatch's
/// answer when it cannot.
pub fn test_resources(r: &Resources) -> Result<(), Refusal> {
    let mem = r.memory_mib().ok().flatten();
    let time = r.time_seconds().ok().flatten();
    let mut cmd = Command::new("sbatch");
    cmd.arg("--test-only").args(resource_flags(r, mem, time, &[])).arg("--wrap=true");
    match run_tool(&mut cmd) {
        Ok(_) => Ok(()),
        // No sbatch, or no controller answering: not the request's fault.
        Err(e)
            if e.starts_with("cannot run `sbatch`") || e.contains("Unable to contact slurm controller") =>
        {
            Err(Refusal::Unavailable(e))
        }
        Err(e) => Err(Refusal::Refused(e)),
    }
}

/// Why `sbatch --test-only` said no.
#[derive(Debug)]
pub enum Refusal {
    /// The cluster cannot run this request.
    Refused(String),
    /// No Slurm to ask.
    Unavailable(String),
}

/// What to do about a job that ended without a committed entry.
#[derive(Debug, PartialEq)]
pub enum Next {
    Fail(String),
    /// Submit again: why, and with what memory, time and excluded nodes.
    Resubmit {
        why: String,
        memory_mib: Option<u64>,
        time_s: Option<u64>,
        exclude: Vec<String>,
        retry: bool,
    },
}

/// Continuations (a pre-empted or time-limited job continued from its checkpoint) of one key
/// before it counts as failing: each makes progress, but a node that never gets further must end.
pub const MAX_CONTINUATIONS: usize = 20;

/// Decides what follows a job that ended (`state`, with `exit` its worker's record if it wrote
/// one and `started` whether it ever began the node) under `r`, after `last` was submitted.
pub fn next_step(
    state: &JobState,
    exit: Option<&ExitRecord>,
    started: bool,
    had_dependency: bool,
    r: &Resources,
    last: &Attempt,
    attempts: usize,
) -> Next {
    let (st, nodes) = match state {
        JobState::Ended { state, nodes } => (state.as_str(), nodes.as_str()),
        JobState::Gone => ("(no longer listed)", ""),
        JobState::Live { state, .. } => (state.as_str(), ""),
    };
    // The worker's own failure is final, unless the cluster says why it failed: out of memory
    // (the kernel killed the worker or a process of its, which it reported), its time limit, its
    // node.
    let limits = ["OUT_OF_MEMORY", "TIMEOUT", "DEADLINE", "NODE_FAIL", "BOOT_FAIL"];
    if let Some(x) = exit
        && x.outcome == "failed"
        && !limits.contains(&st)
    {
        return Next::Fail(x.error.clone().unwrap_or_else(|| "failed".into()));
    }
    let same = |why: String, retry: bool| Next::Resubmit {
        why,
        memory_mib: last.memory_mib,
        time_s: last.time_s,
        exclude: last.exclude.clone(),
        retry,
    };
    let interrupted = exit.is_some_and(|x| x.outcome == "interrupted");
    if st == "PREEMPTED" || (interrupted && st != "CANCELLED" && st != "OUT_OF_MEMORY" && st != "NODE_FAIL") {
        if attempts >= MAX_CONTINUATIONS {
            return Next::Fail(format!(
                "stopped {attempts} times ({st}) without finishing: raise `resources.time` or check the partition's pre-emption"
            ));
        }
        let why = if st == "PREEMPTED" {
            "continue after PREEMPTED, from its checkpoint".to_string()
        } else {
            // It stopped on SIGTERM before the end: Slurm's warning that the time limit is near
            // (--signal), or a pre-emption that does not requeue.
            "continue from its checkpoint (the worker stopped on SIGTERM: time limit near, or pre-empted)"
                .to_string()
        };
        return same(why, false);
    }
    let retries = r.retries.unwrap_or(0);
    let scale = r.retry_scale.unwrap_or(2.0);
    let retry_help = |what: &str| {
        if retries == 0 {
            format!("; raise `resources.{what}`, or set `resources.retries` to retry with more")
        } else {
            format!("; {} retries used", last.retries_used)
        }
    };
    match st {
        "OUT_OF_MEMORY" => {
            if last.retries_used < retries {
                if let Some(m) = last.memory_mib {
                    return Next::Resubmit {
                        why: format!("retry after OUT_OF_MEMORY (memory {m}M x {scale})"),
                        memory_mib: Some((m as f64 * scale).ceil() as u64),
                        time_s: last.time_s,
                        exclude: last.exclude.clone(),
                        retry: true,
                    };
                }
                return Next::Fail(
                    "ran out of memory (OUT_OF_MEMORY); set `resources.memory` so that retries can scale it"
                        .into(),
                );
            }
            Next::Fail(format!("ran out of memory (OUT_OF_MEMORY){}", retry_help("memory")))
        }
        "TIMEOUT" | "DEADLINE" => {
            if last.retries_used < retries {
                if let Some(t) = last.time_s {
                    return Next::Resubmit {
                        why: format!("retry after {st} (time {} x {scale})", slurm_time(t)),
                        memory_mib: last.memory_mib,
                        time_s: Some((t as f64 * scale).ceil() as u64),
                        exclude: last.exclude.clone(),
                        retry: true,
                    };
                }
                return Next::Fail(format!(
                    "reached its time limit ({st}); set `resources.time` so that retries can scale it"
                ));
            }
            Next::Fail(format!("reached its time limit ({st}){}", retry_help("time")))
        }
        "NODE_FAIL" | "BOOT_FAIL" => {
            if last.retries_used < retries {
                let mut exclude = last.exclude.clone();
                exclude
                    .extend(nodes.split(',').filter(|n| !n.is_empty() && *n != "None").map(str::to_string));
                return Next::Resubmit {
                    why: format!("retry after {st} on {nodes} (excluded)"),
                    memory_mib: last.memory_mib,
                    time_s: last.time_s,
                    exclude,
                    retry: true,
                };
            }
            Next::Fail(format!(
                "its cluster node failed ({st}{}){}",
                if nodes.is_empty() { String::new() } else { format!(" on {nodes}") },
                retry_help("retries")
            ))
        }
        // Slurm cancels a job whose dependency failed; this one's inputs are done now (exec
        // launches a job only then), e.g. after an input's retry: its turn has come.
        "CANCELLED" if !started && had_dependency && !interrupted => {
            same("its inputs are done (its first job was cancelled with a failed input)".into(), false)
        }
        "CANCELLED" => Next::Fail("cancelled (scancel, or the cluster)".into()),
        _ => Next::Fail(format!("the Slurm job ended {st} without a result")),
    }
}

/// The Slurm launcher: submits, then waits on jobs; see the module's documentation.
pub struct Slurm<'a> {
    store: &'a Store,
    root: PathBuf,
    experiment: String,
    bin: PathBuf,
    /// Each node's resources, by instance name.
    resources: HashMap<String, Resources>,
    /// `distillery status`: watch jobs, never submit.
    attach_only: bool,
    poller: Poller,
    /// Jobs this process submitted (Ctrl-C cancels these and no others).
    mine: Mutex<Vec<(String, u64)>>,
}

/// What [`Slurm::submit_all`] did.
#[derive(Debug, Default)]
pub struct Submitted {
    /// (node, job id) submitted now.
    pub new: Vec<(String, u64)>,
    /// (node, job id) already queued or running from an earlier submission: not submitted again.
    pub adopted: Vec<(String, u64)>,
}

impl<'a> Slurm<'a> {
    /// `bin`: the binary jobs run (see [`snapshot_binary`]).
    pub fn new(
        store: &'a Store,
        experiment: &str,
        bin: PathBuf,
        resources: HashMap<String, Resources>,
        attach_only: bool,
    ) -> Result<Slurm<'a>, String> {
        let root = std::path::absolute(store.root()).map_err(|e| format!("store path: {e}"))?;
        if root.to_string_lossy().contains(['%', '\n']) {
            return Err(format!(
                "the store path {} has a `%` or a newline, which sbatch's --output reads as a pattern; use another --store",
                root.display()
            ));
        }
        let poll_ms =
            std::env::var("DISTILLERY_SLURM_POLL_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000u64);
        Ok(Slurm {
            store,
            root,
            experiment: experiment.to_string(),
            bin,
            resources,
            attach_only,
            poller: Poller::new(Duration::from_millis(poll_ms.clamp(100, 60_000))),
            mine: Mutex::new(Vec::new()),
        })
    }

    fn job_dir(&self, key: &str) -> PathBuf {
        self.root.join("slurm").join("jobs").join(key)
    }

    pub fn record(&self, key: &str) -> Option<Record> {
        let text = std::fs::read_to_string(self.job_dir(key).join("record.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn exit_record(&self, key: &str, job_id: u64) -> Option<ExitRecord> {
        let text = std::fs::read_to_string(self.job_dir(key).join("exit.json")).ok()?;
        let x: ExitRecord = serde_json::from_str(&text).ok()?;
        (x.job_id == Some(job_id)).then_some(x)
    }

    fn mark_delivered(&self, key: &str) {
        if let Some(mut r) = self.record(key)
            && !r.delivered
        {
            r.delivered = true;
            let p = self.job_dir(key).join("record.json");
            let _ = write_atomic(&p, serde_json::to_string_pretty(&r).expect("json").as_bytes());
        }
    }

    /// Whether `key` was computed by a job whose events no process has forwarded yet.
    pub fn unreported(&self, key: &str) -> bool {
        self.record(key).is_some_and(|r| !r.delivered && !r.attempts.is_empty())
    }

    /// The jobs this process submitted.
    pub fn mine(&self) -> Vec<(String, u64)> {
        self.mine.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Submits every `run` job of `plan` in topological order, each depending on its node
    /// inputs' jobs; a key whose job is still queued or running is adopted, not submitted again.
    pub fn submit_all(
        &self,
        graph: &Graph,
        plan: &[PlanEntry],
        force: &dyn Fn(&str) -> bool,
        cancel: &Cancel,
    ) -> Result<Submitted, String> {
        let run: HashMap<&str, bool> =
            plan.iter().map(|e| (e.node.as_str(), matches!(e.status, Status::Run { .. }))).collect();
        let mut out = Submitted::default();
        let mut ids: HashMap<NodeIndex, u64> = HashMap::new();
        // One poll for every earlier submission of these keys.
        let mut earlier = Vec::new();
        for ix in graph.node_order() {
            let name = graph.dag[ix].name();
            if run.get(name).copied().unwrap_or(false)
                && let Some(a) = self.record(&graph.job(ix).key).and_then(|r| r.attempts.last().cloned())
            {
                earlier.push((ix, a.job_id));
            }
        }
        let states = if earlier.is_empty() {
            HashMap::new()
        } else {
            poll(&earlier.iter().map(|(_, id)| *id).collect::<Vec<_>>(), false).map(|(s, _)| s)?
        };
        for (ix, id) in earlier {
            if matches!(states.get(&id), Some(JobState::Live { .. })) {
                ids.insert(ix, id);
                out.adopted.push((graph.dag[ix].name().to_string(), id));
                self.poller.watch(id);
            }
        }
        for ix in graph.node_order() {
            let name = graph.dag[ix].name();
            if !run.get(name).copied().unwrap_or(false) || ids.contains_key(&ix) {
                continue;
            }
            if cancel.is_cancelled() {
                return Err("interrupted while submitting".into());
            }
            let deps: Vec<u64> = graph
                .inputs
                .get(&ix)
                .into_iter()
                .flatten()
                .filter(|(_, t)| matches!(graph.dag[*t], Vertex::Node { .. }))
                .filter_map(|(_, t)| ids.get(t).copied())
                .collect();
            let job = graph.job(ix);
            let r = self.resources.get(name).cloned().unwrap_or_default();
            let mem = r.memory_mib().ok().flatten();
            let time = r.time_seconds().ok().flatten();
            let a = self.submit(job, force(name), &deps, "first".into(), mem, time, Vec::new(), 0)?;
            ids.insert(ix, a);
            out.new.push((name.to_string(), a));
        }
        Ok(out)
    }

    /// One `sbatch` of `job`; appends the attempt to its record. Returns the job id.
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        job: &Job,
        force: bool,
        deps: &[u64],
        why: String,
        memory_mib: Option<u64>,
        time_s: Option<u64>,
        exclude: Vec<String>,
        retries_used: u32,
    ) -> Result<u64, String> {
        let dir = self.job_dir(&job.key);
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let job_file = dir.join("job.json");
        let io = |p: &Path, e: crate::store::StoreError| format!("cannot write {}: {e}", p.display());
        write_atomic(&job_file, serde_json::to_string_pretty(job).expect("job serialises").as_bytes())
            .map_err(|e| io(&job_file, e))?;
        let q = |p: &Path| shell_quote(&p.to_string_lossy());
        let script = format!(
            "#!/bin/sh\n# distillery: node {} of experiment {}, key {}\n\
             # As many compute threads as cores allocated (where no cgroup or affinity confines them).\n\
             if [ -z \"${{RAYON_NUM_THREADS:-}}\" ] && [ -n \"${{SLURM_CPUS_PER_TASK:-}}\" ]; then export RAYON_NUM_THREADS=\"$SLURM_CPUS_PER_TASK\"; fi\n\
             exec {} worker {} --store {} --events {} --exit {}{}\n",
            job.name.replace('\n', " "),
            self.experiment.replace('\n', " "),
            job.key,
            q(&self.bin),
            q(&job_file),
            q(&self.root),
            q(&dir.join("events.jsonl")),
            q(&dir.join("exit.json")),
            if force { " --force" } else { "" },
        );
        let events_from = std::fs::metadata(dir.join("events.jsonl")).map(|m| m.len()).unwrap_or(0);
        let script_path = dir.join("run.sh");
        write_atomic(&script_path, script.as_bytes()).map_err(|e| io(&script_path, e))?;
        let r = self.resources.get(&job.name).cloned().unwrap_or_default();
        let flags = resource_flags(&r, memory_mib, time_s, &exclude);
        // The worker checkpoints and stops on SIGTERM: sent this long before the time limit.
        let grace = time_s.map_or(90, |t| (t / 10).clamp(10, 90));
        let mut cmd = Command::new("sbatch");
        cmd.arg("--parsable")
            .arg(format!("--job-name=distillery:{}", crate::diag::clip(&job.name, 100)))
            .arg(format!("--comment=distillery node={} key={}", crate::diag::clip(&job.name, 100), job.key))
            .arg(format!("--output={}", dir.join("slurm-%j.out").display()))
            .arg(format!("--error={}", dir.join("slurm-%j.err").display()))
            .arg("--open-mode=append")
            .arg("--requeue")
            .arg(format!("--signal=B:TERM@{grace}"))
            .arg("--kill-on-invalid-dep=yes")
            .arg(format!("--chdir={}", dir.display()));
        if !deps.is_empty() {
            let d = deps.iter().map(u64::to_string).collect::<Vec<_>>().join(":");
            cmd.arg(format!("--dependency=afterok:{d}"));
        }
        cmd.args(&flags).arg(&script_path);
        let out = run_tool(&mut cmd).map_err(|e| format!("sbatch refused `{}`: {e}", job.name))?;
        let id: u64 = out.trim().split(';').next().and_then(|s| s.trim().parse().ok()).ok_or_else(|| {
            format!("sbatch answered `{}`, not a job id", crate::diag::clip(out.trim(), 200))
        })?;
        let mut rec = self.record(&job.key).unwrap_or_else(|| Record {
            node: job.name.clone(),
            experiment: self.experiment.clone(),
            key: job.key.clone(),
            attempts: Vec::new(),
            delivered: false,
        });
        rec.delivered = false;
        rec.attempts.push(Attempt {
            job_id: id,
            submitted_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            why,
            flags,
            memory_mib,
            time_s,
            exclude,
            dependency: deps.to_vec(),
            retries_used,
            events_from,
        });
        let rec_path = dir.join("record.json");
        write_atomic(&rec_path, serde_json::to_string_pretty(&rec).expect("json").as_bytes())
            .map_err(|e| io(&rec_path, e))?;
        self.mine.lock().unwrap_or_else(|p| p.into_inner()).push((job.name.clone(), id));
        self.poller.watch(id);
        Ok(id)
    }

    /// `scancel` the jobs this process submitted that have not ended; returns those it cancelled.
    pub fn cancel_mine(&self) -> Result<Vec<(String, u64)>, String> {
        let mine = self.mine();
        if mine.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<u64> = mine.iter().map(|(_, id)| *id).collect();
        let (states, _) = poll(&ids, false).unwrap_or_default();
        let live: Vec<(String, u64)> = mine
            .into_iter()
            .filter(|(_, id)| !matches!(states.get(id), Some(JobState::Ended { .. }) | Some(JobState::Gone)))
            .collect();
        if live.is_empty() {
            return Ok(live);
        }
        let list: Vec<String> = live.iter().map(|(_, id)| id.to_string()).collect();
        run_tool(Command::new("scancel").args(&list))?;
        Ok(live)
    }

    /// The last 2000 characters of the job's stderr (read from its last 8 KiB), quoted as a
    /// plugin's are.
    fn stderr_tail(&self, key: &str, job_id: u64) -> String {
        let p = self.job_dir(key).join(format!("slurm-{job_id}.err"));
        let Ok(mut f) = std::fs::File::open(&p) else { return String::new() };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(8192)));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        if String::from_utf8_lossy(&buf).trim().is_empty() {
            return String::new();
        }
        let tail = crate::diag::quoted_tail(&buf, 2000);
        format!("\n  stderr of slurm job {job_id} ({}):\n{tail}", p.display())
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Reads a worker's events file as it grows and forwards whole lines.
struct Tail {
    path: PathBuf,
    /// The job's key: a line of another key is not this job's.
    key: String,
    offset: u64,
    partial: Vec<u8>,
    /// It has seen the worker start the node.
    started: bool,
}

impl Tail {
    fn forward(&mut self, events: &dyn EventSink, node: &str) {
        let Ok(mut f) = std::fs::File::open(&self.path) else { return };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return;
        }
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        while let Some(nl) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            let Ok(e) = serde_json::from_slice::<Event>(&line) else { continue };
            // Only this node's own events, and its outcome is exec's to settle.
            let ok = match &e {
                Event::Started { node: n, key: k, .. } => {
                    let mine = n == node && *k == self.key;
                    self.started |= mine;
                    mine
                }
                Event::Finished { .. } => false,
                Event::Progress { node: n, .. }
                | Event::Metric { node: n, .. }
                | Event::Status { node: n, .. }
                | Event::Warning { node: n, .. } => n == node,
            };
            if ok {
                events.event(e);
            }
        }
    }
}

impl Launcher for Slurm<'_> {
    fn launch(
        &self,
        job: &Job,
        entries: Vec<(String, Entry)>,
        force: bool,
        cancel: &Cancel,
        events: &dyn EventSink,
    ) -> Result<(Entry, Option<f64>), NodeError> {
        let _ = entries;
        let key = CacheKey::from_hex(&job.key)
            .ok_or_else(|| NodeError::Failed(format!("the job's key {:?} is not a key", job.key)))?;
        let dir = self.job_dir(&job.key);
        let r = self.resources.get(&job.name).cloned().unwrap_or_default();
        let mut rec = match self.record(&job.key) {
            Some(rec) if !rec.attempts.is_empty() => rec,
            _ if self.attach_only => {
                // Not submitted; it may have been computed by another run since.
                if let Lookup::Hit(e) = self.store.get(&key)? {
                    return Ok((e, None));
                }
                return Err(NodeError::Failed(
                    "not submitted to Slurm: `distillery run FILE --launcher slurm` submits it".into(),
                ));
            }
            _ => {
                let mem = r.memory_mib().ok().flatten();
                let time = r.time_seconds().ok().flatten();
                self.submit(job, force, &[], "first".into(), mem, time, Vec::new(), 0)
                    .map_err(NodeError::Failed)?;
                self.record(&job.key)
                    .ok_or_else(|| NodeError::Failed("its submission record is gone".into()))?
            }
        };
        // Whatever this returns, its jobs need no more polling.
        struct Forget<'p>(&'p Poller, Vec<u64>);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                for id in &self.1 {
                    self.0.forget(*id);
                }
            }
        }
        let mut forget = Forget(&self.poller, rec.attempts.iter().map(|a| a.job_id).collect());
        let from = rec.attempts.last().map_or(0, |a| a.events_from);
        let mut tail = Tail {
            path: dir.join("events.jsonl"),
            key: job.key.clone(),
            offset: from,
            partial: Vec::new(),
            started: false,
        };
        let mut shown = String::new();
        let mut ended_since: Option<Instant> = None;
        loop {
            tail.forward(events, &job.name);
            if let Lookup::Hit(e) = self.store.get(&key)? {
                let id = rec.attempts.last().map(|a| a.job_id).unwrap_or(0);
                // The worker writes its exit record just after committing.
                let t0 = Instant::now();
                let mut exit = self.exit_record(&job.key, id);
                while exit.is_none() && t0.elapsed() < Duration::from_secs(3) {
                    std::thread::sleep(Duration::from_millis(100));
                    exit = self.exit_record(&job.key, id);
                }
                tail.forward(events, &job.name);
                self.mark_delivered(&job.key);
                let seconds = match exit {
                    Some(x) if x.outcome == "cached" => None,
                    Some(x) => Some(x.seconds.unwrap_or(0.0)),
                    // Committed by another process (a local run of the same key).
                    None => None,
                };
                return Ok((e, seconds));
            }
            if cancel.is_cancelled() {
                return Err(NodeError::Cancelled);
            }
            let last = rec.attempts.last().cloned().expect("a record has attempts");
            let state = self.poller.state(last.job_id, events, &job.name);
            match &state {
                None => {}
                Some(JobState::Live { state, reason }) => {
                    ended_since = None;
                    let msg = if reason.is_empty() || reason == "None" {
                        format!("slurm job {}: {}", last.job_id, state.to_lowercase())
                    } else {
                        format!("slurm job {}: {} ({reason})", last.job_id, state.to_lowercase())
                    };
                    if msg != shown && (state != "RUNNING" || !tail.started) {
                        events.event(Event::Status {
                            node: job.name.clone(),
                            done: 0,
                            total: 0,
                            message: msg.clone(),
                        });
                    }
                    shown = msg;
                }
                Some(st) => {
                    // Ended, and still ended 2 s later (a requeued job passes through states
                    // that look final), by which time a shared filesystem shows the entry or exit
                    // record if there is one.
                    let since = *ended_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < Duration::from_secs(2) {
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                    ended_since = None;
                    let exit = self.exit_record(&job.key, last.job_id);
                    let had_dep = !last.dependency.is_empty();
                    let next =
                        next_step(st, exit.as_ref(), tail.started, had_dep, &r, &last, rec.attempts.len());
                    match next {
                        Next::Fail(msg) => {
                            let msg = format!(
                                "slurm job {}: {msg}{}",
                                last.job_id,
                                self.stderr_tail(&job.key, last.job_id)
                            );
                            return Err(NodeError::Failed(msg));
                        }
                        Next::Resubmit { why, memory_mib, time_s, exclude, retry } => {
                            if self.attach_only {
                                return Err(NodeError::Failed(format!(
                                    "slurm job {} ended: {why} is due; `distillery run FILE --launcher slurm` submits it",
                                    last.job_id
                                )));
                            }
                            let used = last.retries_used + u32::from(retry);
                            let id = self
                                .submit(job, force, &[], why.clone(), memory_mib, time_s, exclude, used)
                                .map_err(NodeError::Failed)?;
                            events.event(Event::Warning {
                                node: job.name.clone(),
                                message: format!(
                                    "slurm job {} ended ({}): submitted again as job {id}: {why}",
                                    last.job_id,
                                    match st {
                                        JobState::Ended { state, .. } => state.as_str(),
                                        _ => "no longer listed",
                                    }
                                ),
                            });
                            forget.1.push(id);
                            rec = self
                                .record(&job.key)
                                .ok_or_else(|| NodeError::Failed("its submission record is gone".into()))?;
                            tail.started = false;
                        }
                    }
                }
            }
            // A running job's progress is shown as it comes; a queued one is looked at less
            // often (each look is a stat and an open on the shared filesystem).
            let pause = if tail.started { 250 } else { 1000 };
            std::thread::sleep(Duration::from_millis(pause));
        }
    }
}

/// Copies this binary into the store by its hash (once): what jobs run, so a rebuild while they
/// wait in the queue cannot mix versions.
pub fn snapshot_binary(store_root: &Path) -> Result<PathBuf, String> {
    use sha2::{Digest, Sha256};
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    if !exe.file_name().is_some_and(|n| n.to_string_lossy().starts_with("distillery")) {
        return Err(format!("{} is not the distillery binary", exe.display()));
    }
    let bytes = std::fs::read(&exe).map_err(|e| format!("cannot read {}: {e}", exe.display()))?;
    let hex: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let root = std::path::absolute(store_root).map_err(|e| format!("store path: {e}"))?;
    let dir = root.join("slurm").join("bin").join(&hex[..16]);
    let dest = dir.join("distillery");
    if dest.is_file() {
        return Ok(dest);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".distillery.{}", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot make {} executable: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &dest).map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(mem: Option<u64>, time: Option<u64>, used: u32) -> Attempt {
        Attempt {
            job_id: 7,
            submitted_unix: 0,
            why: "first".into(),
            flags: vec![],
            memory_mib: mem,
            time_s: time,
            exclude: vec![],
            dependency: vec![],
            retries_used: used,
            events_from: 0,
        }
    }

    fn ended(s: &str) -> JobState {
        JobState::Ended { state: s.into(), nodes: "n3".into() }
    }

    #[test]
    fn states_parse_from_squeue_and_sacct() {
        let s = parse_states(
            "12|PENDING|Dependency|\n13|CANCELLED by 0|None|n1\n14.batch|COMPLETED||n1\n15|RUNNING|None|n2\n",
        );
        assert_eq!(s[&12], JobState::Live { state: "PENDING".into(), reason: "Dependency".into() });
        assert_eq!(s[&13], JobState::Ended { state: "CANCELLED".into(), nodes: "n1".into() });
        assert!(!s.contains_key(&14));
        assert!(matches!(s[&15], JobState::Live { .. }));
    }

    #[test]
    fn retries_scale_memory_and_time_and_exclude_failed_nodes() {
        let r = Resources { retries: Some(2), retry_scale: Some(1.5), ..Default::default() };
        let a = attempt(Some(1000), Some(600), 0);
        match next_step(&ended("OUT_OF_MEMORY"), None, true, false, &r, &a, 1) {
            Next::Resubmit { memory_mib, time_s, retry, .. } => {
                assert_eq!((memory_mib, time_s, retry), (Some(1500), Some(600), true))
            }
            n => panic!("{n:?}"),
        }
        match next_step(&ended("TIMEOUT"), None, true, false, &r, &a, 1) {
            Next::Resubmit { time_s, .. } => assert_eq!(time_s, Some(900)),
            n => panic!("{n:?}"),
        }
        match next_step(&ended("NODE_FAIL"), None, true, false, &r, &a, 1) {
            Next::Resubmit { exclude, .. } => assert_eq!(exclude, vec!["n3".to_string()]),
            n => panic!("{n:?}"),
        }
        // Used up: a failure that says what to raise.
        let spent = attempt(Some(1000), Some(600), 2);
        assert!(
            matches!(next_step(&ended("OUT_OF_MEMORY"), None, true, false, &r, &spent, 3), Next::Fail(m) if m.contains("2 retries used"))
        );
        let none = Resources::default();
        assert!(
            matches!(next_step(&ended("OUT_OF_MEMORY"), None, true, false, &none, &a, 1), Next::Fail(m) if m.contains("resources.retries"))
        );
    }

    #[test]
    fn preemption_continues_and_a_worker_failure_is_final() {
        let r = Resources::default();
        let a = attempt(None, None, 0);
        assert!(matches!(
            next_step(&ended("PREEMPTED"), None, true, false, &r, &a, 1),
            Next::Resubmit { retry: false, .. }
        ));
        let stopped =
            ExitRecord { job_id: Some(7), outcome: "interrupted".into(), seconds: None, error: None };
        assert!(matches!(
            next_step(&ended("COMPLETED"), Some(&stopped), true, false, &r, &a, 1),
            Next::Resubmit { .. }
        ));
        assert!(matches!(
            next_step(&ended("PREEMPTED"), None, true, false, &r, &a, MAX_CONTINUATIONS),
            Next::Fail(_)
        ));
        let failed = ExitRecord {
            job_id: Some(7),
            outcome: "failed".into(),
            seconds: None,
            error: Some("boom".into()),
        };
        assert_eq!(
            next_step(&ended("FAILED"), Some(&failed), true, false, &r, &a, 1),
            Next::Fail("boom".into())
        );
        // A failure the cluster explains (a killed child) is retried as the cluster's.
        let more = Resources { retries: Some(1), ..Default::default() };
        let m = attempt(Some(100), None, 0);
        assert!(matches!(
            next_step(&ended("OUT_OF_MEMORY"), Some(&failed), true, false, &more, &m, 1),
            Next::Resubmit { memory_mib: Some(200), .. }
        ));
        // Cancelled before it ran because an input failed: its turn comes when the input is done.
        assert!(matches!(
            next_step(&ended("CANCELLED"), None, false, true, &r, &a, 1),
            Next::Resubmit { .. }
        ));
        assert!(matches!(next_step(&ended("CANCELLED"), None, true, true, &r, &a, 1), Next::Fail(_)));
    }

    #[test]
    fn resources_become_sbatch_flags() {
        let r = Resources {
            cpus: Some(4),
            memory: Some("1.5G".into()),
            gpus: Some(2),
            gpu_type: Some("a100".into()),
            partition: Some("gpu".into()),
            time: Some("90m".into()),
            sbatch: Some(vec!["--constraint=ib".into()]),
            ..Default::default()
        };
        let f = resource_flags(&r, r.memory_mib().unwrap(), r.time_seconds().unwrap(), &[]);
        assert_eq!(
            f,
            [
                "--cpus-per-task=4",
                "--mem=1536M",
                "--gres=gpu:a100:2",
                "--partition=gpu",
                "--time=0-01:30:00",
                "--constraint=ib"
            ]
        );
        assert_eq!(slurm_time(86400 + 61), "1-00:02:00");
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }
}
