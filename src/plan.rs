//! plan: for each node, whether it would run and why — a pure function of the graph and what the
//! artifact store holds.
//!
//! Architecture invariant: planning never runs, reads or writes anything; `run` executes a plan.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use crate::graph::{CacheKey, Graph, Vertex};

/// What the artifact store knows, as far as planning needs it.
pub trait StoreIndex {
    /// Whether a complete, verified result for this key exists.
    fn contains(&self, key: &CacheKey) -> bool;
    /// The canonical settings of the last result recorded for this node name, if any.
    fn last_recorded(&self, node: &str) -> Option<Value>;
}

/// A store that holds nothing (no store yet, or `--force` for everything).
pub struct EmptyStore;

impl StoreIndex for EmptyStore {
    fn contains(&self, _: &CacheKey) -> bool {
        false
    }
    fn last_recorded(&self, _: &str) -> Option<Value> {
        None
    }
}

/// An in-memory index (what a store directory loads into; also handy in tests).
#[derive(Default)]
pub struct MemoryStore {
    pub keys: std::collections::HashSet<CacheKey>,
    pub recorded: HashMap<String, Value>,
}

impl StoreIndex for MemoryStore {
    fn contains(&self, key: &CacheKey) -> bool {
        self.keys.contains(key)
    }
    fn last_recorded(&self, node: &str) -> Option<Value> {
        self.recorded.get(node).cloned()
    }
}

/// Why a node would run.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// Nothing was ever recorded for this node.
    NoEntry,
    /// A setting differs from the last recorded result.
    ParamChanged { path: String, old: Value, new: Value },
    /// An input (node or dataset) has a different key than last time.
    InputChanged { input: String },
    /// Asked for with `--force`.
    Forced,
    /// Downstream of (or named by) `--from`.
    From { node: String },
    /// Computed by a Slurm job nobody watched (`run --detach`): `status` forwards what it
    /// reported (terminal, MLflow); nothing is computed again.
    Unreported,
}

