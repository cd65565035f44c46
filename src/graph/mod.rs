//! graph: an [`Experiment`] -> a DAG of datasets and node instances, with cache keys.
//!
//! Architecture invariant: building the graph does no I/O. Dataset content fingerprints come in
//! through a function the caller gives (the data layer computes them; [`spec_fingerprint`] hashes
//! the dataset's settings alone). Every reference is checked here, and every cycle is reported
//! with its whole path, before anything runs.

mod key;
mod render;

use std::collections::{BTreeMap, HashMap};

use petgraph::graph::{DiGraph, NodeIndex};

pub use key::{CacheKey, FORMAT_VERSION, canonical_json, spec_fingerprint};
pub use render::{to_dot, to_mermaid};

use crate::diag::{Code, Diagnostic, did_you_mean};
use crate::spec::{DatasetSpec, Experiment, Target, Want};

/// A vertex: a dataset selection or a node instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vertex {
    Dataset { name: String },
    Node { name: String, kind: &'static str },
}

impl Vertex {
    pub fn name(&self) -> &str {
        match self {
            Vertex::Dataset { name } | Vertex::Node { name, .. } => name,
        }
    }
}

/// The experiment as a DAG: edges go from an input to the vertex that reads it.
#[derive(Debug)]
pub struct Graph {
    pub dag: DiGraph<Vertex, ()>,
    /// Every vertex, inputs before the vertices that read them; ties keep declaration order.
    pub order: Vec<NodeIndex>,
    /// Cache key of every vertex (datasets: their fingerprint).
    pub keys: HashMap<NodeIndex, CacheKey>,
    /// The canonical JSON each node's key hashes (what `plan` diffs to explain a rerun).
    pub canonical: HashMap<NodeIndex, serde_json::Value>,
    /// Node inputs by role, e.g. `teacher` -> `teacher_ft[seed=0]` (for plan explanations).
    pub inputs: HashMap<NodeIndex, Vec<(String, NodeIndex)>>,
    index: HashMap<String, NodeIndex>,
}

impl Graph {
    pub fn get(&self, name: &str) -> Option<NodeIndex> {
        self.index.get(name).copied()
    }

    pub fn key(&self, ix: NodeIndex) -> &CacheKey {
        &self.keys[&ix]
    }

    /// Node instances (not datasets), in topological order.
    pub fn node_order(&self) -> impl Iterator<Item = NodeIndex> + '_ {
        self.order.iter().copied().filter(|ix| matches!(self.dag[*ix], Vertex::Node { .. }))
    }
}

