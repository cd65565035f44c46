//! Matrix expansion: one declared node -> one instance per combination of matrix values.
//!
//! Rules (docs/spec.md, "Matrix"):
//! - a node's own dimensions are its `matrix:` keys, then the global `matrix:` keys that apply to
//!   it: `seed` for nodes that train (unless the node fixes `seed:`), any other key whose first
//!   segment is a field of the node's kind;
//! - a node that references expanded nodes inherits their dimensions and references the
//!   instance with the same values (so `kd[seed=1]` distils from `teacher[seed=1]`);
//! - report nodes do not expand: a row names every instance of a node, and the report shows
//!   mean ± std over seeds.

use std::collections::{HashMap, HashSet};

use serde_yaml::{Mapping, Value};

use super::Node;
use super::load::{Loader, kind_fields, limits, render_value};
use super::types::{NodeKind, Target};
use crate::diag::{Code, did_you_mean};

pub(super) struct RawNode {
    pub base: String,
    pub kind: String,
    /// The kind body, shorthands expanded, defaults merged.
    pub body: Value,
    /// The body as the node itself wrote it, when `defaults:` were merged in.
    pub own: Option<Value>,
    pub seed: Option<u64>,
    pub matrix: Vec<Dim>,
    pub description: Option<String>,
    /// Its `resources:` over `defaults.resources`.
    pub resources: super::types::Resources,
}

/// One matrix key: its values (distinct), and the path of its list in the file.
#[derive(Clone, Debug)]
pub(super) struct Dim {
    pub key: String,
    pub values: Vec<Value>,
    /// `matrix.seed` or `nodes.kd.matrix.losses.kd.temperature`.
    pub at: String,
}

/// Matrix values that give the same settings compare equal by this key: numbers by value
/// (`2` and `2.0`), mappings whatever their key order.
pub(super) fn same_value_key(v: &Value) -> String {
    match v {
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), ..) => format!("n{u}"),
            (_, Some(i), _) => format!("n{i}"),
            (.., Some(f)) if f.fract() == 0.0 && f.abs() < 9e15 => format!("n{}", f as i64),
            (.., Some(f)) => format!("n{f:?}"),
            _ => format!("n{n}"),
        },
        Value::String(s) => format!("s{s}"),
        Value::Bool(b) => format!("b{b}"),
        Value::Null => "null".to_string(),
        Value::Sequence(items) => {
            format!("[{}]", items.iter().map(same_value_key).collect::<Vec<_>>().join(","))
        }
        Value::Mapping(m) => {
            let mut kv: Vec<String> =
                m.iter().map(|(k, v)| format!("{}:{}", same_value_key(k), same_value_key(v))).collect();
            kv.sort();
            format!("{{{}}}", kv.join(","))
        }
        Value::Tagged(t) => format!("!{}{}", t.tag, same_value_key(&t.value)),
    }
}

type Assignment = Vec<(String, Value)>;

fn heavy(l: &mut Loader) {
    let m = super::load::too_heavy("every matrix instance has its own copy");
    l.diags_push(Code::Matrix, "matrix", m).help =
        Some("use fewer matrix values, or keep large values (long strings) out of the settings".to_string());
}

struct Instance {
    assignment: Assignment,
    kind: NodeKind,
}

