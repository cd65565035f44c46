//! Where run events go: the terminal (throttled log lines) and the run tracker (local run
//! store, pushed to MLflow when a tracking URI is set). Nodes never talk to either directly.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Event, EventSink, Outcome};
use crate::graph::Graph;
use crate::spec::Experiment;
use crate::track::{Metric, NodeRun, RunId, RunStatus, Tracker, now_ms};

/// Every event to every sink.
pub struct Fanout<'a>(pub Vec<&'a dyn EventSink>);

impl EventSink for Fanout<'_> {
    fn event(&self, e: Event) {
        for s in &self.0 {
            s.event(e.clone());
        }
    }
}

/// The terminal: a progress bar per running node (epoch, step, loss, images/s, ETA) when stderr
/// is a terminal; otherwise plain log lines, progress at most every `every` per node.
pub struct Terminal {
    every: Duration,
    last: Mutex<HashMap<String, Instant>>,
    bars: Option<(indicatif::MultiProgress, Mutex<HashMap<String, indicatif::ProgressBar>>)>,
}

impl Terminal {
    pub fn new(every: Duration) -> Terminal {
        use std::io::IsTerminal;
        let bars = std::io::stderr()
            .is_terminal()
            .then(|| (indicatif::MultiProgress::new(), Mutex::new(HashMap::new())));
        Terminal { every, last: Mutex::new(HashMap::new()), bars }
    }

    fn line(&self, text: &str) {
        match &self.bars {
            Some((m, _)) => {
                let _ = m.println(text);
            }
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            }
        }
    }
}

impl EventSink for Terminal {
    fn event(&self, e: Event) {
        match e {
            Event::Started { node, key, device, resume } => {
                // The device only where it says something (which GPU); CPU runs stay as they were.
                let on = if device == "cpu" { String::new() } else { format!(" on {device}") };
                let from = resume.map(|at| format!("  (resuming from {at})")).unwrap_or_default();
                self.line(&format!("  start   {node}  ({}){on}{from}", &key[..12]));
                if let Some((m, bars)) = &self.bars {
                    let style = indicatif::ProgressStyle::with_template(
                        "  {prefix:<24} [{bar:30}] {pos}/{len} steps  {msg}  eta {eta}",
                    )
                    .expect("valid template")
                    .progress_chars("=> ");
                    let bar =
                        m.add(indicatif::ProgressBar::new(0).with_style(style).with_prefix(node.clone()));
                    bars.lock().expect("lock").insert(node, bar);
                }
            }
            Event::Progress { node, epoch, epochs, step, steps, loss, images_per_second } => {
                if let Some((_, bars)) = &self.bars {
                    if let Some(bar) = bars.lock().expect("lock").get(&node) {
                        bar.set_length(steps * epochs as u64);
                        bar.set_position((epoch as u64 - 1) * steps + step);
                        bar.set_message(format!(
                            "epoch {epoch}/{epochs}  loss {loss:.4}  {images_per_second:.0} img/s"
                        ));
                    }
                    return;
                }
                let mut last = self.last.lock().expect("lock");
                let now = Instant::now();
                let due = last.get(&node).is_none_or(|t| now.duration_since(*t) >= self.every);
                if due || (step == steps && epoch == epochs) {
                    last.insert(node.clone(), now);
                    self.line(&format!(
                        "          {node}  epoch {epoch}/{epochs}  step {step}/{steps}  loss {loss:.4}  {images_per_second:.0} img/s"
                    ));
                }
            }
            Event::Status { node, done, total, message } => {
                // On a node's bar when it has one; a node not started yet (a queued Slurm job)
                // gets a line.
                if let Some((_, bars)) = &self.bars
                    && let Some(bar) = bars.lock().expect("lock").get(&node)
                {
                    bar.set_length(total);
                    bar.set_position(done);
                    bar.set_message(message);
                    return;
                }
                let mut last = self.last.lock().expect("lock");
                let now = Instant::now();
                let due = last.get(&node).is_none_or(|t| now.duration_since(*t) >= self.every);
                if due || done == total {
                    last.insert(node.clone(), now);
                    // `total` 0: a state, not a count (a Slurm job's `pending`).
                    if total == 0 {
                        self.line(&format!("          {node}  {message}"));
                    } else {
                        self.line(&format!("          {node}  {done}/{total}  {message}"));
                    }
                }
            }
            Event::Warning { node, message } => self.line(&format!("  warning {node}: {message}")),
            Event::Finished { node, outcome } => {
                if let Some((m, bars)) = &self.bars {
                    if let Some(bar) = bars.lock().expect("lock").remove(&node) {
                        bar.finish_and_clear();
                        m.remove(&bar);
                    }
                }
                let line = match outcome {
                    Outcome::Done { seconds } => format!("  done    {node}  {seconds:.1} s"),
                    Outcome::Cached => format!("  cached  {node}"),
                    Outcome::Failed { error } => format!("  FAILED  {node}: {error}"),
                    Outcome::Blocked { by } => format!("  blocked {node} (input {by} did not finish)"),
                    Outcome::Cancelled => format!("  stopped {node} (interrupted; it reruns next time)"),
                    Outcome::Skipped => return,
                };
                self.line(&line);
            }
            Event::Metric { .. } => {}
        }
    }
}

