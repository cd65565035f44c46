//! exec: run a graph's nodes — ready nodes in parallel, failures contained, results stored.
//!
//! Architecture invariants: a node's result becomes visible only when [`Store`] commits it, so an
//! interrupted or failed node leaves nothing behind and the next run resumes with exactly the
//! unfinished nodes; a failing node stops its dependants only; `run` executes exactly the plan
//! it is given; how a job is run is behind [`Launcher`], what it does behind [`NodeRunner`], and
//! everything it reports goes through one [`EventSink`].

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use petgraph::graph::NodeIndex;
use serde_json::Value;

use crate::graph::{Graph, Vertex};
use crate::job::Job;
use crate::plan::{PlanEntry, Reason, Status};
use crate::store::{Entry, Lookup, Store, StoreError};

/// Set by Ctrl-C; nodes check it between steps and stop.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// `Err(Cancelled)` once cancelled: `cancel.check()?` in a training loop.
    pub fn check(&self) -> Result<(), NodeError> {
        if self.is_cancelled() { Err(NodeError::Cancelled) } else { Ok(()) }
    }
}

/// What a node reports while it runs. (Serialised as a worker's `--events` lines, which the
/// Slurm launcher forwards to the submitting process's sinks.)
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Started {
        node: String,
        key: String,
        /// Where it runs (`cpu`, `cuda:1`): the device it was placed on.
        device: String,
        /// It continues from a checkpoint of an interrupted run of the same key: where that run
        /// stopped (`epoch 3 of 10, batch 0`), as [`NodeRunner::resuming`] read it.
        resume: Option<String>,
    },
    Progress {
        node: String,
        epoch: u32,
        epochs: u32,
        step: u64,
        steps: u64,
        loss: f64,
        images_per_second: f64,
    },
    Metric {
        node: String,
        name: String,
        value: f64,
        step: u64,
    },
    /// Progress of a node that counts work items rather than epochs (a plugin, a generator's
    /// sampling): `done` of `total`, and what it is doing. `total` 0: a state with no count
    /// (a queued Slurm job's `pending (Dependency)`), shown as its message alone.
    Status {
        node: String,
        done: u64,
        total: u64,
        message: String,
    },
    Warning {
        node: String,
        message: String,
    },
    Finished {
        node: String,
        outcome: Outcome,
    },
}

/// Where events go (terminal, local run store, MLflow); must not block training for long.
pub trait EventSink: Sync {
    fn event(&self, e: Event);
}

/// A job as a launcher runs it: the resolved job, its node inputs' stored entries, where to
/// write, how to report.
pub struct Task<'a> {
    pub job: &'a Job,
    /// The stored results of the job's node inputs, by role (`teacher`, `rows/0` ...).
    pub entries: Vec<(String, Entry)>,
    /// Write the result's files here; they are committed to the store when `run` returns Ok.
    pub out_dir: PathBuf,
    pub cancel: &'a Cancel,
    pub events: &'a dyn EventSink,
    /// Where the node may keep a checkpoint of its progress (in the store, beside, never inside,
    /// the entry being written), to continue from if it is interrupted; removed once the entry
    /// is committed.
    pub checkpoint: PathBuf,
}

impl Task<'_> {
    /// The stored entry of a node input by role.
    pub fn entry(&self, role: &str) -> Option<&Entry> {
        self.entries.iter().find(|(r, _)| r == role).map(|(_, e)| e)
    }

    /// A failure that comes from a setting: names where it is written (`file:line:col`).
    pub fn fail_at(&self, setting: &str, e: impl std::fmt::Display) -> NodeError {
        NodeError::At { place: self.job.place_of(setting).to_string(), message: e.to_string() }
    }
}