pub(super) fn expand(
    l: &mut Loader,
    raws: Vec<RawNode>,
    global: &[Dim],
    default_seed: u64,
    all_read: bool,
) -> Vec<crate::spec::Node> {
    // 0. Every node's own dimensions, and the instance count before anything is expanded.
    let mut used = vec![false; global.len()];
    let own_d: Vec<Vec<Dim>> = raws.iter().map(|raw| own_dims(l, raw, global, &mut used)).collect();
    if all_read {
        unused_global_keys(l, &raws, global, &used);
    }
    let counts: Vec<u64> = own_d.iter().map(|d| instance_count(d.iter().map(|d| d.values.len()))).collect();
    let mut total = counts.iter().fold(0u64, |a, &c| a.saturating_add(c));
    if total > limits::MAX_INSTANCES || counts.iter().any(|&c| c > limits::MAX_NODE_INSTANCES) {
        too_many_instances(l, &raws, &own_d, &counts, total);
        return Vec::new();
    }
    // Each instance has its own copy of its node's settings: bounded before any is made.
    let weights: Vec<u64> = raws.iter().map(|r| super::load::settings_weight(&r.body)).collect();
    let mut weight =
        weights.iter().zip(&counts).fold(0u64, |a, (&w, &c)| a.saturating_add(w.saturating_mul(c)));
    if weight > limits::MAX_SETTINGS_WEIGHT {
        heavy(l);
        return Vec::new();
    }

    // 1. Own instances of every node.
    let mut own: Vec<Vec<Instance>> = Vec::with_capacity(raws.len());
    let mut dims: Vec<Vec<String>> = Vec::with_capacity(raws.len());
    for (raw, d) in raws.iter().zip(&own_d) {
        dims.push(d.iter().map(|d| d.key.clone()).collect());
        let mut instances = Vec::new();
        for picks in cartesian(d) {
            let mut body = raw.body.clone();
            let mut from_matrix = Vec::new();
            let mut assignment = Vec::with_capacity(picks.len());
            for (dim, &i) in d.iter().zip(&picks) {
                let v = &dim.values[i];
                if dim.key != "seed" {
                    set_path(&mut body, &dim.key, v.clone());
                    from_matrix.push((dim.key.clone(), format!("{}.{i}", dim.at)));
                }
                assignment.push((dim.key.clone(), v.clone()));
            }
            let name = instance_name(&raw.base, &assignment);
            match l.parse_kind(raw, body, &name, &from_matrix) {
                Some(kind) => instances.push(Instance { assignment, kind }),
                None => {
                    l.invalid.insert(raw.base.clone());
                }
            }
        }
        own.push(instances);
    }

    // 2. Order declared nodes so that references come first; nodes in a cycle keep their own
    // instances (the graph layer reports the cycle with its whole path).
    let index: HashMap<&str, usize> = raws.iter().enumerate().map(|(i, r)| (r.base.as_str(), i)).collect();
    let deps: Vec<Vec<usize>> = own
        .iter()
        .map(|insts| {
            let mut d: Vec<usize> = Vec::new();
            for inst in insts {
                for r in inst.kind.refs() {
                    if let Target::Node(_) | Target::NodeOrDataset = r.target {
                        if let Some(&j) = index.get(r.name.as_str()) {
                            if !d.contains(&j) {
                                d.push(j);
                            }
                        }
                    }
                }
            }
            d
        })
        .collect();
    let order = topo_order(&deps);

    // 3. Inherit the dimensions of referenced nodes, in dependency order.
    let mut finals: Vec<Option<Vec<Instance>>> = (0..raws.len()).map(|_| None).collect();
    let mut final_dims: Vec<Vec<String>> = dims.clone();
    for &i in &order {
        let raw = &raws[i];
        let insts = std::mem::take(&mut own[i]);
        if raw.kind == "report" || deps[i].iter().all(|&j| finals[j].is_none()) {
            finals[i] = Some(insts);
            continue;
        }
        // Values of inherited dimensions, in order of first appearance.
        let mut inherited: Vec<(String, Vec<Value>)> = Vec::new();
        for &j in &deps[i] {
            for d in &final_dims[j] {
                if final_dims[i].contains(d) || inherited.iter().any(|(k, _)| k == d) {
                    continue;
                }
                let mut vals: Vec<Value> = Vec::new();
                for inst in finals[j].iter().flatten() {
                    if let Some((_, v)) = inst.assignment.iter().find(|(k, _)| k == d) {
                        if !vals.contains(v) {
                            vals.push(v.clone());
                        }
                    }
                }
                inherited.push((d.clone(), vals));
            }
        }
        // Inherited dimensions multiply: count before expanding.
        let n = instance_count([insts.len()].into_iter().chain(inherited.iter().map(|(_, v)| v.len())));
        let extra = n.saturating_sub(insts.len() as u64);
        if n > limits::MAX_NODE_INSTANCES || total.saturating_add(extra) > limits::MAX_INSTANCES {
            let via: Vec<String> = deps[i].iter().map(|&j| format!("`{}`", raws[j].base)).collect();
            let d = l.diags_push(
                Code::Matrix,
                &format!("nodes.{}", raw.base),
                format!(
                    "`{}` would expand into {n} instances (inheriting the matrix of {}): at most {} a node, {} in all",
                    raw.base,
                    via.join(", "),
                    limits::MAX_NODE_INSTANCES,
                    limits::MAX_INSTANCES
                ),
            );
            d.node = Some(raw.base.clone());
            d.help =
                Some("use fewer matrix values, or fix `seed:` on nodes that need not repeat".to_string());
            l.invalid.insert(raw.base.clone());
            finals[i] = Some(Vec::new());
            continue;
        }
        weight = weight.saturating_add(extra.saturating_mul(weights[i]));
        if weight > limits::MAX_SETTINGS_WEIGHT {
            heavy(l);
            return Vec::new();
        }
        total += extra;
        let inherited_dims: Vec<Dim> = inherited
            .iter()
            .map(|(k, v)| Dim { key: k.clone(), values: v.clone(), at: String::new() })
            .collect();
        let mut out = Vec::new();
        let mut reported = HashSet::new();
        for inst in insts {
            for picks in cartesian(&inherited_dims) {
                let mut assignment = inst.assignment.clone();
                assignment.extend(
                    inherited_dims.iter().zip(&picks).map(|(d, &k)| (d.key.clone(), d.values[k].clone())),
                );
                sort_seed_last(&mut assignment);
                let name = instance_name(&raw.base, &assignment);
                let mut kind = inst.kind.clone();
                let mut missing: Option<(String, String)> = None;
                kind.rename_node_refs(&mut |r| {
                    let j = *index.get(r)?;
                    let candidates = finals[j].as_ref().filter(|c| !c.is_empty())?; // empty: invalid, reported
                    let found = candidates.iter().find(|c| {
                        c.assignment.iter().all(|(k, v)| assignment.iter().any(|(k2, v2)| k == k2 && v == v2))
                    });
                    match found {
                        Some(c) => Some(instance_name(&raws[j].base, &c.assignment)),
                        None => {
                            missing.get_or_insert((r.to_string(), name.clone()));
                            None
                        }
                    }
                });
                if let Some((target, inst_name)) = missing {
                    if reported.insert(target.clone()) {
                        let p = format!("nodes.{}", raw.base);
                        let d = l
                            .diags_push(Code::Matrix, &p, format!("`{inst_name}` needs an instance of `{target}` with the same matrix values, and there is none"));
                        d.node = Some(raw.base.clone());
                        d.help = Some(format!("give `{}` and `{target}` the same matrix values", raw.base));
                    }
                    continue;
                }
                out.push(Instance { assignment, kind });
            }
        }
        for (k, _) in inherited {
            final_dims[i].push(k);
        }
        finals[i] = Some(out);
    }

    // 4. Nodes, in declaration order.
    let mut nodes = Vec::new();
    for (raw, insts) in raws.iter().zip(finals) {
        for inst in insts.unwrap_or_default() {
            let seed = inst
                .assignment
                .iter()
                .find(|(k, _)| k == "seed")
                .and_then(|(_, v)| v.as_u64())
                .or(raw.seed)
                .unwrap_or(default_seed);
            nodes.push(Node {
                name: instance_name(&raw.base, &inst.assignment),
                base: raw.base.clone(),
                assignment: inst.assignment.iter().map(|(k, v)| (k.clone(), render_value(v))).collect(),
                seed,
                kind: inst.kind,
                description: raw.description.clone(),
                resources: raw.resources.clone(),
            });
        }
    }
    nodes
}