/// Records every node as a run (nested under one run for the invocation).
pub struct Tracking<'a> {
    tracker: &'a Tracker,
    store: &'a crate::store::Store,
    exp: &'a Experiment,
    graph: &'a Graph,
    parent: RunId,
    runs: Mutex<HashMap<String, RunId>>,
    /// Each instance's declared name and kind (looked up once per event).
    nodes: HashMap<&'a str, (&'a str, &'static str)>,
    /// A device's model name by its spelling (`cuda:1` -> `NVIDIA H200`), for the runs' tags.
    device_names: HashMap<String, String>,
}

impl<'a> Tracking<'a> {
    pub fn new(
        tracker: &'a Tracker,
        store: &'a crate::store::Store,
        exp: &'a Experiment,
        graph: &'a Graph,
        parent: RunId,
    ) -> Tracking<'a> {
        let nodes = exp.nodes.iter().map(|n| (n.name.as_str(), (n.base.as_str(), n.kind.name()))).collect();
        let device_names = HashMap::new();
        Tracking { tracker, store, exp, graph, parent, runs: Mutex::new(HashMap::new()), nodes, device_names }
    }

    /// Name the devices nodes may run on (`cuda:1` -> `NVIDIA H200`): a run on one is tagged
    /// `distillery.gpu` with its name.
    pub fn with_device_names(mut self, names: HashMap<String, String>) -> Self {
        self.device_names = names;
        self
    }

    /// The node's stored result (read, and so verified, once for its artifacts and metrics).
    fn entry(&self, node: &str) -> Option<crate::store::Entry> {
        let ix = self.graph.get(node)?;
        match self.store.get(self.graph.key(ix)) {
            Ok(crate::store::Lookup::Hit(entry)) => Some(entry),
            _ => None,
        }
    }

    /// The result's files people open (checkpoint, model info, metrics, history, tables).
    fn log_artifacts(&self, entry: &crate::store::Entry, run: &RunId) {
        for f in &entry.manifest.files {
            if let Err(e) = self.tracker.log_artifact(run, &entry.file(&f.path), &f.path) {
                self.warn("log artifact", e);
            }
        }
    }

    /// `device`: where it ran (`cuda:1`); `None` for a cached node (the experiment's setting).
    fn node_run<R>(&self, node: &str, device: Option<&str>, f: impl FnOnce(&NodeRun<'_>) -> R) -> Option<R> {
        let ix = self.graph.get(node)?;
        // Node instances only (a teacher's outputs are not a run of their own).
        let (base, kind) = self.nodes.get(node)?;
        let key = self.graph.key(ix).hex();
        // Params as people read them: the work's settings by their spec names, inputs by name
        // beside their keys.
        let names: Vec<(String, String)> = self
            .graph
            .jobs
            .get(&ix)
            .map(|j| j.inputs.iter().map(|i| (i.role.clone(), i.name.clone())).collect())
            .unwrap_or_default();
        let config = crate::track::readable(&self.graph.canonical[&ix], &names);
        let device = device.map_or_else(|| self.exp.device.to_string(), str::to_string);
        let mut tags = vec![("distillery.base".to_string(), base.to_string())];
        // Which GPU: its name beside the index (`distillery.device` is `cuda:1`).
        if let Some(name) = self.device_names.get(&device) {
            tags.push(("distillery.gpu".to_string(), name.clone()));
        }
        Some(f(&NodeRun {
            node_name: node,
            kind,
            cache_key: &key,
            config: &config,
            device: &device,
            tags: &tags,
        }))
    }

    /// The stored result's final metrics (accuracy, costs, what a report evaluated), as metric
    /// points of the node's run.
    fn final_metrics(entry: Option<&crate::store::Entry>) -> Vec<Metric> {
        let Some(entry) = entry else { return Vec::new() };
        let t = now_ms();
        crate::track::final_metrics(&entry.manifest.metrics)
            .into_iter()
            .map(|(key, value)| Metric { key, value, step: 0, timestamp_ms: t })
            .collect()
    }

    fn warn(&self, what: &str, e: impl std::fmt::Display) {
        // Not eprintln!: it panics when stderr is a closed pipe (`run ... 2>&1 | head`).
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), "  warning: tracking: {what}: {e}");
    }
}

