//! exec: run a graph's nodes — ready nodes in parallel, failures contained, results stored.
//!
//! Architecture invariants: a node's result becomes visible only when [`Store`] commits it, so an
//! interrupted or failed node leaves nothing behind and the next run resumes with exactly the
//! unfinished nodes; a failing node stops its dependants only; what a node does is behind
//! [`NodeRunner`], and everything it reports goes through one [`EventSink`].

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use petgraph::graph::NodeIndex;
use serde_json::Value;

use crate::graph::{CacheKey, Graph, Vertex};
use crate::spec::{Experiment, Node};
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

/// What a node reports while it runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Started {
        node: String,
        key: String,
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

/// An input of a job: a node's stored result, or a dataset by name.
#[derive(Clone, Debug)]
pub enum Input {
    Node { name: String, entry: Entry },
    Dataset { name: String },
}

/// One node instance to compute.
pub struct Job<'a> {
    pub exp: &'a Experiment,
    pub node: &'a Node,
    pub key: &'a CacheKey,
    /// Inputs by role (`teacher`, `data`, `rows/0` ...), as the graph linked them.
    pub inputs: Vec<(String, Input)>,
    /// Write the result's files here; they are committed to the store when `run` returns Ok.
    pub out_dir: PathBuf,
    pub cancel: &'a Cancel,
    pub events: &'a dyn EventSink,
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
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Computes node instances of the kinds it knows.
pub trait NodeRunner: Sync {
    fn run(&self, job: &Job<'_>) -> Result<NodeOutput, NodeError>;
}

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Nodes run at once (at least 1).
    pub jobs: usize,
    /// Run only these nodes (names or declared names); their inputs must be cached.
    pub only: Vec<String>,
    /// Rerun these nodes and everything downstream of them.
    pub from: Vec<String>,
    /// Rerun these nodes even if cached.
    pub force: Vec<String>,
    /// Nodes that use the device (train, finetune, distill, evaluate, generate) run at most this
    /// many at once; 0 means `jobs`. Reports and plugins only need a job slot.
    pub device_slots: usize,
}

#[derive(Clone, Debug, PartialEq)]
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

fn matches(node: &Node, names: &[String]) -> bool {
    names.iter().any(|n| *n == node.name || *n == node.base)
}

