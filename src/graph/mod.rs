//! graph: an [`Experiment`] -> a DAG of datasets and node instances, with cache keys.
//!
//! Architecture invariant: building the graph does no I/O. Dataset content fingerprints come in
//! through a function the caller gives (the data layer computes them; [`spec_fingerprint`] hashes
//! the dataset's settings alone). Every reference is checked here against the kinds its field
//! takes, and every cycle is reported with its path (a long loop: its start and end), before
//! anything runs. Every walk of the graph is iterative: no input's depth reaches the stack.

mod key;
mod render;

use std::collections::{BTreeMap, HashMap};

use petgraph::graph::{DiGraph, NodeIndex};

pub use key::{CacheKey, FORMAT_VERSION, canonical_json, spec_fingerprint};
pub use render::{to_dot, to_mermaid, to_svg};

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
    /// Every node vertex resolved for running (`resolve::build` fills it in with the keys).
    pub jobs: HashMap<NodeIndex, crate::job::Job>,
    /// The synthetic ratio of each teacher-outputs vertex on real + synthetic images.
    pub synthetic: HashMap<NodeIndex, f64>,
    index: HashMap<String, NodeIndex>,
}

impl Graph {
    pub fn get(&self, name: &str) -> Option<NodeIndex> {
        self.index.get(name).copied()
    }

    pub fn key(&self, ix: NodeIndex) -> &CacheKey {
        &self.keys[&ix]
    }

    /// The resolved job of a node vertex.
    pub fn job(&self, ix: NodeIndex) -> &crate::job::Job {
        &self.jobs[&ix]
    }

    /// Node instances (not datasets), in topological order.
    pub fn node_order(&self) -> impl Iterator<Item = NodeIndex> + '_ {
        self.order.iter().copied().filter(|ix| matches!(self.dag[*ix], Vertex::Node { .. }))
    }
}

/// How many names a help line lists before it says how many more there are.
const MAX_LISTED: usize = 12;
/// How many wrong references get a did-you-mean search (each one scans every candidate: without a
/// bound, a spec with thousands of wrong references would take quadratic time to reject).
const MAX_SUGGESTIONS: usize = 64;