/// What a finished node returns besides its files.
#[derive(Clone, Debug, Default)]
pub struct NodeOutput {
    /// Final metrics (accuracy, train_seconds, images_per_second, flops ...), kept in the manifest.
    pub metrics: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("interrupted")]
    Cancelled,
    #[error("{0}")]
    Failed(String),
    /// A failure that comes from a setting, with where the setting is written.
    #[error("{place}: {message}")]
    At { place: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Computes jobs of the kinds it knows, writing into the task's output folder.
pub trait NodeRunner: Sync {
    fn run(&self, task: &Task<'_>) -> Result<NodeOutput, NodeError>;

    /// Whether `run` will continue from the checkpoint at `checkpoint` (one of this job's key),
    /// and where it stopped, in words; `None` when it will start over (no usable checkpoint).
    fn resuming(&self, job: &Job, checkpoint: &std::path::Path) -> Option<String> {
        let _ = (job, checkpoint);
        None
    }
}

/// Runs one resolved job to a committed store entry. `exec` schedules (what is ready, job and
/// device slots, failures, Ctrl-C) and calls a launcher once per job, each on a thread of its
/// own; [`Local`] computes in this process. A launcher that starts `distillery worker JOB.json`
/// elsewhere (a cluster) reads the entry from the shared store when the worker is done.
pub trait Launcher: Sync {
    /// The entry of `job` and the seconds it took (`None`: another process had computed it).
    fn launch(
        &self,
        job: &Job,
        entries: Vec<(String, Entry)>,
        force: bool,
        cancel: &Cancel,
        events: &dyn EventSink,
    ) -> Result<(Entry, Option<f64>), NodeError>;
}

/// Today's threads: each job computed in this process by `runner`, committed to `store`.
pub struct Local<'a> {
    pub store: &'a Store,
    pub runner: &'a dyn NodeRunner,
}

impl Launcher for Local<'_> {
    fn launch(
        &self,
        job: &Job,
        entries: Vec<(String, Entry)>,
        force: bool,
        cancel: &Cancel,
        events: &dyn EventSink,
    ) -> Result<(Entry, Option<f64>), NodeError> {
        compute(job, entries, self.store, self.runner, events, cancel, force)
    }
}

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Nodes run at once (at least 1).
    pub jobs: usize,
    /// Nodes that use the device (train, finetune, distill, evaluate, teacher outputs) run at
    /// most this many at once on each device; 0 means `jobs`. Reports without `eval` only need a
    /// job slot.
    pub device_slots: usize,
    /// The devices (`cpu`, or `cuda:0`, `cuda:1` ...) that jobs using one are spread over: each
    /// such job runs on the one with the fewest of them running, and its `device` is set to it
    /// (the device is not part of a key). Empty: each job keeps its own device, and
    /// `device_slots` bounds them all together.
    pub devices: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Done {
        seconds: f64,
    },
    Cached,
    Failed {
        error: String,
    },
    /// Not run because an input failed, was interrupted, or is not available.
    Blocked {
        by: String,
    },
    Cancelled,
    /// Not selected (`--only`).
    Skipped,
}

#[derive(Debug, Default)]
pub struct Summary {
    /// Every node instance in topological order with its outcome.
    pub outcomes: Vec<(String, Outcome)>,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.outcomes
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Done { .. } | Outcome::Cached | Outcome::Skipped))
    }
    pub fn cancelled(&self) -> bool {
        self.outcomes.iter().any(|(_, o)| *o == Outcome::Cancelled)
    }
}