/// Runs the nodes of `graph` that are not cached.
pub fn run(
    exp: &Experiment,
    graph: &Graph,
    store: &Store,
    runner: &dyn NodeRunner,
    opts: &RunOptions,
    events: &dyn EventSink,
    cancel: &Cancel,
) -> Summary {
    let nodes: HashMap<&str, &Node> = exp.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let order: Vec<NodeIndex> = graph.node_order().collect();
    // --force: the named nodes; --from: the named nodes and everything downstream of them.
    let mut forced: HashSet<NodeIndex> = HashSet::new();
    let mut stack: Vec<NodeIndex> = Vec::new();
    for &ix in &order {
        let node = nodes[graph.dag[ix].name()];
        if matches(node, &opts.force) {
            forced.insert(ix);
        }
        if matches(node, &opts.from) {
            stack.push(ix);
        }
    }
    while let Some(ix) = stack.pop() {
        if forced.insert(ix) || matches(nodes[graph.dag[ix].name()], &opts.from) {
            stack
                .extend(graph.dag.neighbors_directed(ix, petgraph::Outgoing).filter(|d| !forced.contains(d)));
        }
    }
    let selected = |ix: NodeIndex| opts.only.is_empty() || matches(nodes[graph.dag[ix].name()], &opts.only);

    let mut outcome: HashMap<NodeIndex, Outcome> = HashMap::new();
    let mut entries: HashMap<NodeIndex, Entry> = HashMap::new();
    let mut running = 0usize;
    let mut in_flight: HashSet<NodeIndex> = HashSet::new();
    let slots = if opts.device_slots == 0 { opts.jobs.max(1) } else { opts.device_slots };
    let mut on_device = 0usize;
    let uses_device = |node: &Node| {
        !matches!(node.kind, crate::spec::NodeKind::Report(_) | crate::spec::NodeKind::Plugin(_))
    };
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
                    let node = nodes[name.as_str()];
                    let key = graph.key(ix);
                    // Inputs: all node inputs must have an outcome with an entry.
                    let mut inputs = Vec::new();
                    let mut waiting = false;
                    let mut blocked: Option<String> = None;
                    for (role, t) in graph.inputs.get(&ix).into_iter().flatten() {
                        match &graph.dag[*t] {
                            Vertex::Dataset { name } => {
                                inputs.push((role.clone(), Input::Dataset { name: name.clone() }))
                            }
                            Vertex::Node { name: tn, .. } => match (outcome.get(t), entries.get(t)) {
                                (Some(_), Some(e)) => inputs
                                    .push((role.clone(), Input::Node { name: tn.clone(), entry: e.clone() })),
                                (Some(o), None) => {
                                    let why = match o {
                                        Outcome::Skipped => format!("{tn} (not cached, not selected)"),
                                        _ => tn.clone(),
                                    };
                                    blocked.get_or_insert(why);
                                }
                                (None, _) => waiting = true,
                            },
                        }
                    }
                    // Not selected (--only): cached or skipped, whatever its inputs did.
                    if !selected(ix) && (blocked.is_some() || waiting) {
                        let o = if store.contains(key) { Outcome::Cached } else { Outcome::Skipped };
                        if o == Outcome::Cached {
                            if let Ok(Lookup::Hit(e)) = store.get(key) {
                                entries.insert(ix, e);
                            }
                        }
                        settle(&mut outcome, events, ix, &name, o);
                        launched_or_settled = true;
                        continue;
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
                    // Cached (verified), or skipped when not selected.
                    if !forced.contains(&ix) || !selected(ix) {
                        match store.get(key) {
                            Ok(Lookup::Hit(e)) => {
                                entries.insert(ix, e);
                                settle(&mut outcome, events, ix, &name, Outcome::Cached);
                                launched_or_settled = true;
                                continue;
                            }
                            Ok(Lookup::Corrupt { reason }) => events.event(Event::Warning {
                                node: name.clone(),
                                message: format!("cached result was corrupt ({reason}); recomputing"),
                            }),
                            Ok(Lookup::Miss) => {}
                            Err(e) => {
                                settle(
                                    &mut outcome,
                                    events,
                                    ix,
                                    &name,
                                    Outcome::Failed { error: e.to_string() },
                                );
                                launched_or_settled = true;
                                continue;
                            }
                        }
                        if !selected(ix) {
                            settle(&mut outcome, events, ix, &name, Outcome::Skipped);
                            launched_or_settled = true;
                            continue;
                        }
                    }
                    if running >= jobs || (uses_device(node) && on_device >= slots) {
                        continue;
                    }
                    // Launch.
                    running += 1;
                    on_device += uses_device(node) as usize;
                    in_flight.insert(ix);
                    let tx = tx.clone();
                    let force = forced.contains(&ix);
                    scope.spawn(move || {
                        // A panic anywhere in the node (its runner, a rayon task inside it, the
                        // store) is that node's failure: the worker always answers, so the
                        // scheduler never waits for a result that cannot come, and the panicking
                        // node's pending entry is dropped uncommitted.
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            compute(exp, node, key, inputs, store, runner, events, cancel, force, graph, ix)
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
            on_device -= uses_device(nodes[name.as_str()]) as usize;
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

#[allow(clippy::too_many_arguments)]
fn compute(
    exp: &Experiment,
    node: &Node,
    key: &CacheKey,
    inputs: Vec<(String, Input)>,
    store: &Store,
    runner: &dyn NodeRunner,
    events: &dyn EventSink,
    cancel: &Cancel,
    force: bool,
    graph: &Graph,
    ix: NodeIndex,
) -> Result<(Entry, Option<f64>), NodeError> {
    // Another process may be computing the same key: wait for it, then use its result.
    let _lock = store.lock(key)?;
    if !force {
        if let Lookup::Hit(e) = store.get(key)? {
            return Ok((e, None));
        }
    }
    let pending = if force { store.begin(key)?.replacing() } else { store.begin(key)? };
    events.event(Event::Started { node: node.name.clone(), key: key.hex() });
    let t0 = Instant::now();
    let job = Job { exp, node, key, inputs, out_dir: pending.dir().to_path_buf(), cancel, events };
    let out = runner.run(&job)?;
    cancel.check()?;
    let seconds = t0.elapsed().as_secs_f64();
    let canonical = graph.canonical[&ix].clone();
    let mut metrics = out.metrics;
    if let Value::Object(m) = &mut metrics {
        m.entry("wall_seconds").or_insert(seconds.into());
    }
    let entry = pending.commit(&node.name, node.kind.name(), canonical.clone(), metrics)?;
    store.record(&Store::index_name(&exp.name, &node.name), key, &canonical)?;
    Ok((entry, Some(seconds)))
}

pub mod sinks;

#[cfg(test)]
mod tests;