/// Builds the graph of `exp`; `fingerprint` gives each dataset's content fingerprint.
pub fn build(
    exp: &Experiment,
    fingerprint: &dyn Fn(&str, &DatasetSpec) -> Result<CacheKey, String>,
) -> Result<Graph, Vec<Diagnostic>> {
    let mut dag: DiGraph<Vertex, ()> = DiGraph::new();
    let mut index: HashMap<String, NodeIndex> = HashMap::new();
    // Datasets and nodes are looked up apart: a reference is checked against the kind it takes,
    // never resolved to a vertex of another kind that happens to have the name.
    let mut dataset_ix: HashMap<&str, NodeIndex> = HashMap::new();
    for name in exp.datasets.keys() {
        let ix = dag.add_node(Vertex::Dataset { name: name.clone() });
        index.insert(name.clone(), ix);
        dataset_ix.insert(name, ix);
    }
    // Instances of each declared node, for references by declared name.
    let mut by_base: BTreeMap<&str, Vec<NodeIndex>> = BTreeMap::new();
    let mut node_ix: HashMap<&str, NodeIndex> = HashMap::new();
    // Declared node name -> kind, in declaration order (the candidates a help line lists).
    let mut declared: Vec<(&str, &'static str)> = Vec::new();
    for node in &exp.nodes {
        let ix = dag.add_node(Vertex::Node { name: node.name.clone(), kind: node.kind.name() });
        index.insert(node.name.clone(), ix);
        node_ix.insert(&node.name, ix);
        let instances = by_base.entry(node.base.as_str()).or_default();
        if instances.is_empty() {
            declared.push((&node.base, node.kind.name()));
        }
        instances.push(ix);
    }

    let mut refs = RefCheck::new(exp, &declared);
    let mut inputs: HashMap<NodeIndex, Vec<(String, NodeIndex)>> = HashMap::new();
    for node in &exp.nodes {
        let me = node_ix[node.name.as_str()];
        // Inputs already linked to this node (petgraph's update_edge scans the input's edges:
        // quadratic for a dataset read by thousands of nodes).
        let mut linked: std::collections::HashSet<NodeIndex> = std::collections::HashSet::new();
        let mut link = |dag: &mut DiGraph<Vertex, ()>, at: &Site, t: NodeIndex| {
            if linked.insert(t) {
                dag.add_edge(t, me, ());
            }
            inputs.entry(me).or_default().push((at.role().to_string(), t));
        };
        for r in node.kind.refs() {
            if exp.invalid.contains(&r.name) {
                continue; // reported by the spec layer already
            }
            let at = Site { node, pointer: &r.pointer };
            let is_node = |name: &str| node_ix.contains_key(name) || by_base.contains_key(name);
            match r.target {
                Target::Dataset => match dataset_ix.get(r.name.as_str()) {
                    Some(&d) => link(&mut dag, &at, d),
                    None => {
                        let hint = is_node(&r.name).then(|| {
                            format!(
                                "`{}` is a node; `{}` needs a dataset from `datasets:`",
                                r.name,
                                at.field()
                            )
                        });
                        refs.missing(&at, &r.name, Names::Datasets, hint);
                    }
                },
                Target::Model => {
                    if !exp.models.contains_key(&r.name) {
                        let hint = if is_node(&r.name) {
                            Some(format!(
                                "`{}` is a node; `{}` needs an architecture from `models:` (start from a node's weights with `init`/`from`)",
                                r.name,
                                at.field()
                            ))
                        } else if exp.datasets.contains_key(&r.name) {
                            Some(format!(
                                "`{}` is a dataset; `{}` needs an architecture from `models:`",
                                r.name,
                                at.field()
                            ))
                        } else {
                            None
                        };
                        refs.missing(&at, &r.name, Names::Models, hint);
                    }
                }
                Target::Node(_) | Target::NodeOrDataset => {
                    let targets: &[NodeIndex] = match node_ix.get(r.name.as_str()) {
                        Some(ix) => std::slice::from_ref(ix),
                        None => by_base.get(r.name.as_str()).map(Vec::as_slice).unwrap_or_default(),
                    };
                    let want = match r.target {
                        Target::Node(w) => Some(w),
                        _ => None,
                    };
                    if targets.is_empty() {
                        match (want, dataset_ix.get(r.name.as_str())) {
                            (None, Some(&d)) => link(&mut dag, &at, d),
                            (Some(w), Some(_)) => {
                                refs.wrong_kind(&at, &format!("`{}` is a dataset", r.name), w, None)
                            }
                            (Some(w), None) if exp.models.contains_key(&r.name) => refs.wrong_kind(
                                &at,
                                &format!("`{}` is a model", r.name),
                                w,
                                Some(format!("add a train node for `{}` and reference that", r.name)),
                            ),
                            (w, None) => refs.missing(&at, &r.name, Names::Nodes(w), None),
                        }
                        continue;
                    }
                    for &t in targets {
                        if let (Some(w), Vertex::Node { kind, .. }) = (want, &dag[t]) {
                            if !w.accepts(kind) {
                                // The declared name: every instance would say the same.
                                let what =
                                    format!("`{}` is {} node", node_of(exp, t).base, with_article(kind));
                                refs.wrong_kind(&at, &what, w, None);
                                break;
                            }
                        }
                        link(&mut dag, &at, t);
                    }
                }
            }
        }
    }
    let mut diags = refs.diags;

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
        // Matrix instances of one declared node share its references: report each bad one once.
        let mut seen = std::collections::HashSet::new();
        diags.retain(|d| seen.insert((d.code, d.path.clone(), d.message.clone())));
        return Err(diags);
    }
    let synthetic = derived_vertices(exp, &mut dag, &mut inputs, &mut index, &dataset_ix);
    let order = stable_topo(&dag);
    let mut keys: HashMap<NodeIndex, CacheKey> = HashMap::new();
    for (name, ix) in &dataset_ix {
        keys.insert(*ix, fingerprints[name].clone());
    }
    // Node keys are the hashes of their resolved jobs: `resolve::build` fills them in.
    Ok(Graph { dag, order, keys, canonical: HashMap::new(), inputs, jobs: HashMap::new(), synthetic, index })
}