fn own_dims(l: &mut Loader, raw: &RawNode, global: &[Dim], used: &mut [bool]) -> Vec<Dim> {
    let fields = kind_fields(&raw.kind);
    let seeded = matches!(raw.kind.as_str(), "train" | "finetune" | "distill" | "generate");
    let mut d: Vec<Dim> = Vec::new();
    for dim in &raw.matrix {
        let k = &dim.key;
        let first = k.split('.').next().unwrap_or_default();
        if k != "seed" && !fields.iter().any(|f| f == first) {
            let p = format!("nodes.{}.matrix.{k}", raw.base);
            let help = match did_you_mean(first, fields.iter().map(String::as_str)) {
                Some(s) => {
                    format!("did you mean `{s}`? matrix keys are paths into the `{}` settings", raw.kind)
                }
                None => {
                    format!("matrix keys are paths into the `{}` settings: {}", raw.kind, fields.join(", "))
                }
            };
            let diag = l.diags_push(
                Code::UnknownKey,
                &p,
                format!("`{}` is not a `{}` setting", crate::diag::clip(k, 60), raw.kind),
            );
            diag.node = Some(raw.base.clone());
            diag.help = Some(help);
            continue;
        }
        d.push(dim.clone());
    }
    for (g, dim) in global.iter().enumerate() {
        let k = &dim.key;
        if d.iter().any(|d| &d.key == k) {
            // The node's own matrix wins; the key still fits this node.
            used[g] = true;
            continue;
        }
        let applies = if k == "seed" {
            seeded && raw.seed.is_none()
        } else {
            let first = k.split('.').next().unwrap_or_default();
            let parent_exists = match k.rsplit_once('.') {
                Some((parent, _)) => get_path(&raw.body, parent).is_some(),
                None => true,
            };
            fields.iter().any(|f| f == first) && parent_exists
        };
        if applies {
            used[g] = true;
            d.push(dim.clone());
        }
    }
    d.sort_by_key(|d| d.key == "seed");
    d
}