/// Executes `plan` (from [`crate::plan::plan`] over the same graph and store): each `run` entry
/// is launched once its inputs have entries, each `cached` one is read (and recomputed, with a
/// warning, if its entry turns out corrupt), each `skipped` one is left alone.
pub fn run(
    graph: &Graph,
    plan: &[PlanEntry],
    store: &Store,
    launcher: &dyn Launcher,
    opts: &RunOptions,
    events: &dyn EventSink,
    cancel: &Cancel,
) -> Summary {
    let status: HashMap<&str, &Status> = plan.iter().map(|e| (e.node.as_str(), &e.status)).collect();
    let order: Vec<NodeIndex> = graph.node_order().collect();

    let mut outcome: HashMap<NodeIndex, Outcome> = HashMap::new();
    let mut entries: HashMap<NodeIndex, Entry> = HashMap::new();
    let mut running = 0usize;
    let mut in_flight: HashSet<NodeIndex> = HashSet::new();
    let slots = if opts.device_slots == 0 { opts.jobs.max(1) } else { opts.device_slots };
    // Jobs running on each device (one shared count when no devices are given).
    let mut on_device = vec![0usize; opts.devices.len().max(1)];
    let mut placed: HashMap<NodeIndex, usize> = HashMap::new();
    let uses_device = |ix: NodeIndex| graph.job(ix).work.uses_device();
    let jobs = opts.jobs.max(1);
    let (tx, rx) = mpsc::channel::<(NodeIndex, Result<(Entry, Option<f64>), NodeError>)>();

    std::thread::scope(|scope| {
        loop {
            // Settle everything that needs no work, and launch what is ready.
            let mut launched_or_settled = true;
            while launched_or_settled {
                launched_or_settled = false;
                for &ix in &order {
                    if outcome.contains_key(&ix) || in_flight.contains(&ix) {
                        continue;
                    }
                    let name = graph.dag[ix].name().to_string();
                    let key = graph.key(ix);
                    let st = status.get(name.as_str()).copied().unwrap_or(&Status::Skipped);
                    // Not to run: cached (read and verified) or skipped, whatever its inputs did.
                    match st {
                        Status::Skipped => {
                            settle(&mut outcome, events, ix, &name, Outcome::Skipped);
                            launched_or_settled = true;
                            continue;
                        }
                        Status::Cached => match store.get(key) {
                            Ok(Lookup::Hit(e)) => {
                                entries.insert(ix, e);
                                // A process stopped between committing and removing its
                                // checkpoint leaves one behind: the entry supersedes it.
                                let _ = store.remove_checkpoint(key);
                                settle(&mut outcome, events, ix, &name, Outcome::Cached);
                                launched_or_settled = true;
                                continue;
                            }
                            Ok(Lookup::Corrupt { reason }) => events.event(Event::Warning {
                                node: name.clone(),
                                message: format!("cached result was corrupt ({reason}); recomputing"),
                            }),
                            // Removed since the plan was made: compute it.
                            Ok(Lookup::Miss) => {}
                            Err(e) => {
                                let o = Outcome::Failed { error: e.to_string() };
                                settle(&mut outcome, events, ix, &name, o);
                                launched_or_settled = true;
                                continue;
                            }
                        },
                        Status::Run { .. } => {}
                    }
                    // Inputs: every node input must have an outcome with an entry.
                    let mut inputs = Vec::new();
                    let mut waiting = false;
                    let mut blocked: Option<String> = None;
                    for (role, t) in graph.inputs.get(&ix).into_iter().flatten() {
                        if let Vertex::Node { name: tn, .. } = &graph.dag[*t] {
                            match (outcome.get(t), entries.get(t)) {
                                (Some(_), Some(e)) => inputs.push((role.clone(), e.clone())),
                                (Some(o), None) => {
                                    let why = match o {
                                        Outcome::Skipped => format!("{tn} (not cached, not selected)"),
                                        _ => tn.clone(),
                                    };
                                    blocked.get_or_insert(why);
                                }
                                (None, _) => waiting = true,
                            }
                        }
                    }
                    if let Some(by) = blocked {
                        settle(&mut outcome, events, ix, &name, Outcome::Blocked { by });
                        launched_or_settled = true;
                        continue;
                    }
                    if waiting {
                        continue;
                    }
                    if cancel.is_cancelled() {
                        settle(&mut outcome, events, ix, &name, Outcome::Cancelled);
                        launched_or_settled = true;
                        continue;
                    }
                    if running >= jobs {
                        continue;
                    }
                    // The device with the fewest jobs on it (the first of equals), if one is free.
                    let device = if uses_device(ix) {
                        let (d, n) =
                            on_device.iter().enumerate().min_by_key(|&(_, n)| *n).expect("one device");
                        if *n >= slots {
                            continue;
                        }
                        Some(d)
                    } else {
                        None
                    };
                    // Launch.
                    running += 1;
                    if let Some(d) = device {
                        on_device[d] += 1;
                        placed.insert(ix, d);
                    }
                    in_flight.insert(ix);
                    let tx = tx.clone();
                    let force =
                        matches!(st, Status::Run { reasons } if reasons.iter().any(Reason::is_forced));
                    let mut job = graph.job(ix).clone();
                    if let Some(name) = device.and_then(|d| opts.devices.get(d)) {
                        job.device = name.clone();
                    }
                    scope.spawn(move || {
                        let job = &job;
                        // A panic anywhere in the node (its runner, a rayon task inside it, the
                        // store) is that node's failure: the worker always answers, so the
                        // scheduler never waits for a result that cannot come, and the panicking
                        // node's pending entry is dropped uncommitted.
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            launcher.launch(job, inputs, force, cancel, events)
                        }))
                        .unwrap_or_else(|payload| {
                            Err(NodeError::Failed(format!(
                                "panicked: {}",
                                crate::data::panic_message(&*payload)
                            )))
                        });
                        let _ = tx.send((ix, r));
                    });
                    launched_or_settled = true;
                }
            }
            if running == 0 {
                break;
            }
            let (ix, r) = rx.recv().expect("workers hold a sender");
            running -= 1;
            in_flight.remove(&ix);
            let name = graph.dag[ix].name().to_string();
            if let Some(d) = placed.remove(&ix) {
                on_device[d] -= 1;
            }
            match r {
                Ok((entry, seconds)) => {
                    entries.insert(ix, entry);
                    let o = match seconds {
                        Some(seconds) => Outcome::Done { seconds },
                        // Another process finished it while we waited for its lock.
                        None => Outcome::Cached,
                    };
                    settle(&mut outcome, events, ix, &name, o);
                }
                Err(NodeError::Cancelled) => settle(&mut outcome, events, ix, &name, Outcome::Cancelled),
                Err(e) => settle(&mut outcome, events, ix, &name, Outcome::Failed { error: e.to_string() }),
            }
        }
    });
    let outcomes = order
        .iter()
        .map(|ix| (graph.dag[*ix].name().to_string(), outcome.remove(ix).unwrap_or(Outcome::Cancelled)))
        .collect();
    Summary { outcomes }
}