/// The teacher outputs a distill node reads, when they can be computed once and kept: nothing
/// random happens to its images (no random per-image transform, no batch augmentation) and
/// `teacher_cache` is `auto`. One vertex per (teacher instance, dataset), shared by every
/// student, loss and seed distilled from it; added after every node (so vertex indices of
/// nodes stay `datasets + position`). A distill node on real + synthetic images gets one per
/// (teacher, dataset, generate node, ratio): returned, with its ratio.
fn derived_vertices(
    exp: &Experiment,
    dag: &mut DiGraph<Vertex, ()>,
    inputs: &mut HashMap<NodeIndex, Vec<(String, NodeIndex)>>,
    index: &mut HashMap<String, NodeIndex>,
    dataset_ix: &HashMap<&str, NodeIndex>,
) -> HashMap<NodeIndex, f64> {
    use crate::spec::{AugmentSpec, NodeKind, TeacherCache, TransformSpec};
    type Made = (NodeIndex, NodeIndex, Option<(NodeIndex, u64)>);
    let mut made: HashMap<Made, NodeIndex> = HashMap::new();
    let mut ratios = HashMap::new();
    for (i, node) in exp.nodes.iter().enumerate() {
        let NodeKind::Distill(s) = &node.kind else { continue };
        let Some(d) = exp.datasets.get(&s.data.0) else { continue };
        let random = d.transforms.iter().any(|t| {
            matches!(
                t,
                TransformSpec::PadCrop { .. }
                    | TransformSpec::RandomResizedCrop { .. }
                    | TransformSpec::Flip {}
            )
        });
        if s.teacher_cache != TeacherCache::Auto || s.augment != AugmentSpec::None || random {
            continue;
        }
        let me = NodeIndex::new(exp.datasets.len() + i);
        let linked = inputs.get(&me).map(Vec::as_slice).unwrap_or_default();
        let teacher = linked.iter().find(|(r, _)| r == "teacher").map(|x| x.1);
        let data = linked.iter().find(|(r, _)| r == "data").map(|x| x.1);
        let generated = linked.iter().find(|(r, _)| r == "synthetic/from").map(|x| x.1);
        let (Some(t), Some(data)) = (teacher, data) else { continue };
        if dataset_ix.get(s.data.0.as_str()) != Some(&data) {
            continue;
        }
        let mix = match (&s.synthetic, generated) {
            (Some(m), Some(g)) => Some((g, m.ratio)),
            (Some(_), None) => continue,
            _ => None,
        };
        let ix = *made.entry((t, data, mix.map(|(g, r)| (g, r.to_bits())))).or_insert_with(|| {
            let name = match mix {
                Some((g, r)) => format!(
                    "teacher_outputs({} on {} + {} x{r})",
                    dag[t].name(),
                    dag[data].name(),
                    dag[g].name()
                ),
                None => format!("teacher_outputs({} on {})", dag[t].name(), dag[data].name()),
            };
            let ix = dag.add_node(Vertex::Node { name: name.clone(), kind: "teacher_outputs" });
            dag.add_edge(t, ix, ());
            dag.add_edge(data, ix, ());
            let mut ins = vec![("teacher".into(), t), ("data".into(), data)];
            if let Some((g, r)) = mix {
                dag.add_edge(g, ix, ());
                ins.push(("synthetic/from".into(), g));
                ratios.insert(ix, r);
            }
            inputs.insert(ix, ins);
            index.insert(name, ix);
            ix
        });
        dag.add_edge(ix, me, ());
        inputs.entry(me).or_default().push(("teacher_outputs".into(), ix));
    }
    ratios
}