/// A global matrix key that no node takes is a mistake (a typo, or a node that was removed).
fn unused_global_keys(l: &mut Loader, raws: &[RawNode], global: &[Dim], used: &[bool]) {
    for (dim, _) in global.iter().zip(used).filter(|(_, u)| !**u) {
        let mut fields: Vec<&str> = vec!["seed"];
        for raw in raws {
            for f in kind_fields(&raw.kind) {
                if !fields.contains(&f.as_str()) {
                    fields.push(f);
                }
            }
        }
        let first = dim.key.split('.').next().unwrap_or_default();
        let help = if dim.key == "seed" {
            "`seed` expands nodes that train and do not fix `seed:`; there are none".to_string()
        } else {
            match did_you_mean(first, fields.iter().copied()) {
                Some(s) if s != first => format!("did you mean `{s}`?"),
                _ => "matrix keys are `seed` or dotted paths into node settings (docs/spec.md, \"Matrix\")"
                    .to_string(),
            }
        };
        let msg = format!("`{}` fits no node: no node has this setting", crate::diag::clip(&dim.key, 60));
        l.diags_push(Code::UnknownKey, &dim.at, msg).help = Some(help);
    }
}

/// Instances of a node with dimensions of these sizes (saturating: only compared to a bound).
fn instance_count(sizes: impl IntoIterator<Item = usize>) -> u64 {
    sizes.into_iter().fold(1u64, |a, n| a.saturating_mul(n as u64))
}