fn settle(
    outcome: &mut HashMap<NodeIndex, Outcome>,
    events: &dyn EventSink,
    ix: NodeIndex,
    name: &str,
    o: Outcome,
) {
    events.event(Event::Finished { node: name.to_string(), outcome: o.clone() });
    outcome.insert(ix, o);
}

/// Computes `job` under its key's lock and commits it: the one place a store entry is written.
/// Returns the entry and the seconds it took, or `None` when another process had committed it
/// while we waited for the lock (`force` recomputes regardless).
pub fn compute(
    job: &Job,
    entries: Vec<(String, Entry)>,
    store: &Store,
    runner: &dyn NodeRunner,
    events: &dyn EventSink,
    cancel: &Cancel,
    force: bool,
) -> Result<(Entry, Option<f64>), NodeError> {
    let canonical = job.key_value();
    let key = crate::graph::CacheKey::of(&canonical);
    if key.hex() != job.key {
        return Err(NodeError::Failed(format!(
            "the job's key {} does not match its contents ({}): it was edited or made by another version",
            job.key,
            key.hex()
        )));
    }
    // Another process may be computing the same key: wait for it, then use its result.
    let _lock = store.lock(&key)?;
    if !force {
        if let Lookup::Hit(e) = store.get(&key)? {
            let _ = store.remove_checkpoint(&key);
            return Ok((e, None));
        }
    }
    let pending = if force { store.begin(&key)?.replacing() } else { store.begin(&key)? };
    let checkpoint = store.checkpoint_path(&key)?;
    if force {
        // Recompute means from the start.
        store.remove_checkpoint(&key)?;
    }
    let resume = runner.resuming(job, &checkpoint);
    events.event(Event::Started {
        node: job.name.clone(),
        key: key.hex(),
        device: job.device.clone(),
        resume,
    });
    let t0 = Instant::now();
    let task = Task { job, entries, out_dir: pending.dir().to_path_buf(), cancel, events, checkpoint };
    let out = runner.run(&task)?;
    cancel.check()?;
    let seconds = t0.elapsed().as_secs_f64();
    let mut metrics = out.metrics;
    if let Value::Object(m) = &mut metrics {
        m.entry("wall_seconds").or_insert(seconds.into());
    }
    let entry = pending.commit(&job.name, &job.kind, canonical.clone(), metrics)?;
    store.record(&Store::index_name(&job.experiment, &job.name), &key, &canonical)?;
    // Committed: the progress it kept is the entry now. (One that cannot be removed is
    // harmless: a committed key never reads it, and the next lookup or `gc` tries again.)
    let _ = store.remove_checkpoint(&key);
    Ok((entry, Some(seconds)))
}

pub mod sinks;
pub mod slurm;

#[cfg(test)]
mod tests;