/// The node instance of a node vertex: `build` adds every dataset, then every node in order.
fn node_of(exp: &Experiment, ix: NodeIndex) -> &crate::spec::Node {
    &exp.nodes[ix.index() - exp.datasets.len()]
}

/// Where a reference is written: the node instance and the field's JSON pointer. The strings
/// made from them are only made for the references that need them (a valid one: its role).
struct Site<'a> {
    node: &'a crate::spec::Node,
    pointer: &'a str,
}

impl Site<'_> {
    /// The pointer that [`Graph::inputs`] records: `teacher`, `rows/0`.
    fn role(&self) -> &str {
        self.pointer.trim_start_matches('/')
    }

    /// The field as people write it: `synthetic.from`, `rows.1.node`.
    fn field(&self) -> String {
        self.role().replace('/', ".")
    }

    /// Its dotted path in the file: `nodes.kd.distill.teacher`.
    fn path(&self) -> String {
        format!("{}.{}", self.node.spec_path(), self.field())
    }
}

/// Which names a reference may use (what a help line lists).
#[derive(Clone, Copy)]
enum Names {
    Datasets,
    Models,
    /// Declared nodes of the kinds a `Want` accepts; `None`: any node, or a dataset.
    Nodes(Option<Want>),
}

/// Reference diagnostics, with help that lists the names that would fit.
struct RefCheck<'a> {
    exp: &'a Experiment,
    /// Declared nodes and their kinds, in declaration order.
    declared: &'a [(&'a str, &'static str)],
    /// Candidate lists, made once each (a spec with many wrong references stays linear).
    lists: HashMap<&'static str, Vec<&'a str>>,
    suggestions_left: usize,
    diags: Vec<Diagnostic>,
}

impl<'a> RefCheck<'a> {
    fn new(exp: &'a Experiment, declared: &'a [(&'a str, &'static str)]) -> Self {
        RefCheck {
            exp,
            declared,
            lists: HashMap::new(),
            suggestions_left: MAX_SUGGESTIONS,
            diags: Vec::new(),
        }
    }

    fn push(&mut self, at: &Site, message: String, help: String) {
        let path = at.path();
        self.diags.push(
            Diagnostic::new(Code::MissingReference, &path, message)
                .with_node(&at.node.name)
                .with_help(help)
                .at(self.exp.locate_value(&path)),
        );
    }

    /// The names `names` stands for, in declaration order.
    fn names(&mut self, names: Names) -> &[&'a str] {
        let (exp, declared) = (self.exp, self.declared);
        let (id, make): (&'static str, Box<dyn Fn() -> Vec<&'a str>>) = match names {
            Names::Datasets => ("datasets", Box::new(|| exp.datasets.keys().map(String::as_str).collect())),
            Names::Models => ("models", Box::new(|| exp.models.keys().map(String::as_str).collect())),
            Names::Nodes(None) => (
                "inputs",
                Box::new(|| {
                    let nodes = declared.iter().map(|(n, _)| *n);
                    nodes.chain(exp.datasets.keys().map(String::as_str)).collect()
                }),
            ),
            Names::Nodes(Some(w)) => (
                match w {
                    Want::Model => "model",
                    Want::Generated => "generated",
                    Want::Generator => "generator",
                    Want::Row => "row",
                },
                Box::new(move || declared.iter().filter(|(_, k)| w.accepts(k)).map(|(n, _)| *n).collect()),
            ),
        };
        self.lists.entry(id).or_insert_with(make)
    }