impl Reason {
    /// Runs even if cached (`--force`, `--from`).
    pub fn is_forced(&self) -> bool {
        matches!(self, Reason::Forced | Reason::From { .. })
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::NoEntry => f.write_str("no cached result"),
            Reason::ParamChanged { path, old, new } => write!(f, "{path} changed: {old} -> {new}"),
            Reason::InputChanged { input } => write!(f, "input `{input}` changed"),
            Reason::Forced => f.write_str("forced"),
            Reason::Unreported => f.write_str("finished on Slurm unwatched: reporting it"),
            Reason::From { node } if node.is_empty() => f.write_str("--from"),
            Reason::From { node } => write!(f, "downstream of `{node}` (--from)"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    Run {
        reasons: Vec<Reason>,
    },
    Cached,
    /// Not selected (`--only`) and not cached: not run, and what reads it is blocked.
    Skipped,
}

/// Which nodes a run is about: full instance names (the CLI resolves selectors once).
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Run only these (their inputs must be cached); empty: all.
    pub only: Vec<String>,
    /// Rerun these and everything downstream of them.
    pub from: Vec<String>,
    /// Rerun these even if cached.
    pub force: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanEntry {
    pub node: String,
    pub kind: &'static str,
    pub key: String,
    #[serde(flatten)]
    pub status: Status,
    /// What resolving decided that the spec does not spell out (`head: new: ...`), for people.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Plans every node of `graph` in topological order for `sel`: `run` executes exactly this.
pub fn plan(graph: &Graph, store: &dyn StoreIndex, sel: &Selection) -> Vec<PlanEntry> {
    use std::collections::HashSet;
    fn set(v: &[String]) -> HashSet<&str> {
        v.iter().map(String::as_str).collect()
    }
    let (only, from, force) = (set(&sel.only), set(&sel.from), set(&sel.force));
    // --from: the named nodes and everything downstream of them, each with the node it is from.
    let mut from_of: HashMap<petgraph::graph::NodeIndex, String> = HashMap::new();
    for ix in graph.node_order() {
        let name = graph.dag[ix].name();
        if from.contains(name) {
            from_of.insert(ix, String::new());
            continue;
        }
        let up = graph.inputs.get(&ix).into_iter().flatten().find_map(|(_, t)| {
            from_of.get(t).map(|f| if f.is_empty() { graph.dag[*t].name().to_string() } else { f.clone() })
        });
        if let Some(f) = up {
            from_of.insert(ix, f);
        }
    }
    let mut out = Vec::new();
    for ix in graph.node_order() {
        let Vertex::Node { name, kind } = &graph.dag[ix] else {
            continue;
        };
        let key = graph.key(ix);
        let selected = only.is_empty() || only.contains(name.as_str());
        let mut forced = Vec::new();
        if force.contains(name.as_str()) {
            forced.push(Reason::Forced);
        }
        if let Some(f) = from_of.get(&ix) {
            forced.push(Reason::From { node: f.clone() });
        }
        let status = if !selected {
            if store.contains(key) { Status::Cached } else { Status::Skipped }
        } else if !forced.is_empty() {
            Status::Run { reasons: forced }
        } else if store.contains(key) {
            Status::Cached
        } else {
            let reasons = match store.last_recorded(name) {
                None => vec![Reason::NoEntry],
                Some(old) => explain(graph, ix, &old, &graph.canonical[&ix]),
            };
            Status::Run { reasons }
        };
        let notes = graph.jobs.get(&ix).map(|j| j.notes()).unwrap_or_default();
        out.push(PlanEntry { node: name.clone(), kind, key: key.hex(), status, notes });
    }
    out
}

/// What differs between the recorded canonical settings and the current ones.
fn explain(graph: &Graph, ix: petgraph::graph::NodeIndex, old: &Value, new: &Value) -> Vec<Reason> {
    let mut diffs = Vec::new();
    diff("", old, new, &mut diffs);
    // Each role's first input, by role (`teacher`, `rows/3`): a report has a role per row, so
    // look them up rather than scan them once per difference.
    let mut by_role: HashMap<&str, &str> = HashMap::new();
    for (role, t) in graph.inputs.get(&ix).into_iter().flatten() {
        by_role.entry(role.as_str()).or_insert_with(|| graph.dag[*t].name());
    }
    let mut reasons = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (path, o, n) in diffs {
        // Inputs hash to `inputs.<role>`: report them as the input that changed.
        if let Some(rest) = path.strip_prefix("inputs.") {
            let role = rest.split('.').next().unwrap_or(rest);
            let input = by_role.get(role).copied().unwrap_or(role).to_string();
            if seen.insert(input.clone()) {
                reasons.push(Reason::InputChanged { input });
            }
        } else {
            // `work.train.loop.trainer.epochs` -> `loop.trainer.epochs`.
            let path = match path.strip_prefix("work.") {
                Some(rest) => rest.split_once('.').map_or(rest, |x| x.1).to_string(),
                None => path,
            };
            reasons.push(Reason::ParamChanged { path, old: o, new: n });
        }
    }
    if reasons.is_empty() {
        // Same settings, yet no entry: the result was removed (gc) or never finished.
        reasons.push(Reason::NoEntry);
    }
    reasons
}

fn diff(path: &str, old: &Value, new: &Value, out: &mut Vec<(String, Value, Value)>) {
    let join = |k: &str| {
        if path.is_empty() { k.to_string() } else { format!("{path}.{k}") }
    };
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let o = a.get(k).unwrap_or(&Value::Null);
                let n = b.get(k).unwrap_or(&Value::Null);
                diff(&join(k), o, n, out);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (o, n)) in a.iter().zip(b).enumerate() {
                diff(&join(&i.to_string()), o, n, out);
            }
        }
        (o, n) if o != n => out.push((path.to_string(), o.clone(), n.clone())),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{graph, spec};

    const SPEC: &str = "
datasets: { d: { source: builtin/digits }, e: { source: builtin/digits, per_class: 5 } }
models: { m: { arch: mlp, hidden: [8] } }
nodes:
  teacher: { train: { model: m, data: d, epochs: 3 } }
  student: { finetune: { from: teacher, data: e } }
";

    fn build(text: &str) -> graph::Graph {
        let exp = spec::load_str(std::path::Path::new("t.yaml"), text).unwrap();
        crate::resolve::build(&exp, &graph::spec_fingerprint, &crate::resolve::path_digest).unwrap()
    }

    /// A store that holds the results of `g`, as a finished run leaves it.
    fn store_of(g: &graph::Graph) -> MemoryStore {
        let mut s = MemoryStore::default();
        for ix in g.node_order() {
            s.keys.insert(g.key(ix).clone());
            s.recorded.insert(g.dag[ix].name().to_string(), g.canonical[&ix].clone());
        }
        s
    }

    fn statuses(entries: &[PlanEntry]) -> Vec<(String, Status)> {
        entries.iter().map(|e| (e.node.clone(), e.status.clone())).collect()
    }

    #[test]
    fn explains_each_reason() {
        let old = build(SPEC);
        let store = store_of(&old);
        // Nothing changed: all cached.
        let same = plan(&old, &store, &Selection::default());
        assert!(same.iter().all(|e| e.status == Status::Cached));
        // A setting changed: that node says which, its dependant says its input changed.
        let new = build(&SPEC.replace("epochs: 3", "epochs: 4"));
        let got = statuses(&plan(&new, &store, &Selection::default()));
        let param = Reason::ParamChanged { path: "loop.trainer.epochs".into(), old: 3.into(), new: 4.into() };
        assert_eq!(got[0], ("teacher".into(), Status::Run { reasons: vec![param] }));
        let input = Reason::InputChanged { input: "teacher".into() };
        assert_eq!(got[1], ("student".into(), Status::Run { reasons: vec![input] }));
        // Forced, and never seen.
        let got = statuses(&plan(
            &old,
            &EmptyStore,
            &Selection { force: vec!["student".into()], ..Selection::default() },
        ));
        assert_eq!(got[0].1, Status::Run { reasons: vec![Reason::NoEntry] });
        assert_eq!(got[1].1, Status::Run { reasons: vec![Reason::Forced] });
    }

    #[test]
    fn a_changed_report_row_names_that_row_not_the_first() {
        let spec = format!(
            "{SPEC}  other: {{ train: {{ model: m, data: e, epochs: 2 }} }}\n  table: {{ report: {{ rows: [student, {{ node: other, label: o }}] }} }}\n"
        );
        let old = build(&spec);
        let store = store_of(&old);
        let new = build(&spec.replace("epochs: 2", "epochs: 5"));
        let got = statuses(&plan(&new, &store, &Selection::default()));
        let table = got.iter().find(|(n, _)| n == "table").unwrap();
        assert_eq!(table.1, Status::Run { reasons: vec![Reason::InputChanged { input: "other".into() }] });
    }

    #[test]
    fn a_dataset_change_is_an_input_change() {
        let old = build(SPEC);
        let store = store_of(&old);
        let new = build(&SPEC.replace("per_class: 5", "per_class: 6"));
        let got = statuses(&plan(&new, &store, &Selection::default()));
        assert_eq!(got[0].1, Status::Cached);
        assert_eq!(got[1].1, Status::Run { reasons: vec![Reason::InputChanged { input: "e".into() }] });
    }
}