/// One error, at the matrix that makes the most instances, before anything is expanded.
fn too_many_instances(l: &mut Loader, raws: &[RawNode], own_d: &[Vec<Dim>], counts: &[u64], total: u64) {
    let (i, &most) = counts.iter().enumerate().max_by_key(|(_, c)| **c).expect("total > 0 means a node");
    // The node's own matrix if it has one, else the top-level one.
    let at = match own_d[i].iter().find(|d| d.at.starts_with("nodes.")) {
        Some(d) => {
            d.at.rsplit_once(".matrix.").map(|(n, _)| format!("{n}.matrix")).unwrap_or_else(|| d.at.clone())
        }
        None => "matrix".to_string(),
    };
    let loc = l.spans.key(&at);
    let count =
        |n: u64| if n == u64::MAX { "more than 18446744073709551615".to_string() } else { n.to_string() };
    let msg = if most > limits::MAX_NODE_INSTANCES {
        let over = counts.iter().filter(|&&c| c > limits::MAX_NODE_INSTANCES).count();
        let others = if over > 1 { format!(" (and {} more nodes)", over - 1) } else { String::new() };
        format!(
            "`{}` would expand into {} instances, more than the {} a node may have{others}",
            raws[i].base,
            count(most),
            limits::MAX_NODE_INSTANCES
        )
    } else {
        format!(
            "the nodes would expand into {} instances in all, more than the {} allowed (`{}`: {})",
            count(total),
            limits::MAX_INSTANCES,
            raws[i].base,
            count(most)
        )
    };
    let d = l.diags_push(Code::Matrix, &at, msg);
    d.node = Some(raws[i].base.clone());
    d.help =
        Some("use fewer matrix values (each key multiplies the instances of every node it fits)".to_string());
    d.location = loc;
    for raw in raws {
        l.invalid.insert(raw.base.clone());
    }
}

fn sort_seed_last(a: &mut Assignment) {
    a.sort_by_key(|(k, _)| k == "seed");
}

/// Every combination of one value index per dimension, the last dimension fastest.
fn cartesian(dims: &[Dim]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = vec![Vec::new()];
    for d in dims {
        let mut next = Vec::with_capacity(out.len() * d.values.len());
        for prefix in &out {
            for i in 0..d.values.len() {
                let mut a = prefix.clone();
                a.push(i);
                next.push(a);
            }
        }
        out = next;
    }
    out
}

pub(super) fn instance_name(base: &str, assignment: &Assignment) -> String {
    if assignment.is_empty() {
        return base.to_string();
    }
    let parts: Vec<String> = assignment.iter().map(|(k, v)| format!("{k}={}", render_value(v))).collect();
    format!("{base}[{}]", parts.join(","))
}

/// Kahn's algorithm; nodes left in cycles are appended in declaration order.
fn topo_order(deps: &[Vec<usize>]) -> Vec<usize> {
    let n = deps.len();
    let mut indegree: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, d) in deps.iter().enumerate() {
        for &j in d {
            users[j].push(i);
        }
    }
    let mut ready: std::collections::VecDeque<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    let mut done = vec![false; n];
    while let Some(i) = ready.pop_front() {
        order.push(i);
        done[i] = true;
        for &u in &users[i] {
            indegree[u] -= 1;
            if indegree[u] == 0 {
                ready.push_back(u);
            }
        }
    }
    order.extend((0..n).filter(|&i| !done[i]));
    order
}

fn get_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for seg in path.split('.') {
        cur = cur.as_mapping()?.get(seg)?;
    }
    Some(cur)
}

/// Sets a dotted path in a mapping, creating (or replacing non-mapping) parents as needed:
/// `losses.kd.temperature` turns `kd: 1` into `kd: { temperature: .. }` (weight defaults to 1).
fn set_path(v: &mut Value, path: &str, new: Value) {
    let mut cur = v;
    let segs: Vec<&str> = path.split('.').collect();
    for (i, seg) in segs.iter().enumerate() {
        if let Value::Number(_) = cur {
            // A loss given by its weight alone (`kd: 2`) keeps that weight.
            let mut m = Mapping::new();
            m.insert("weight".into(), cur.clone());
            *cur = Value::Mapping(m);
        } else if !cur.is_mapping() {
            *cur = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(m) = cur else { unreachable!("just made a mapping") };
        let key = Value::String(seg.to_string());
        if i + 1 == segs.len() {
            m.insert(key, new);
            return;
        }
        cur = m.entry(key).or_insert_with(|| Value::Mapping(Mapping::new()));
    }
}