    /// The names that fit, but never the referencing node itself (it cannot read its own result).
    fn fitting(&mut self, names: Names, at: &Site) -> Fitting<'a> {
        let me = at.node.base.as_str();
        // Whether the node itself is in the list, without scanning it (once per reference would
        // be quadratic for a spec with many wrong references).
        let me_listed = match names {
            Names::Datasets => self.exp.datasets.contains_key(me),
            Names::Models => self.exp.models.contains_key(me),
            Names::Nodes(None) => true,
            Names::Nodes(Some(w)) => w.accepts(at.node.kind.name()),
        };
        let all = self.names(names);
        let total = all.len() - me_listed as usize;
        let shown = all.iter().copied().filter(|n| *n != me).take(MAX_LISTED).collect();
        Fitting { shown, total }
    }

    fn suggest(&mut self, name: &str, names: Names, at: &Site) -> Option<String> {
        if self.suggestions_left == 0 {
            return None;
        }
        self.suggestions_left -= 1;
        let me = at.node.base.as_str();
        did_you_mean(name, self.names(names).iter().copied().filter(|n| *n != me)).map(str::to_string)
    }

    /// `name` names nothing the field takes, and nothing of another kind either.
    fn missing(&mut self, at: &Site, name: &str, names: Names, hint: Option<String>) {
        let what = match names {
            Names::Datasets => "dataset",
            Names::Models => "model",
            Names::Nodes(_) => "node",
        };
        let help = match hint {
            Some(h) => h,
            None => match self.suggest(name, names, at) {
                Some(s) => format!("did you mean `{s}`?"),
                None => {
                    let fit = self.fitting(names, at);
                    match (names, fit.total) {
                        (Names::Nodes(w), 0) => format!("declare {} named `{name}`", need(w)),
                        (_, 0) => format!("declare a {what} named `{name}`"),
                        (Names::Nodes(_), _) => format!("nodes that fit: {}", fit.listed()),
                        _ => format!("known {what}s: {}", fit.listed()),
                    }
                }
            },
        };
        self.push(at, format!("no {what} named `{name}`"), help);
    }

    /// The name is something the field does not take (`what` says what it is).
    fn wrong_kind(&mut self, at: &Site, what: &str, want: Want, also: Option<String>) {
        let fit = self.fitting(Names::Nodes(Some(want)), at);
        let need = need(Some(want));
        let field = at.field();
        let mut help = match fit.total {
            0 => format!("declare {need} and point `{field}` at it"),
            _ => format!("point `{field}` at one of: {}", fit.listed()),
        };
        if let Some(a) = also {
            help = format!("{help}; or {a}");
        }
        self.push(at, format!("{what}, but `{field}` needs {need}"), help);
    }
}

/// The first names that fit, and how many fit in all.
struct Fitting<'a> {
    shown: Vec<&'a str>,
    total: usize,
}

impl Fitting<'_> {
    /// `a, b, c`, or the first [`MAX_LISTED`] and how many more.
    fn listed(&self) -> String {
        let more = self.total - self.shown.len();
        match more {
            0 => self.shown.join(", "),
            _ => format!("{} and {more} more", self.shown.join(", ")),
        }
    }
}

/// What a node reference needs, in words: `a train, finetune or distill node`.
fn need(want: Option<Want>) -> String {
    let Some(w) = want else { return "a node or a dataset".to_string() };
    let kinds = w.kinds();
    let list = match kinds {
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
        [] => unreachable!("every reference accepts some kind"),
    };
    format!("a {list} node")
}

/// `a train`, `an evaluate`.
fn with_article(kind: &str) -> String {
    let an = kind.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {kind}", if an { "an" } else { "a" })
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

/// How many names a cycle report shows; a longer loop is shown as its start and its end.
const MAX_CYCLE_NAMES: usize = 10;

/// One diagnostic per cycle (strongly connected component), naming the loop.
fn cycles(exp: &Experiment, dag: &DiGraph<Vertex, ()>) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut sccs = strongly_connected(dag);
    sccs.iter_mut().for_each(|c| c.sort());
    sccs.sort();
    let mut in_scc = vec![false; dag.node_count()];
    for scc in sccs {
        let start = scc[0];
        let self_loop = dag.contains_edge(start, start);
        if scc.len() < 2 && !self_loop {
            continue;
        }
        scc.iter().for_each(|ix| in_scc[ix.index()] = true);
        // Walk the loop inside the component from its first-declared vertex back to itself.
        let path = loop_path(dag, start, &in_scc);
        scc.iter().for_each(|ix| in_scc[ix.index()] = false);
        let names: Vec<&str> = path.iter().map(|ix| dag[*ix].name()).collect();
        let (p, loc, node) = match &dag[start] {
            Vertex::Node { .. } => {
                let n = node_of(exp, start);
                (n.spec_path(), exp.locate(&n.spec_path()), Some(n.name.clone()))
            }
            Vertex::Dataset { .. } => (String::new(), None, None),
        };
        let mut d = Diagnostic::new(Code::Cycle, p, format!("cycle: {} (each uses the next)", shown(&names)))
            .with_help("a node cannot depend on its own result: remove one of these references")
            .at(loc);
        d.node = node;
        out.push(d);
    }
    out
}