/// Builds the graph of `exp`; `fingerprint` gives each dataset's content fingerprint.
pub fn build(
    exp: &Experiment,
    fingerprint: &dyn Fn(&str, &DatasetSpec) -> Result<CacheKey, String>,
) -> Result<Graph, Vec<Diagnostic>> {
    let mut dag: DiGraph<Vertex, ()> = DiGraph::new();
    let mut index: HashMap<String, NodeIndex> = HashMap::new();
    for name in exp.datasets.keys() {
        let ix = dag.add_node(Vertex::Dataset { name: name.clone() });
        index.insert(name.clone(), ix);
    }
    // Instances of each declared node, for references by declared name.
    let mut by_base: BTreeMap<&str, Vec<NodeIndex>> = BTreeMap::new();
    for node in &exp.nodes {
        let ix = dag.add_node(Vertex::Node { name: node.name.clone(), kind: node.kind.name() });
        index.insert(node.name.clone(), ix);
        by_base.entry(node.base.as_str()).or_default().push(ix);
    }

    let mut diags = Vec::new();
    let mut inputs: HashMap<NodeIndex, Vec<(String, NodeIndex)>> = HashMap::new();
    for node in &exp.nodes {
        let me = index[&node.name];
        // Inputs already linked to this node (petgraph's update_edge scans the input's edges:
        // quadratic for a dataset read by thousands of nodes).
        let mut linked: std::collections::HashSet<NodeIndex> = std::collections::HashSet::new();
        for r in node.kind.refs() {
            if exp.invalid.contains(&r.name) {
                continue; // reported by the spec layer already
            }
            let path = format!("{}{}", node.spec_path(), r.pointer.replace('/', "."));
            let role = r.pointer.trim_start_matches('/').to_string();
            let missing = |what: &str, candidates: Vec<&str>, hint: Option<String>| {
                let help = match (did_you_mean(&r.name, candidates.iter().copied()), hint) {
                    (_, Some(h)) => h,
                    (Some(s), None) => format!("did you mean `{s}`?"),
                    (None, None) if candidates.is_empty() => {
                        format!("declare a {what} named `{}`", r.name)
                    }
                    (None, None) => format!("known {what}s: {}", candidates.join(", ")),
                };
                Diagnostic::new(Code::MissingReference, &path, format!("no {what} named `{}`", r.name))
                    .with_node(&node.name)
                    .with_help(help)
                    .at(exp.locate_value(&path))
            };
            match r.target {
                Target::Dataset => match exp.datasets.get_index_of(&r.name) {
                    Some(_) => {
                        let d = index[&r.name];
                        if linked.insert(d) {
                            dag.add_edge(d, me, ());
                        }
                        inputs.entry(me).or_default().push((role, d));
                    }
                    None => {
                        let hint = by_base.contains_key(r.name.as_str()).then(|| {
                            format!("`{}` is a node; `{role}` needs a dataset from `datasets:`", r.name)
                        });
                        diags.push(missing(
                            "dataset",
                            exp.datasets.keys().map(String::as_str).collect(),
                            hint,
                        ));
                    }
                },
                Target::Model => {
                    if !exp.models.contains_key(&r.name) {
                        let hint = by_base.contains_key(r.name.as_str()).then(|| {
                            format!("`{}` is a node; `{role}` needs an architecture from `models:` (start from a node's weights with `init`/`from`)", r.name)
                        });
                        diags.push(missing("model", exp.models.keys().map(String::as_str).collect(), hint));
                    }
                }
                Target::Node(_) | Target::NodeOrDataset => {
                    let targets: Vec<NodeIndex> = match index.get(&r.name) {
                        Some(&ix) => vec![ix],
                        None => by_base.get(r.name.as_str()).cloned().unwrap_or_default(),
                    };
                    if targets.is_empty() {
                        let hint = if exp.datasets.contains_key(&r.name) {
                            Some(format!("`{}` is a dataset; `{role}` needs a node", r.name))
                        } else if exp.models.contains_key(&r.name) {
                            Some(format!(
                                "`{}` is a model, not a trained node; add a train node for it and reference that",
                                r.name
                            ))
                        } else {
                            None
                        };
                        let mut cands: Vec<&str> = by_base.keys().copied().collect();
                        if r.target == Target::NodeOrDataset {
                            cands.extend(exp.datasets.keys().map(String::as_str));
                        }
                        diags.push(missing("node", cands, hint));
                        continue;
                    }
                    for t in targets {
                        if let (Target::Node(want), Vertex::Node { kind, name }) = (r.target, &dag[t]) {
                            let kind_ok = match want {
                                Want::Model => matches!(*kind, "train" | "finetune" | "distill"),
                                Want::Generated => *kind == "generate",
                                Want::Row => {
                                    matches!(*kind, "train" | "finetune" | "distill" | "evaluate")
                                }
                            };
                            if !kind_ok {
                                let need = match want {
                                    Want::Model => "a node that trains a model (train, finetune, distill)",
                                    Want::Generated => "a generate node",
                                    Want::Row => "a train, finetune, distill or evaluate node",
                                };
                                diags.push(
                                    Diagnostic::new(
                                        Code::MissingReference,
                                        &path,
                                        format!("`{name}` is a {kind} node, but `{role}` needs {need}"),
                                    )
                                    .with_node(&node.name)
                                    .with_help(format!("point `{role}` at {need}"))
                                    .at(exp.locate_value(&path)),
                                );
                                break;
                            }
                        }
                        if linked.insert(t) {
                            dag.add_edge(t, me, ());
                        }
                        inputs.entry(me).or_default().push((role.clone(), t));
                    }
                }
            }
        }
    }

    diags.extend(cycles(exp, &dag));
    // Dataset fingerprints read the data: a missing or broken file is reported here, before
    // anything runs, at the dataset that names it.
    let mut fingerprints: HashMap<&str, CacheKey> = HashMap::new();
    for (name, d) in &exp.datasets {
        match fingerprint(name, d) {
            Ok(k) => {
                fingerprints.insert(name, k);
            }
            Err(e) => {
                let path = if d.path.is_some() {
                    format!("datasets.{name}.path")
                } else {
                    format!("datasets.{name}")
                };
                diags.push(
                    Diagnostic::new(Code::Data, &path, e)
                        .with_node(name)
                        .with_help(
                            "check the dataset's path and files (docs/data.md lists what each source reads)",
                        )
                        .at(exp.locate_value(&path)),
                );
            }
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    let order = stable_topo(&dag);

    let nodes_by_name: HashMap<&str, &crate::spec::Node> =
        exp.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut keys: HashMap<NodeIndex, CacheKey> = HashMap::new();
    let mut canonical = HashMap::new();
    for &ix in &order {
        match &dag[ix] {
            Vertex::Dataset { name } => {
                keys.insert(ix, fingerprints[name.as_str()].clone());
            }
            Vertex::Node { name, .. } => {
                let node = nodes_by_name[name.as_str()];
                let c = key::node_canonical(
                    exp,
                    node,
                    &|n| keys[&index[n]].clone(),
                    &|n| index.contains_key(n),
                    &by_base,
                    &dag,
                );
                keys.insert(ix, CacheKey::of(&c));
                canonical.insert(ix, c);
            }
        }
    }
    Ok(Graph { dag, order, keys, canonical, inputs, index })
}

/// Kahn's algorithm, always taking the earliest-declared ready vertex: deterministic, and close
/// to the order people wrote.
fn stable_topo(dag: &DiGraph<Vertex, ()>) -> Vec<NodeIndex> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut indegree: Vec<usize> =
        dag.node_indices().map(|ix| dag.neighbors_directed(ix, petgraph::Incoming).count()).collect();
    let mut ready: BinaryHeap<Reverse<usize>> =
        dag.node_indices().filter(|ix| indegree[ix.index()] == 0).map(|ix| Reverse(ix.index())).collect();
    let mut order = Vec::with_capacity(dag.node_count());
    while let Some(Reverse(i)) = ready.pop() {
        let ix = NodeIndex::new(i);
        order.push(ix);
        for n in dag.neighbors_directed(ix, petgraph::Outgoing) {
            indegree[n.index()] -= 1;
            if indegree[n.index()] == 0 {
                ready.push(Reverse(n.index()));
            }
        }
    }
    order
}

/// One diagnostic per cycle (strongly connected component), naming the whole loop.
fn cycles(exp: &Experiment, dag: &DiGraph<Vertex, ()>) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut sccs = petgraph::algo::tarjan_scc(dag);
    sccs.iter_mut().for_each(|c| c.sort());
    sccs.sort();
    for scc in sccs {
        let start = scc[0];
        let self_loop = dag.contains_edge(start, start);
        if scc.len() < 2 && !self_loop {
            continue;
        }
        // Walk the loop inside the component from its first-declared vertex back to itself.
        let path = loop_path(dag, start, &scc);
        let names: Vec<&str> = path.iter().map(|ix| dag[*ix].name()).collect();
        let first = exp.nodes.iter().find(|n| n.name == names[0]);
        let (p, loc, node) = match first {
            Some(n) => (n.spec_path(), exp.locate(&n.spec_path()), Some(n.name.clone())),
            None => (String::new(), None, None),
        };
        let mut d =
            Diagnostic::new(Code::Cycle, p, format!("cycle: {} (each uses the next)", names.join(" -> ")))
                .with_help("a node cannot depend on its own result: remove one of these references")
                .at(loc);
        d.node = node;
        out.push(d);
    }
    out
}

fn loop_path(dag: &DiGraph<Vertex, ()>, start: NodeIndex, scc: &[NodeIndex]) -> Vec<NodeIndex> {
    // Breadth-first search for the shortest way back to `start` within the component.
    let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(ix) = queue.pop_front() {
        // Incoming edges: from a node to what it references, so the loop reads "uses".
        let mut next: Vec<NodeIndex> = dag.neighbors_directed(ix, petgraph::Incoming).collect();
        next.sort();
        for n in next {
            if !scc.contains(&n) {
                continue;
            }
            if n == start {
                let mut path = vec![start];
                let mut cur = ix;
                while cur != start {
                    path.push(cur);
                    cur = prev[&cur];
                }
                path[1..].reverse();
                path.push(start);
                return path;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(n) {
                e.insert(ix);
                queue.push_back(n);
            }
        }
    }
    vec![start, start]
}