impl EventSink for Tracking<'_> {
    fn event(&self, e: Event) {
        match e {
            Event::Started { node, key, device, resume } => {
                // Continuing from a checkpoint: the interrupted run of this key goes on (the same
                // MLflow run), when there is one; otherwise a new run, as for a fresh start.
                if let Some(at) = resume
                    && self.nodes.contains_key(node.as_str())
                {
                    match self.tracker.resume_node_run(&key, &at) {
                        Ok(Some(id)) => {
                            self.runs.lock().expect("lock").insert(node, id);
                            return;
                        }
                        Ok(None) => {}
                        Err(e) => self.warn("resume run", e),
                    }
                }
                match self.node_run(&node, Some(&device), |r| self.tracker.start_node_run(&self.parent, r)) {
                    Some(Ok(id)) => {
                        self.runs.lock().expect("lock").insert(node, id);
                    }
                    Some(Err(e)) => self.warn("start run", e),
                    None => {}
                }
            }
            Event::Metric { node, name, value, step } => {
                if let Some(id) = self.runs.lock().expect("lock").get(&node) {
                    let m = Metric { key: name, value, step: step as i64, timestamp_ms: now_ms() };
                    if let Err(e) = self.tracker.log_metrics(id, &[m]) {
                        self.warn("log metric", e);
                    }
                }
            }
            Event::Finished { node, outcome } => {
                if outcome == Outcome::Cached {
                    let key = self.graph.get(&node).map(|ix| self.graph.key(ix).hex()).unwrap_or_default();
                    if let Ok(Some(original)) = self.tracker.find_run_by_cache_key(&key) {
                        let metrics = Self::final_metrics(self.entry(&node).as_ref());
                        if let Some(Err(e)) = self.node_run(&node, None, |r| {
                            self.tracker.log_cached(&self.parent, r, &original, &metrics)
                        }) {
                            self.warn("log cached run", e);
                        }
                    }
                    return;
                }
                let Some(id) = self.runs.lock().expect("lock").remove(&node) else { return };
                if matches!(outcome, Outcome::Done { .. }) {
                    let entry = self.entry(&node);
                    if let Some(e) = &entry {
                        self.log_artifacts(e, &id);
                    }
                    let metrics = Self::final_metrics(entry.as_ref());
                    if let Err(e) = self.tracker.log_metrics(&id, &metrics) {
                        self.warn("log final metrics", e);
                    }
                }
                let status = match outcome {
                    Outcome::Done { .. } => RunStatus::Finished,
                    Outcome::Cancelled => RunStatus::Killed,
                    _ => RunStatus::Failed,
                };
                if let Err(e) = self.tracker.end_run(&id, status) {
                    self.warn("end run", e);
                }
            }
            Event::Progress { .. } | Event::Warning { .. } | Event::Status { .. } => {}
        }
    }
}