/// `a -> b -> c -> a`, or for a long loop its first names, how many are left out, and its end.
fn shown(names: &[&str]) -> String {
    if names.len() <= MAX_CYCLE_NAMES {
        return names.join(" -> ");
    }
    let head = &names[..MAX_CYCLE_NAMES - 2];
    let tail = &names[names.len() - 2..];
    let left_out = names.len() - head.len() - tail.len();
    format!("{} -> … {left_out} more … -> {}", head.join(" -> "), tail.join(" -> "))
}

/// Strongly connected components: Tarjan's algorithm with an explicit stack (petgraph's
/// `tarjan_scc` recurses once per vertex on a path and overflows the stack on a long chain).
fn strongly_connected(dag: &DiGraph<Vertex, ()>) -> Vec<Vec<NodeIndex>> {
    const UNSEEN: usize = usize::MAX;
    let n = dag.node_count();
    let mut order = vec![UNSEEN; n]; // discovery number
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<usize> = Vec::new();
    let mut sccs = Vec::new();
    let mut counter = 0;
    // Each frame: a vertex and its successors still to visit.
    let mut frames: Vec<(usize, petgraph::graph::Neighbors<'_, ()>)> = Vec::new();
    for root in 0..n {
        if order[root] != UNSEEN {
            continue;
        }
        order[root] = counter;
        low[root] = counter;
        counter += 1;
        stack.push(root);
        on_stack[root] = true;
        frames.push((root, dag.neighbors_directed(NodeIndex::new(root), petgraph::Outgoing)));
        while let Some((v, next)) = frames.last_mut() {
            let v = *v;
            match next.next().map(NodeIndex::index) {
                Some(w) if order[w] == UNSEEN => {
                    order[w] = counter;
                    low[w] = counter;
                    counter += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    frames.push((w, dag.neighbors_directed(NodeIndex::new(w), petgraph::Outgoing)));
                }
                Some(w) => {
                    if on_stack[w] {
                        low[v] = low[v].min(order[w]);
                    }
                }
                None => {
                    frames.pop();
                    if let Some((parent, _)) = frames.last() {
                        low[*parent] = low[*parent].min(low[v]);
                    }
                    if low[v] == order[v] {
                        let mut scc = Vec::new();
                        loop {
                            let w = stack.pop().expect("v is on the stack");
                            on_stack[w] = false;
                            scc.push(NodeIndex::new(w));
                            if w == v {
                                break;
                            }
                        }
                        sccs.push(scc);
                    }
                }
            }
        }
    }
    sccs
}

fn loop_path(dag: &DiGraph<Vertex, ()>, start: NodeIndex, in_scc: &[bool]) -> Vec<NodeIndex> {
    // Breadth-first search for the shortest way back to `start` within the component.
    let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(ix) = queue.pop_front() {
        // Incoming edges: from a node to what it references, so the loop reads "uses".
        let mut next: Vec<NodeIndex> = dag.neighbors_directed(ix, petgraph::Incoming).collect();
        next.sort();
        for n in next {
            if !in_scc[n.index()] {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec;

    const HEAD: &str = "
datasets: { task: { source: builtin/digits }, test: { source: builtin/digits, split: test } }
models: { big: { arch: mlp, hidden: [8] } }
nodes:
  pt: { train: { model: big, data: task } }
  ev: { evaluate: { model: pt, data: test } }
";

    /// The diagnostics (code, message, help) of `HEAD` plus `nodes`, or none.
    fn check(nodes: &str) -> Vec<(Code, String, String)> {
        let text = format!("{HEAD}{nodes}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.yaml");
        std::fs::write(&file, text).unwrap();
        let (exp, mut diags) = spec::load_partial(&file);
        if let Err(more) = build(&exp.expect("parses"), &spec_fingerprint) {
            diags.extend(more);
        }
        // Reserved kinds (plugin, synthetic) are rejected by validate; their references are
        // still checked, which is what these tests look at.
        diags
            .into_iter()
            .filter(|d| d.code != Code::Unsupported)
            .map(|d| (d.code, d.message, d.help.unwrap_or_default()))
            .collect()
    }

    fn one(nodes: &str) -> (String, String) {
        let got = check(nodes);
        assert_eq!(got.len(), 1, "{nodes}: {got:#?}");
        assert_eq!(got[0].0, Code::MissingReference);
        (got[0].1.clone(), got[0].2.clone())
    }

    #[test]
    fn node_references_reject_a_dataset_and_list_the_nodes_that_fit() {
        let model = "a train, finetune or distill node";
        let table = [
            ("  x: { train: { model: big, data: task, init: task } }", "init", model, "pt"),
            ("  x: { finetune: { from: task, data: task } }", "from", model, "pt"),
            (
                "  x: { distill: { teacher: task, student: big, data: task, losses: kd } }",
                "teacher",
                model,
                "pt",
            ),
            (
                "  x: { distill: { teacher: pt, student: big, student_init: task, data: task, losses: kd } }",
                "student_init",
                model,
                "pt",
            ),
            ("  x: { evaluate: { model: task, data: test } }", "model", model, "pt"),
            (
                "  x: { report: { rows: [pt, task] } }",
                "rows.1",
                "a train, finetune, distill or evaluate node",
                "pt, ev",
            ),
            (
                "  x: { distill: { teacher: pt, student: big, data: task, losses: kd, synthetic: { from: task } } }",
                "synthetic.from",
                "a generate node",
                "",
            ),
        ];
        for (nodes, role, need, fit) in table {
            let (msg, help) = one(nodes);
            assert_eq!(msg, format!("`task` is a dataset, but `{role}` needs {need}"), "{nodes}");
            let want_help = if fit.is_empty() {
                format!("declare {need} and point `{role}` at it")
            } else {
                format!("point `{role}` at one of: {fit}")
            };
            assert_eq!(help, want_help, "{nodes}");
        }
    }

    #[test]
    fn a_wrong_kind_node_lists_only_nodes_of_the_right_kinds() {
        let (msg, help) = one("  x: { finetune: { from: ev, data: task } }");
        assert_eq!(msg, "`ev` is an evaluate node, but `from` needs a train, finetune or distill node");
        assert_eq!(help, "point `from` at one of: pt");
        let (msg, help) = one("  x: { evaluate: { model: big, data: test } }");
        assert_eq!(msg, "`big` is a model, but `model` needs a train, finetune or distill node");
        assert_eq!(help, "point `model` at one of: pt; or add a train node for `big` and reference that");
    }

    #[test]
    fn a_long_candidate_list_is_capped() {
        let many: String =
            (0..15).map(|i| format!("  t{i}: {{ train: {{ model: big, data: task }} }}\n")).collect();
        let (_, help) = one(&format!("{many}  x: {{ finetune: {{ from: test, data: task }} }}"));
        let first: Vec<String> =
            ["pt".to_string()].into_iter().chain((0..11).map(|i| format!("t{i}"))).collect();
        assert_eq!(help, format!("point `from` at one of: {} and 4 more", first.join(", ")));
    }

    #[test]
    fn a_misspelt_node_suggests_a_node_of_the_right_kind() {
        let (msg, help) = one("  x: { finetune: { from: ptt, data: task } }");
        assert_eq!((msg.as_str(), help.as_str()), ("no node named `ptt`", "did you mean `pt`?"));
    }

    #[test]
    fn plugin_inputs_take_any_node_or_a_dataset() {
        assert_eq!(check("  x: { plugin: { name: echo, inputs: { a: task, b: ev, c: pt } } }"), []);
        let (msg, _) = one("  x: { plugin: { name: echo, inputs: { a: nothing } } }");
        assert_eq!(msg, "no node named `nothing`");
    }

    #[test]
    fn a_bad_reference_in_a_matrix_node_is_reported_once() {
        let got = check("  x: { finetune: { from: task, data: task }, matrix: { seed: [0, 1, 2] } }");
        assert_eq!(got.len(), 1, "{got:#?}");
        // An expanded target: every instance points at another instance of the same node.
        let got = check(
            "  e2: { evaluate: { model: pt, data: test }, matrix: { seed: [0, 1] } }\n  x: { finetune: { from: e2, data: task } }",
        );
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(got[0].1.starts_with("`e2` is an evaluate node"), "{got:#?}");
    }

    #[test]
    fn model_references_accept_what_yields_a_model() {
        let text =
            format!("{HEAD}  d: {{ distill: {{ teacher: pt, student: big, data: task, losses: kd }} }}\n");
        let exp = spec::load_str(std::path::Path::new("t.yaml"), &text).unwrap();
        for n in &exp.nodes {
            assert_eq!(Want::Model.accepts(n.kind.name()), n.kind.yields_model(), "{}", n.name);
        }
    }

    #[test]
    fn a_dataset_and_a_node_with_one_name_among_invalid_parts_do_not_panic() {
        // The fuzzer's input (tests/fuzz/pending/panic-graph-build-no-fingerprint-for-dataset.yaml).
        let text = "datasets:\n  task: {source: builtin/digits,classes: [5],per_class}\n  test: {}\n  big: \n  s: {[]}\nnodes:\n  6:\n  5: {l: {}}\n  0: {l: {}}\n  1: {finetune: {r,data: task}}\n  2: t\n  3: {l: {}}\n  task: {train: {model: big,data: test}}\n";
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.yaml");
        std::fs::write(&file, text).unwrap();
        let (exp, diags) = spec::load_partial(&file);
        assert!(!diags.is_empty());
        let _ = build(&exp.expect("parses"), &spec_fingerprint);
    }

    #[test]
    fn a_long_cycle_shows_its_start_and_end() {
        let names: Vec<String> = (0..20).map(|i| format!("n{i}")).chain(["n0".to_string()]).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(shown(&names), "n0 -> n1 -> n2 -> n3 -> n4 -> n5 -> n6 -> n7 -> … 11 more … -> n19 -> n0");
        assert_eq!(shown(&["a", "b", "a"]), "a -> b -> a");
    }

    #[test]
    fn strongly_connected_matches_petgraph() {
        // Small graphs with loops, self-loops, chains and diamonds, against petgraph's recursive one.
        let mut state = 7u64;
        let mut rand = |n: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        for _ in 0..200 {
            let n = 1 + rand(12) as usize;
            let mut g: DiGraph<Vertex, ()> = DiGraph::new();
            for i in 0..n {
                g.add_node(Vertex::Dataset { name: i.to_string() });
            }
            for _ in 0..rand(2 * n as u64 + 1) {
                g.add_edge(
                    NodeIndex::new(rand(n as u64) as usize),
                    NodeIndex::new(rand(n as u64) as usize),
                    (),
                );
            }
            let norm = |mut v: Vec<Vec<NodeIndex>>| {
                v.iter_mut().for_each(|c| c.sort());
                v.sort();
                v
            };
            assert_eq!(norm(strongly_connected(&g)), norm(petgraph::algo::tarjan_scc(&g)));
        }
    }
}
